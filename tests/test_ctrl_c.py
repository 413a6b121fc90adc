"""Ctrl-C at any moment: one line that says what was kept and how to go on (never "error:" or a traceback),
exit code 130, and a prompt stop. Real processes get a real SIGINT: while starting, while evaluating, while
training."""

import json
import os
import signal
import subprocess
import sys
import time


def _start(tmp_path, *args):
    env = {**os.environ, "XKD_RUNS_DIR": str(tmp_path / "runs")}
    return subprocess.Popen([sys.executable, "-m", "xkd_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env,
                            # a shell's background job ignores SIGINT, and the child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc, path, timeout=240):
    deadline = time.time() + timeout
    while not (path.is_file() and path.stat().st_size) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert path.is_file(), proc.communicate()[1]


def _interrupt(proc, limit=120):
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    out, err = proc.communicate(timeout=limit)
    lines = [line for line in err.splitlines() if line.strip() and "━" not in line]
    return proc.returncode, lines[-1] if lines else "", time.time() - sent, err


def _has_mapped(pid: int, library: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return any(library in line for line in fh)
    except OSError:
        return False


def test_while_starting(tmp_path):
    proc = _start(tmp_path, "eval", "--model", "tiny-t5-small", "--task", "synth-sum")
    # While the CLI is loading torch for the model: by then xkd's code runs. Earlier, in the interpreter's own
    # start-up (site-packages' .pth files, runpy), SIGINT ends Python before any of xkd's code exists, as it
    # ends any program; how long that lasts depends on the machine's load, so a fixed delay cannot tell.
    deadline = time.time() + 60
    while not _has_mapped(proc.pid, "libtorch") and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1]
    code, last, _, err = _interrupt(proc)
    assert code == 130
    assert last.startswith("Ctrl-C: stopped") and "Traceback" not in err and "error:" not in err, err


def test_while_evaluating(tmp_path):
    proc = _start(tmp_path, "eval", "--model", "tiny-t5-small", "--task", "synth-sum", "--num-samples", "8",
                  "--temperature", "1.0")
    run = tmp_path / "runs" / "synth-sum" / "eval-tiny-t5-small"
    _wait_for(proc, run / "run.json")
    code, last, seconds, err = _interrupt(proc)
    assert code == 130 and "error:" not in err, err
    assert last.startswith("Ctrl-C: stopped") and str(run) in last and "--overwrite" in last, err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_while_training(tmp_path):
    proc = _start(tmp_path, "sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--max-steps", "5000",
                  "--log-every", "1", "--eval-every", "0")
    _wait_for(proc, tmp_path / "runs" / "synth-sum" / "sft-tiny-t5-small" / "train_log.jsonl")
    code, last, seconds, err = _interrupt(proc)
    assert code == 130 and "error:" not in err, err
    assert last.startswith("Ctrl-C: stopped after step") and "kept checkpoint" in last and "--resume" in last, err


def test_while_evaluating_during_training(tmp_path):
    """Ctrl-C in an in-training evaluation: the evaluation is given up after its current batch (here a batch
    of 16 of the 2000 examples, each up to 200 tokens), the step's checkpoint written, and the run stops."""
    proc = _start(tmp_path, "sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--max-steps", "50",
                  "--log-every", "1", "--eval-every", "2", "--eval-limit", "2000", "--batch-size", "16",
                  "--max-output-len", "200")
    log = tmp_path / "runs" / "synth-sum" / "sft-tiny-t5-small" / "train_log.jsonl"
    _wait_for(proc, log)  # step 1 is logged: the evaluation after step 2 follows at once
    time.sleep(1.0)
    code, last, seconds, err = _interrupt(proc)
    assert code == 130 and "error:" not in err, err
    assert last.startswith("Ctrl-C: stopped after step 2 of 50") and "kept checkpoint" in last, err
    assert not any("eval" in json.loads(line) for line in log.read_text().splitlines())
