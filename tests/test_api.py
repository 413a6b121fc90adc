"""The OpenAI-compatible client against a real local HTTP server: retry policy, errors, key hygiene, concurrency."""

import email.utils
import socket
import threading
import time

import pytest

from openai_server import FakeOpenAI
from xkd_cli.core.workspace import public_url
from xkd_cli.evaluation.api import ChatClient, retry_after_seconds
from xkd_cli.core.errors import XKDError

from conftest import SECRET




class Sleeps(list):
    """A fake ``sleep`` that records the waits instead of waiting."""

    def __call__(self, seconds):
        self.append(seconds)


def client(server, sleeps=None, **kw):
    return ChatClient(server.url, "fake", sleep=sleeps if sleeps is not None else Sleeps(), **kw)


def test_complete_sends_prompt_settings_and_key(server, key):
    text = client(server).complete("summarize: a b c", temperature=1.0, top_p=0.95, max_tokens=16)
    assert text == "answer to: summarize: a b c"
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    body = request["json"]
    assert body["model"] == "fake" and body["messages"] == [{"role": "user", "content": "summarize: a b c"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1.0, 0.95, 16)


def test_chat_messages_and_unset_settings_are_not_sent(server, key):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert client(server).complete(messages) == "answer to: hi"
    body = server.requests[0]["json"]
    assert body["messages"] == messages and not {"temperature", "top_p", "max_tokens"} & set(body)


def test_retry_after_seconds_and_http_date_are_honoured(server, key):
    now = 1_700_000_000.0
    server.fail(429, retry_after="7")
    server.fail(503, retry_after=email.utils.formatdate(now + 30, usegmt=True))
    server.fail(429, headers={"retry-after-ms": "250"})
    sleeps = Sleeps()
    c = client(server, sleeps, clock=lambda: now)
    assert c.complete("x").startswith("answer to")
    assert sleeps == [7.0, 30.0, 0.25]
    assert server.statuses() == [429, 503, 429, 200] and (c.requests, c.retries) == (4, 3)


def test_backoff_is_exponential_jittered_and_capped(server, key):
    server.fail(500, times=4)
    sleeps = Sleeps()
    assert client(server, sleeps, backoff=1.0, max_backoff=3.0, rng=lambda: 1.0).complete("x")
    assert sleeps == [1.0, 2.0, 3.0, 3.0]
    server.fail(502, times=3)
    sleeps = Sleeps()
    assert client(server, sleeps, backoff=2.0, rng=lambda: 0.0).complete("x")
    assert sleeps == [1.0, 2.0, 4.0]  # jitter halves at most
    c = client(server)
    assert all(0.5 * 2 ** a <= c.delay(a) <= 2 ** a for a in range(5))


def test_gives_up_after_max_retries(server, key):
    server.fail(500, times=10)
    sleeps = Sleeps()
    with pytest.raises(XKDError, match="after 2 retries") as err:
        client(server, sleeps, max_retries=2).complete("x")
    assert server.count == 3 and len(sleeps) == 2
    assert "HTTP 500" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("status,words", [
    (400, ["HTTP 400", "scripted failure 400"]),
    (401, ["rejected the key in $OPENAI_API_KEY", "--api-key-env"]),
    (403, ["HTTP 403"]),
    (404, ["--api-model", "/v1"]),
    (422, ["HTTP 422"]),
])
def test_other_4xx_fail_at_once(server, key, status, words):
    server.fail(status)
    sleeps = Sleeps()
    with pytest.raises(XKDError) as err:
        client(server, sleeps).complete("x")
    assert server.count == 1 and sleeps == []
    message = str(err.value)
    assert all(w in message for w in words) and "\n" not in message and SECRET not in message


def test_server_messages_are_scrubbed_of_the_key(server, key):
    server.fail(400, body={"error": {"message": f"Incorrect API key provided: {SECRET}.", "type": "x"}})
    with pytest.raises(XKDError) as err:
        client(server).complete("x")
    assert SECRET not in str(err.value) and "***" in str(err.value)
    c = client(server)
    assert SECRET not in repr(c) and SECRET not in str(c.describe())


def test_timeouts_are_retried(server, key):
    server.slow(2.0)
    sleeps = Sleeps()
    started = time.monotonic()
    assert client(server, sleeps, timeout=0.3).complete("x") == "answer to: x"
    assert server.count == 2 and len(sleeps) == 1 and time.monotonic() - started < 1.8


def test_connection_errors_are_retried(key):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    with pytest.raises(XKDError, match="could not connect"):
        ChatClient(f"http://127.0.0.1:{port}/v1", "fake", max_retries=2, timeout=2, sleep=sleeps).complete("x")
    assert len(sleeps) == 2


def test_missing_key_and_model(monkeypatch, server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(XKDError, match=r"\$OPENAI_API_KEY"):
        ChatClient(server.url, "fake")
    monkeypatch.setenv("MY_KEY", "   ")
    with pytest.raises(XKDError, match=r"\$MY_KEY"):
        ChatClient(server.url, "fake", api_key_env="MY_KEY")
    monkeypatch.setenv("MY_KEY", SECRET)
    with pytest.raises(XKDError, match="--api-model"):
        ChatClient(server.url, "", api_key_env="MY_KEY")
    assert ChatClient(server.url, "fake", api_key_env="MY_KEY").complete("x")
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": " 5 "}) == 5.0
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after": email.utils.formatdate(1000, usegmt=True)}, now=2000) == 0.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None and retry_after_seconds(None) is None
    assert retry_after_seconds({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert public_url("https://user:pw@host:8000/v1?key=abc") == "https://host:8000/v1"


def test_map_bounds_concurrency_and_reports_in_the_calling_thread(key):
    with FakeOpenAI(delay=0.1) as server:
        c = client(server, concurrency=3)
        seen = []
        items = [f"p{i}" for i in range(12)]
        results = c.map(c.complete, items, on_result=lambda item, text: seen.append((item, text, threading.current_thread())))
    assert results == [f"answer to: {i}" for i in items]  # input order
    assert sorted(s[0] for s in seen) == sorted(items) and all(s[2] is threading.main_thread() for s in seen)
    assert server.max_in_flight == 3 and server.count == 12


def test_map_stops_at_the_first_error_and_keeps_finished_answers(key):
    with FakeOpenAI() as server:
        c = client(server, concurrency=2)
        started, saved = [], []

        def work(i):
            started.append(i)
            if i == 0:
                raise XKDError("boom")
            time.sleep(0.2)
            return i

        with pytest.raises(XKDError, match="boom"):
            c.map(work, range(20), on_result=lambda item, result: saved.append(item))
        assert c.complete("still usable") == "answer to: still usable"
    assert len(started) < 20  # items not yet started were dropped
    assert sorted(saved) == sorted(i for i in started if i != 0)  # answers in flight were still saved
