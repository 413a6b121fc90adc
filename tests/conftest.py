import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xkd_cli.core.threads import yield_when_waiting

# torch's OpenMP threads spin only briefly, then yield their core, as under the CLI: several test runs (or a test and
# the processes it starts) share a small machine. Before anything imports torch, which reads it once.
yield_when_waiting()

# Rich sizes tables from the terminal, and a test run may have none (or a narrow one): fix the width
# before xkd's consoles are made, so the tables the tests read are laid out the same everywhere.
os.environ.setdefault("COLUMNS", "160")

from openai_server import FakeOpenAI  # noqa: E402
from xkd_cli.cli.app import main  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "sk-test-DO-NOT-LEAK-4f9a1c"  # an API key that must never show up in any output or file

# Keep the suite quiet and deterministic on 2-core CI machines.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    monkeypatch.setenv("XKD_RUNS_DIR", str(root))
    return root


@pytest.fixture
def xkd(capsys):
    """Run the real CLI in-process: ``xkd("sft", "--task", ...)`` → Result(code, stdout, stderr)."""
    def run(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def run_xkd_process(*args, env=None):
    """The installed console script in a subprocess (exit codes and stderr exactly as a user sees them);
    ``env`` adds variables to this process's environment (``None`` removes one)."""
    full_env = {name: value for name, value in {**os.environ, **(env or {})}.items() if value is not None}
    return subprocess.run([sys.executable, "-m", "xkd_cli", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=300)


@pytest.fixture
def server():
    """A real OpenAI-compatible HTTP server on loopback (tests/openai_server.py)."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    return SECRET
