"""A small client for OpenAI-compatible chat endpoints (OpenAI, vLLM, llama.cpp, Ollama, ...).

Used for black-box teachers (``xkd gen-teacher --api-base``) and LLM judges. The retry policy is ours
(the openai client's own retries are switched off), so it is the same everywhere and testable:

- retried: HTTP 429, HTTP 5xx, timeouts and connection errors, at most ``max_retries`` times;
- the wait is the server's ``Retry-After`` (seconds or an HTTP date) when it sends one, otherwise
  exponential backoff ``backoff · 2^attempt`` capped at ``max_backoff``, with jitter (x0.5 to x1);
- retrying stops after ``MAX_RETRY_S`` in all, or ``UNREACHED_RETRY_S`` while no request has been answered
  yet (a wrong URL is not worth minutes of waiting); the error states the time spent;
- any other 4xx fails at once with a one-line :class:`XKDError` (a 401 names the key's variable).

The API key is read from an environment variable and never printed, logged or written: error
messages name the variable, and server messages are scrubbed of the key before they are shown.
"""

from __future__ import annotations

import email.utils
import os
import queue
import random
import threading
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from xkd_cli.config.checks import DEFAULT_KEY_ENV, OPENAI_BASE
from xkd_cli.core.errors import XKDError
from xkd_cli.core.ui import progress
from xkd_cli.core.workspace import public_url

MAX_RETRY_AFTER_S = 600.0  # a server asking for more than this is treated as asking for this
MAX_RETRY_S = 300.0  # one request stops retrying once its retries would wait past this (a busy server recovers)
UNREACHED_RETRY_S = 20.0  # ... or past this while the client never got an answer: a wrong URL or a server that is down

T = TypeVar("T")
R = TypeVar("R")


class Stopped(Exception):
    """Raised inside workers once :meth:`ChatClient.map` gave up (another item failed, or Ctrl-C)."""


def retryable_status(status: int) -> bool:
    return status == 429 or 500 <= status <= 599


def retry_after_seconds(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """The wait a server asked for: ``retry-after-ms`` (OpenAI), else ``Retry-After`` in seconds or as an
    HTTP date; ``None`` when absent or unreadable. Never negative."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class ChatClient:
    """Chat completions with our retry policy; :meth:`map` runs many calls on a bounded thread pool.

    ``backoff`` / ``max_backoff`` tune the waits no command exposes, and ``sleep``, ``clock`` and ``rng`` stand
    in for ``time.sleep``, the wall clock and the jitter's random numbers: kept on purpose, so the retry policy
    can be driven without waiting (the tests do)."""

    def __init__(self, base_url: str | None, model: str, *, api_key_env: str = DEFAULT_KEY_ENV,
                 timeout: float = 60.0, max_retries: int = 6, concurrency: int = 8, backoff: float = 1.0,
                 max_backoff: float = 60.0, sleep: Callable[[float], Any] | None = None,
                 clock: Callable[[], float] = time.time, rng: Callable[[], float] = random.random) -> None:
        import openai  # optional: only black-box teachers and judges talk to an API

        if not model:
            raise XKDError("no API model given: pass --api-model NAME (e.g. gpt-4o-mini, or the model a vLLM/Ollama server serves)")
        if timeout <= 0 or max_retries < 0 or concurrency < 1:
            raise XKDError(f"bad API settings (timeout {timeout}, max retries {max_retries}, concurrency {concurrency}): "
                           "timeout must be > 0, retries >= 0, concurrency >= 1")
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise XKDError(f"no API key: set ${api_key_env} (or name the variable that holds it with --api-key-env); "
                           "a local server that needs no key accepts any value")
        self.base_url = (base_url or OPENAI_BASE).rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout, self.max_retries, self.concurrency = float(timeout), int(max_retries), int(concurrency)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._clock, self._rng, self._sleep = clock, rng, sleep
        self._worker = threading.local()  # .stop: the Event of the map() this thread works for
        self._secret = key
        self._lock = threading.Lock()
        self.requests = 0  # HTTP attempts made
        self.retries = 0   # attempts that were retries
        self.answered = False  # whether any request got an HTTP answer: a server is there
        self._openai = openai
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout, max_retries=0)

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient({public_url(self.base_url)!r}, {self.model!r}, api_key_env={self.api_key_env!r})"

    def describe(self) -> dict[str, Any]:
        """What to record about the endpoint (no key, no credentials in the URL)."""
        return {"api_base": public_url(self.base_url), "api_model": self.model}

    # -- one call --
    def complete(self, prompt: str | Sequence[Mapping[str, str]], *, temperature: float | None = None,
                 top_p: float | None = None, max_tokens: int | None = None, **extra: Any) -> str:
        """The assistant's text for ``prompt`` (a user message) or a list of chat messages."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
        params = {k: v for k, v in dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, **extra).items()
                  if v is not None}
        stop: threading.Event | None = getattr(self._worker, "stop", None)
        attempt = 0
        started = self._clock()
        while True:
            if stop is not None and stop.is_set():
                raise Stopped()
            with self._lock:
                self.requests += 1
            try:
                response = self._client.chat.completions.create(model=self.model, messages=messages, **params)
            except self._openai.APIStatusError as exc:
                self.answered = True
                if not retryable_status(exc.status_code):
                    raise self._rejected(exc) from None
                failure, asked = f"HTTP {exc.status_code}", retry_after_seconds(exc.response.headers, self._clock())
            except self._openai.APITimeoutError:
                failure, asked = f"no answer within {self.timeout:g} s", None
            except self._openai.APIConnectionError:
                failure, asked = "could not connect", None
            except self._openai.APIError as exc:  # e.g. a 200 whose body is not a chat completion
                raise XKDError(f"the API at {public_url(self.base_url)} sent an unreadable answer ({self._clean(exc)}); "
                               "check that --api-base points at an OpenAI-compatible /v1 endpoint") from None
            else:
                self.answered = True
                return self._text(response)
            delay = self.delay(attempt, asked)
            spent = self._clock() - started
            budget = MAX_RETRY_S if self.answered else UNREACHED_RETRY_S
            if attempt >= self.max_retries or spent + delay > budget:
                limit = (f"{self.max_retries} retries" if attempt >= self.max_retries else
                         f"{budget:g} s of retries" + ("" if self.answered else " for a server that never answered"))
                raise XKDError(f"the API at {public_url(self.base_url)} still failed ({failure}) after {attempt} "
                               f"retries in {spent:.0f} s (the limit: {limit}); check the URL and the server, try "
                               "again later, lower --concurrency or raise --max-retries")
            attempt += 1
            with self._lock:
                self.retries += 1
            if self._sleep is not None:
                self._sleep(delay)
            elif stop is not None:
                stop.wait(delay)  # a failure elsewhere in map() wakes this retry at once
            else:
                time.sleep(delay)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt + 1``: the server's wish, else jittered backoff."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        return min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + 0.5 * self._rng())

    def _text(self, response: Any) -> str:
        choices = getattr(response, "choices", None)
        if not choices:
            raise XKDError(f"the API at {public_url(self.base_url)} returned no choices for model {self.model!r}; "
                           "check --api-base (an OpenAI-compatible /v1 endpoint) and --api-model")
        return choices[0].message.content or ""

    def _clean(self, exc: BaseException) -> str:
        """The server's message on one line, without the key, at most 200 characters."""
        body = getattr(exc, "body", None)
        message = None
        if isinstance(body, dict):
            inner = body.get("error") if isinstance(body.get("error"), dict) else body
            message = inner.get("message")
        text = " ".join(str(message or getattr(exc, "message", None) or exc).split())
        return text.replace(self._secret, "***")[:200]

    def _rejected(self, exc: Any) -> XKDError:
        status, where = exc.status_code, public_url(self.base_url)
        if status == 401:
            return XKDError(f"the API rejected the key in ${self.api_key_env} (HTTP 401); check the key, or name "
                            "the variable that holds the right one with --api-key-env")
        if status == 403:
            return XKDError(f"the API refused access with the key in ${self.api_key_env} (HTTP 403: {self._clean(exc)}); "
                            f"check that the key may use model {self.model!r}")
        if status == 404:
            return XKDError(f"the API at {where} has no model {self.model!r} or no chat endpoint (HTTP 404: "
                            f"{self._clean(exc)}); check --api-model and --api-base (it usually ends in /v1)")
        return XKDError(f"the API at {where} rejected the request (HTTP {status}: {self._clean(exc)}); "
                        "check --api-model and the decoding settings")

    # -- many calls --
    def map(self, fn: Callable[[T], R], items: Iterable[T], *, on_result: Callable[[T, R], None] | None = None,
            description: str | None = None) -> list[R]:
        """``fn(item)`` for every item on at most ``concurrency`` threads; results in input order.

        ``on_result(item, result)`` runs in the calling thread as each item finishes (completion order),
        so it can append to a file without locks. ``description`` shows a progress bar. The first
        failure stops the rest: items not started are dropped, those in flight are awaited and their
        results still go to ``on_result`` (an answer paid for is not lost), then the error is raised.
        Ctrl-C returns at once (the workers are daemon threads and write nothing themselves).
        """
        items = list(items)
        results: list[Any] = [None] * len(items)
        if not items:
            return results
        stop = threading.Event()
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(items)):
            todo.put(index)
        done: queue.SimpleQueue[tuple[int, BaseException | None, Any] | None] = queue.SimpleQueue()

        def worker() -> None:
            self._worker.stop = stop
            try:
                while not stop.is_set():
                    try:
                        index = todo.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        done.put((index, None, fn(items[index])))
                    except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                        stop.set()  # at once, so no worker takes a further item
                        done.put((index, exc, None))
            finally:
                done.put(None)  # this worker has finished

        workers = min(self.concurrency, len(items))
        for _ in range(workers):
            threading.Thread(target=worker, name="xkd-api", daemon=True).start()
        first_error: BaseException | None = None
        with (progress() if description else nullcontext()) as bar:
            bar_id = bar.add_task(description, total=len(items), info="") if bar is not None else None
            try:
                while workers:
                    try:
                        message = done.get(timeout=0.2)  # a timeout keeps Ctrl-C responsive
                    except queue.Empty:
                        continue
                    if message is None:
                        workers -= 1
                        continue
                    index, error, result = message
                    if error is not None:
                        if first_error is None and not isinstance(error, Stopped):
                            first_error = error
                        continue
                    results[index] = result
                    if on_result is not None:
                        on_result(items[index], result)
                    if bar is not None:
                        bar.update(bar_id, advance=1, info=f"{self.retries} retries" if self.retries else "")
            except BaseException:  # Ctrl-C, or on_result itself failed: write nothing more
                stop.set()
                raise
        if first_error is not None:
            raise first_error
        return results
