"""How torch's OpenMP threads wait: the runtime's default while the CPU is otherwise idle, a short spin
(``GOMP_SPINCOUNT=1000``) when other processes keep a core busy, chosen in every process xkd starts torch in
(the CLI's own and a pipeline's steps) just before torch loads; the processes of a multi-process launch and
the test suite always spin briefly; a user's own setting is kept. Speed is measured in
``bench/shared_cpu.py``, not here."""

import json
import os
import subprocess
import sys

import pytest

from xkd_cli.core import threads
from xkd_cli.core.threads import SETTINGS, CpuSample, choose, wait_settings, yield_when_waiting

from conftest import run_xkd_process

NOTHING_SET = {name: None for name in SETTINGS}  # the test run's own setting (conftest) is not passed on
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # what is checked is the setting, not the speed: light on a shared machine
TINY = ["--max-steps", "1", "--batch-size", "2", "--max-input-len", "32", "--max-output-len", "8"]
SFT = ["sft", "--model", "tiny-t5-small", "--task", "synth-mt", *TINY]
SHORT = {"GOMP_SPINCOUNT": "1000"}
# The console script's entry point, with an audit hook that notes the setting when torch's C extension, which
# loads OpenMP, is first imported (xkd chooses when ``torch`` itself is imported, just before).
PROBE = ("import json, os, sys\n"
         "def hook(event, args):\n"
         "    if event == 'import' and args[0] == 'torch._C':  # raised once: the first import, before it loads\n"
         "        sys.stderr.write('AT_TORCH_IMPORT=' + json.dumps({n: os.environ.get(n) for n in %r}) + '\\n')\n"
         "sys.addaudithook(hook)\n"
         "from xkd_cli.__main__ import run\n"
         "run()\n") % (SETTINGS,)
STAT = """cpu  900 0 300 5000 100 0 0 0 0 0
cpu0 400 0 100 2500 50 0 0 0 0 0
cpu1 500 0 200 2500 50 10 5 20 0 0
intr 12345
ctxt 678
"""


@pytest.mark.parametrize("given,expected", [
    ({}, SHORT),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),  # the user chose how threads wait
    ({"GOMP_SPINCOUNT": "300000"}, {"GOMP_SPINCOUNT": "300000"}),
    ({"KMP_BLOCKTIME": "0"}, {"KMP_BLOCKTIME": "0"}),
])
def test_a_users_own_setting_wins(given, expected):
    env = {"PATH": "/bin", **given}
    yield_when_waiting(env)
    assert wait_settings(env) == expected and env["PATH"] == "/bin"


@pytest.mark.parametrize("elsewhere,given,expected", [
    (0.0, {}, {}),  # idle: the runtime's default spin
    (0.49, {}, {}),
    (0.5, {}, SHORT),  # half a core busy elsewhere: yield
    (1.7, {}, SHORT),
    (None, {}, SHORT),  # not measured (no /proc/stat): what xkd did before it looked
    (1.7, {"GOMP_SPINCOUNT": "300000"}, {"GOMP_SPINCOUNT": "300000"}),  # the user's own, kept
    (0.0, {"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
])
def test_the_choice_follows_the_cores_busy_elsewhere(elsewhere, given, expected):
    env = {"PATH": "/bin", **given}
    choose(elsewhere, env)
    assert wait_settings(env) == expected


def test_busy_time_counts_only_this_processes_cores_and_not_idle_or_iowait(monkeypatch):
    monkeypatch.setattr(threads, "TICK", 100)
    assert threads.busy_seconds(STAT, {0}) == pytest.approx(5.00)  # user 400 + system 100 ticks
    assert threads.busy_seconds(STAT, {1}) == pytest.approx(7.35)  # + irq 10, softirq 5, steal 20
    assert threads.busy_seconds(STAT, {0, 1}) == pytest.approx(12.35)  # the "cpu" total line is not counted again
    assert threads.busy_seconds(STAT, {5}) == 0.0


def test_cores_busy_elsewhere_is_the_machines_busy_time_less_this_processes_own():
    before = CpuSample(at=10.0, busy=100.0, own=2.0)
    # 0.5 s of wall: 1.2 busy core-seconds, 0.45 of them this process's own -> others kept 1.5 cores busy
    assert threads.cores_busy_elsewhere(before, CpuSample(10.5, 101.2, 2.45)) == pytest.approx(1.5)
    assert threads.cores_busy_elsewhere(before, CpuSample(10.5, 100.3, 2.45)) == 0.0  # never below 0 (tick rounding)
    assert threads.cores_busy_elsewhere(before, before) == 0.0


def test_a_sample_reads_this_machine():
    first = threads.sample()
    if first is None:
        pytest.skip("no /proc/stat here")
    sum(i * i for i in range(300_000))  # some CPU time of this process's own
    second = threads.sample()
    assert second.at > first.at and second.busy >= first.busy and second.own > first.own


@pytest.fixture
def busy_core():
    """Another process keeping one core busy for as long as the test runs."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    burner.kill()
    burner.wait()


def recorded(run_dir):
    """How the run's threads waited, and the cores busy elsewhere it chose from (None: not measured)."""
    environment = json.loads((run_dir / "run.json").read_text())["environment"]
    return environment["openmp_wait"], environment["cores_busy_elsewhere"]


def probe(tmp_path, given):
    """``xkd sft`` through the console script's entry point: the settings at torch's first import, and the record."""
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    env.update({**ONE_THREAD, **given, "XKD_RUNS_DIR": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", PROBE, *SFT, "--name", "probe"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    at_import = next(line for line in done.stderr.splitlines() if line.startswith("AT_TORCH_IMPORT="))
    seen = {name: value for name, value in json.loads(at_import.split("=", 1)[1]).items() if value is not None}
    return seen, recorded(tmp_path / "synth-mt" / "probe")


def test_the_cli_yields_before_torch_is_imported_when_a_core_is_busy(tmp_path, busy_core):
    seen, (record, elsewhere) = probe(tmp_path, {})
    assert seen == record == SHORT and elsewhere >= threads.SHARED_AT


def test_the_cli_chooses_from_what_it_measured(tmp_path):
    """Whatever else runs beside this test: the choice in place at torch's import is the recorded one, and
    follows the recorded measurement."""
    seen, (record, elsewhere) = probe(tmp_path, {})
    assert seen == record and elsewhere is not None
    assert record == (SHORT if elsewhere >= threads.SHARED_AT else {})


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "300000"}],
                         ids=["user-policy", "user-spincount"])
def test_the_cli_keeps_a_users_own_setting_even_when_a_core_is_busy(tmp_path, busy_core, given):
    seen, (record, elsewhere) = probe(tmp_path, given)
    assert seen == record == given and elsewhere is None  # nothing measured: nothing to choose


def test_every_step_of_a_pipeline_runs_with_the_choice(tmp_path, busy_core):
    recipe = tmp_path / "pipe.yaml"
    shape = "max_steps: 1, batch_size: 2, max_input_len: 32, max_output_len: 8"
    recipe.write_text(f"tasks: [synth-mt]\nteacher: {{model: tiny-t5-small, {shape}}}\n"
                      f"student: {{model: tiny-t5-small, {shape}}}\nmethods: [skd]\ndistill: {{{shape}}}\n"
                      "eval: {limit: 2, max_new_tokens: 4}\n")
    done = run_xkd_process("pipeline", recipe, "--runs-dir", tmp_path / "runs", env={**NOTHING_SET, **ONE_THREAD})
    assert done.returncode == 0, done.stderr[-2000:]
    records = [recorded(tmp_path / "runs" / "synth-mt" / name) for name in ("teacher", "student", "skd")]
    assert all(record == SHORT and elsewhere >= threads.SHARED_AT for record, elsewhere in records)
    assert len(set(elsewhere for _, elsewhere in records)) == 1  # one process, one choice, before its first step


def test_a_multi_process_launch_always_yields(tmp_path):
    """``--processes 2`` starts ``accelerate launch``, which starts the two training processes, which share the
    CPU by construction; the run record is written by the first of them, two processes below this test's."""
    done = run_xkd_process(*SFT, "--name", "two", "--runs-dir", tmp_path, "--processes", "2",
                           env={**NOTHING_SET, **ONE_THREAD})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "synth-mt" / "two" / "run.json").read_text())
    assert record["processes"] == 2 and record["environment"]["openmp_wait"] == SHORT
