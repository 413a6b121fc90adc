"""An unreachable Hugging Face Hub or API endpoint fails in one line, without minutes of retries. Everything
stays on this machine: the "hub" and the "API" are closed or listening ports on 127.0.0.1."""

import os
import socket
import subprocess
import sys

import pytest

from xkd_cli.core import hub
from xkd_cli.core.errors import XKDError
from xkd_cli.evaluation.api import UNREACHED_RETRY_S, ChatClient


def _closed_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args, words", [
    (["eval", "--model", "no-such-org/no-such-model", "--task", "synth-sum"], "no-such-org/no-such-model"),
    (["eval", "--model", "tiny-t5-small", "--task", "xsum", "--limit", "2"], "pass --data PATH"),
])
def test_unreachable_hub_fails_in_one_line_without_retries(tmp_path, args, words):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}", HF_HOME=str(tmp_path / "hf"),
               XKD_RUNS_DIR=str(tmp_path / "runs"))
    proc = subprocess.run([sys.executable, "-m", "xkd_cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "cannot be reached" in lines[0] and words in lines[0], proc.stderr
    assert "Retrying" not in proc.stderr


def test_reachable_hub_keeps_online_mode(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        hub.hub_unreachable.cache_clear()
        try:
            assert hub.hub_unreachable() is None
            assert "HF_HUB_OFFLINE" not in os.environ
            monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
            hub.hub_unreachable.cache_clear()
            assert "cannot be reached" in hub.hub_unreachable()
            assert os.environ["HF_HUB_OFFLINE"] == "1"
        finally:
            hub.hub_unreachable.cache_clear()


def test_dead_api_url_gives_up_within_the_stated_bound(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    now = [0.0]  # the waits pass on this clock, so the test takes no real back-off time

    def sleep(seconds):
        now[0] += seconds

    client = ChatClient(f"http://127.0.0.1:{_closed_port()}/v1", "judge", max_retries=50, sleep=sleep,
                        clock=lambda: now[0], rng=lambda: 1.0)
    with pytest.raises(XKDError) as failed:
        client.complete("hello")
    message = str(failed.value)
    assert "could not connect" in message and "never answered" in message and f"{UNREACHED_RETRY_S:g} s" in message
    assert now[0] <= UNREACHED_RETRY_S and client.retries < 50
