"""torch's OpenMP threads spin briefly, then yield their core while they wait (``GOMP_SPINCOUNT=1000``), in
every process xkd starts torch in: the CLI's own, a pipeline's steps and the processes of a multi-process
launch; a user's own setting is kept. Speed is measured in ``bench/shared_cpu.py``, not here."""

import json
import os
import subprocess
import sys

import pytest

from xkd_cli.core.threads import SETTINGS, wait_settings, yield_when_waiting

from conftest import run_xkd_process

NOTHING_SET = {name: None for name in SETTINGS}  # the test run's own setting (conftest) is not passed on
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # what is checked is the setting, not the speed: light on a shared machine
TINY = ["--max-steps", "1", "--batch-size", "2", "--max-input-len", "32", "--max-output-len", "8"]
SFT = ["sft", "--model", "tiny-t5-small", "--task", "synth-mt", *TINY]
# The console script's entry point, with an audit hook that notes the setting when torch is first imported.
PROBE = ("import json, os, sys\n"
         "def hook(event, args):\n"
         "    if event == 'import' and args[0] == 'torch':  # raised once: the first import, before it loads\n"
         "        sys.stderr.write('AT_TORCH_IMPORT=' + json.dumps({n: os.environ.get(n) for n in %r}) + '\\n')\n"
         "sys.addaudithook(hook)\n"
         "from xkd_cli.__main__ import run\n"
         "run()\n") % (SETTINGS,)


@pytest.mark.parametrize("given,expected", [
    ({}, {"GOMP_SPINCOUNT": "1000"}),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),  # the user chose how threads wait
    ({"GOMP_SPINCOUNT": "300000"}, {"GOMP_SPINCOUNT": "300000"}),
    ({"KMP_BLOCKTIME": "0"}, {"KMP_BLOCKTIME": "0"}),
])
def test_a_users_own_setting_wins(given, expected):
    env = {"PATH": "/bin", **given}
    yield_when_waiting(env)
    assert wait_settings(env) == expected and env["PATH"] == "/bin"


def recorded(run_dir):
    return json.loads((run_dir / "run.json").read_text())["environment"]["openmp_wait"]


@pytest.mark.parametrize("given,expected", [
    ({}, {"GOMP_SPINCOUNT": "1000"}),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE"}),
    ({"GOMP_SPINCOUNT": "300000"}, {"GOMP_SPINCOUNT": "300000"}),
], ids=["unset", "user-policy", "user-spincount"])
def test_the_cli_sets_it_before_torch_is_imported(tmp_path, given, expected):
    env = {name: value for name, value in os.environ.items() if name not in SETTINGS}
    env.update({**ONE_THREAD, **given, "XKD_RUNS_DIR": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", PROBE, *SFT, "--name", "probe"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    at_import = next(line for line in done.stderr.splitlines() if line.startswith("AT_TORCH_IMPORT="))
    assert json.loads(at_import.split("=", 1)[1]) == {name: expected.get(name) for name in SETTINGS}
    assert recorded(tmp_path / "synth-mt" / "probe") == expected


def test_every_step_of_a_pipeline_runs_with_it(tmp_path):
    recipe = tmp_path / "pipe.yaml"
    shape = "max_steps: 1, batch_size: 2, max_input_len: 32, max_output_len: 8"
    recipe.write_text(f"tasks: [synth-mt]\nteacher: {{model: tiny-t5-small, {shape}}}\n"
                      f"student: {{model: tiny-t5-small, {shape}}}\nmethods: [skd]\ndistill: {{{shape}}}\n"
                      "eval: {limit: 2, max_new_tokens: 4}\n")
    done = run_xkd_process("pipeline", recipe, "--runs-dir", tmp_path / "runs", env={**NOTHING_SET, **ONE_THREAD})
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("teacher", "student", "skd"):
        assert recorded(tmp_path / "runs" / "synth-mt" / name) == {"GOMP_SPINCOUNT": "1000"}


def test_a_multi_process_launch_runs_with_it(tmp_path):
    """``--processes 2`` starts ``accelerate launch``, which starts the two training processes; the run record
    is written by the first of them, two processes below the one the test started."""
    done = run_xkd_process(*SFT, "--name", "two", "--runs-dir", tmp_path, "--processes", "2",
                           env={**NOTHING_SET, **ONE_THREAD})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "synth-mt" / "two" / "run.json").read_text())
    assert record["processes"] == 2 and record["environment"]["openmp_wait"] == {"GOMP_SPINCOUNT": "1000"}
