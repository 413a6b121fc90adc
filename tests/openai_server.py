"""A real, tiny OpenAI-compatible HTTP server for tests (chat completions only).

It listens on 127.0.0.1 on an ephemeral port in a background thread and can be scripted:

    with FakeOpenAI(responder=lambda req: "hello") as server:
        server.fail(429, retry_after="0")      # the next request gets a 429 with Retry-After: 0
        server.fail(500)                        # the one after gets a 500
        server.slow(2.0)                        # the one after that answers only after 2 s (client timeouts)
        ... ChatClient(server.url, "fake") ...
        server.count, server.requests, server.max_in_flight

Scripted events are consumed by requests in arrival order; requests with no event left get a normal
answer from ``responder(request_json) -> str`` (after ``delay`` seconds, so concurrency can be seen).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Event:
    status: int = 200                     # 200 = answer normally (after ``delay``)
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    delay: float = 0.0


def default_responder(request: dict[str, Any]) -> str:
    """A deterministic answer that shows which prompt it belongs to."""
    messages = request.get("messages") or [{}]
    return f"answer to: {str(messages[-1].get('content', ''))[:60]}"


def _error_body(status: int) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}
    return {"error": {"message": f"scripted failure {status}", "type": kinds.get(status, "server_error"),
                      "param": None, "code": kinds.get(status)}}


class FakeOpenAI:
    def __init__(self, responder: Callable[[dict[str, Any]], str] = default_responder, *, delay: float = 0.0):
        self.responder = responder
        self.delay = delay
        self.requests: list[dict[str, Any]] = []   # {"path", "headers" (lower-case), "json", "status"}, arrival order
        self.in_flight = 0
        self.max_in_flight = 0
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting --
    def fail(self, status: int, *, retry_after: str | None = None, times: int = 1,
             headers: dict[str, str] | None = None, body: dict[str, Any] | None = None) -> None:
        """The next ``times`` requests get HTTP ``status`` (optionally with a Retry-After header)."""
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = retry_after
        for _ in range(times):
            self._events.append(Event(status, extra, body or _error_body(status)))

    def slow(self, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` requests are answered normally, but only after ``seconds``."""
        for _ in range(times):
            self._events.append(Event(200, delay=seconds))

    # -- inspection --
    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @property
    def count(self) -> int:
        return len(self.requests)

    def statuses(self) -> list[int]:
        return [r["status"] for r in self.requests]

    # -- lifecycle --
    def start(self) -> "FakeOpenAI":
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fake-openai",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling (called from the server's threads) --
    def _handle(self, path: str, headers: dict[str, str], payload: dict[str, Any]) -> tuple[int, dict[str, str], dict]:
        with self._lock:
            event = self._events.popleft() if self._events else Event(delay=self.delay)
            self.requests.append({"path": path, "headers": headers, "json": payload, "status": event.status})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if event.delay:
                time.sleep(event.delay)
            if event.status != 200:
                return event.status, event.headers, event.body or {}
            if not path.rstrip("/").endswith("/chat/completions"):
                return 404, {}, _error_body(404)
            text = self.responder(payload)
            return 200, event.headers, {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": payload.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        finally:
            with self._lock:
                self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            payload = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            payload = {"_raw": raw.decode("utf-8", "replace")}
        status, headers, body = self.fake._handle(self.path, {k.lower(): v for k, v in self.headers.items()}, payload)
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args) -> None:  # keep test output clean
        pass
