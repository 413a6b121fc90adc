"""Checkpoints and exact resume: runs killed for real (SIGKILL at a random step, SIGKILL while a checkpoint is
half written, SIGTERM, a full disk) and resumed end with bit-identical weights to an uninterrupted run.

Every run that gets killed is a process of its own. To keep the file fast, most are forked from a
multiprocessing forkserver that imported xkd once: each runs the CLI's ``main(argv)`` (what ``python -m
xkd_cli`` runs) and dies by a real signal, leaving on disk whatever it left. The SIGTERM case runs the console
entry point itself, for the exit code and the message exactly as a user sees them.

Kill steps are drawn at random: a failure message names the seed; ``XKD_RESUME_SEED=N`` replays it.
Mid-write kills use ``XKD_TEST_CHECKPOINT_DELAY`` (see xkd_cli/training/checkpoint/files.py): it sleeps after each file of a checkpoint
and between the directory's rename and its ``COMPLETE`` marker, so the test can kill the writer while the
temporary directory is being filled, or while the renamed directory still lacks ``COMPLETE``.
"""

import json
import multiprocessing
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xkd_cli.training.checkpoint.files import DELAY_ENV
from xkd_cli.training.checkpoint.resume import COMPLETE

CTX = multiprocessing.get_context("forkserver")
# The CLI imports lazily: preload what a training run imports, so each forked run starts at once.
CTX.set_forkserver_preload(["xkd_cli.cli.app", "xkd_cli.training.sft", "xkd_cli.training.distill", "transformers.models.t5.modeling_t5"])
THREADS = torch.get_num_threads()  # every run uses the same thread count: float sums depend on it
SEED = int(os.environ.get("XKD_RESUME_SEED") or random.randrange(10**6))
RNG = random.Random(SEED)

TASK = "synth-mt"
COMMON = ["--task", TASK, "--max-steps", "16", "--batch-size", "4", "--max-input-len", "32", "--max-output-len",
          "12", "--log-every", "1", "--device", "cpu", "--save-every", "3",
          "--train-fraction", "0.02"]  # 40 examples: the 64 drawn cross an epoch boundary
T5_PAIR = ["--teacher", "tiny-t5-base", "--student", "tiny-t5-small"]
COMMANDS = {  # each draws randomness every step: dropout, or the α coin and student sampling
    "sft": ["sft", "--model", "tiny-t5-small", "--dropout", "0.1"],
    "gkd": ["distill", "--method", "gkd", "--alpha", "0.5", *T5_PAIR],
    "gxkd": ["distill", "--method", "gxkd", "--alpha", "0.5", *T5_PAIR],
    # fp16 autocast with loss scaling: the scaler's state (scale, growth counter) must come back too
    "fp16": ["sft", "--model", "tiny-t5-small", "--dropout", "0.1", "--mixed-precision", "fp16"],
}


def argv(command, runs, name="run", *extra):
    return [*COMMANDS[command], *COMMON, "--runs-dir", str(runs), "--name", name, *extra]


# -- processes -----------------------------------------------------------------------------------------------


def _child(args, err_path, threads, env, fsize_limit):
    """A training process: the CLI's main() with stdout/stderr to a file, ending with its exit code."""
    os.environ.update(env)
    torch.set_num_threads(threads)
    if fsize_limit:  # writes past this size fail with EFBIG (an OSError) instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from xkd_cli.cli.app import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Job:
    count = 0

    def __init__(self, args, env=None, fsize_limit=None):
        Job.count += 1
        runs = Path(args[args.index("--runs-dir") + 1])
        self.run = runs / TASK / args[args.index("--name") + 1]
        self.output = runs.parent / f"job-{Job.count}.txt"
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.process = CTX.Process(target=_child, args=(args, str(self.output), THREADS, env or {}, fsize_limit))
        self.process.start()

    @property
    def pid(self):
        return self.process.pid

    def text(self):
        return self.output.read_text() if self.output.is_file() else ""

    def wait_until(self, condition, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.process.is_alive():
                pytest.fail(f"the run ended (exit {self.process.exitcode}) before {what}:\n{self.text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.005)

    def kill(self, signum=signal.SIGKILL):
        os.kill(self.pid, signum)
        self.process.join(120)
        return self.process.exitcode

    def finish(self, timeout=300):
        self.process.join(timeout)
        assert self.process.exitcode is not None, "the run did not finish in time"
        return self.process.exitcode, self.text()


# -- reading runs ------------------------------------------------------------------------------------------------


def logged_step(run):
    path = run / "train_log.jsonl"
    steps = [0]
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:  # a line being written
                pass
    return max(steps)


def complete_steps(run):
    base = run / "checkpoints"
    return sorted(int(p.name[5:]) for p in base.glob("step-*") if (p / COMPLETE).is_file()) if base.is_dir() else []


def checkpoint_entries(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def trained_weights(run):
    weights = dict(load_file(run / "model" / "model.safetensors"))
    if (run / "reward_head.safetensors").is_file():
        weights.update({f"reward_head.{k}": v for k, v in load_file(run / "reward_head.safetensors").items()})
    return weights


def assert_bit_identical(got, want, note):
    assert got.keys() == want.keys(), note
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[0]} {note}"


def record(run):
    return json.loads((run / "run.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs (same seed, same CPU threads); ``sft`` keeps its last 3 checkpoints."""
    root = tmp_path_factory.mktemp("reference") / "runs"
    cache = {}

    def weights(command):
        if command not in cache:
            code, text = Job(argv(command, root, command, "--keep-last", "3")).finish()
            assert code == 0, text
            cache[command] = trained_weights(root / TASK / command)
        return cache[command]

    weights.root = root
    return weights


# -- SIGKILL at a random step, then SIGKILL while a checkpoint is half written ------------------------------------


@pytest.mark.parametrize("command,phase", [("sft", "filling"), ("gkd", "unmarked"), ("gxkd", "filling"),
                                           ("fp16", "unmarked")])
def test_a_run_killed_twice_resumes_bit_identically(tmp_path, reference, command, phase):
    runs = tmp_path / "runs"
    args = argv(command, runs)
    run = runs / TASK / "run"
    kill_at = RNG.randint(4, 9)
    note = f"(XKD_RESUME_SEED={SEED}: {command}, SIGKILL at step >= {kill_at}, then while {phase})"

    job = Job(args)
    job.wait_until(lambda: logged_step(run) >= kill_at, f"step {kill_at}")
    assert job.kill() == -signal.SIGKILL
    killed_at = logged_step(run)
    saved = complete_steps(run)
    assert saved and killed_at - 6 < saved[-1] <= killed_at, (saved, killed_at, note)
    resumed_from = saved[-1]

    # The resumed process writes its first checkpoint slowly; kill it in the middle.
    job = Job(args, env={DELAY_ENV: "0.2"})
    tmp = run / "checkpoints" / f".tmp-step-{resumed_from + 3:08d}-{job.pid}"
    final = run / "checkpoints" / f"step-{resumed_from + 3:08d}"
    job.wait_until(tmp.exists, f"the checkpoint of step {resumed_from + 3} to start")
    if phase == "unmarked":
        job.wait_until(lambda: final.is_dir() and not tmp.exists(), "the checkpoint directory's rename")
        assert not (final / COMPLETE).exists(), "the marker was written too early for this kill point"
    assert job.kill() == -signal.SIGKILL
    assert complete_steps(run)[-1] == resumed_from, note  # the half-written one does not count
    assert tmp.exists() if phase == "filling" else not (final / COMPLETE).exists()

    code, text = Job([*args, "--resume"]).finish()
    assert code == 0, text
    assert f"resuming {TASK}/run from checkpoint step {resumed_from} of 16" in text.splitlines(), text
    info = record(run)
    assert info["status"] == "completed"
    assert [r["step"] for r in info["resumes"]] == [resumed_from, resumed_from], note
    assert_bit_identical(trained_weights(run), reference(command), note)
    # The reported loss averages the last 10 steps across the resume: the checkpoint carried the steps before it.
    assert (info["loss_mean"], info["loss_mean_steps"]) == \
        (record(reference.root / TASK / command)["loss_mean"], 10), note
    # Rotation kept the last two complete checkpoints and removed what the kills left behind.
    assert checkpoint_entries(run) == ["step-00000012", "step-00000015"]
    if command == "fp16":  # the loss scaler goes on from the checkpoint (its growth counter counts every step)
        final = "checkpoints/step-00000015/state.json"
        scaler = json.loads((run / final).read_text())["scaler"]
        assert scaler == json.loads((reference.root / TASK / command / final).read_text())["scaler"], note
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 17))
    if COMMANDS[command][0] == "distill":  # the step log's counters go on from the checkpoint, as uninterrupted
        uninterrupted = [json.loads(line) for line in
                         (reference.root / TASK / command / "train_log.jsonl").read_text().splitlines()]
        for key in ("teacher_forwards", "student_samples"):
            assert [line[key] for line in lines] == [line[key] for line in uninterrupted], (key, note)


def test_keep_last_rotates_after_each_complete_checkpoint(reference):
    reference("sft")
    assert checkpoint_entries(reference.root / TASK / "sft") == ["step-00000009", "step-00000012", "step-00000015"]


# -- SIGTERM: finish the step, checkpoint, stop ------------------------------------------------------------------


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """An sft run stopped by SIGTERM (checkpoints otherwise off), through ``python -m xkd_cli``."""
    runs = tmp_path_factory.mktemp("interrupted") / "runs"
    run = runs / TASK / "run"
    stop_at = RNG.randint(3, 8)
    log = runs.parent / "stderr.txt"
    with open(log, "w") as err:
        process = subprocess.Popen([sys.executable, "-m", "xkd_cli", *argv("sft", runs), "--save-every", "0"],
                                   stdout=subprocess.DEVNULL, stderr=err,
                                   env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
        deadline = time.monotonic() + 300
        while logged_step(run) < stop_at and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        code = process.wait(120)
    return {"run": run, "code": code, "stderr": log.read_text(), "note": f"(XKD_RESUME_SEED={SEED}: SIGTERM at "
                                                                          f"step >= {stop_at})"}


def copy_run(interrupted, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(interrupted["run"], runs / TASK / "run")
    return runs, runs / TASK / "run"


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_bit_identically(interrupted, reference, tmp_path):
    note = interrupted["note"]
    assert interrupted["code"] == 128 + signal.SIGTERM, interrupted["stderr"]
    last_line = interrupted["stderr"].strip().splitlines()[-1]
    assert last_line.startswith("SIGTERM: stopped after step ") and "--resume" in last_line
    assert "Traceback" not in interrupted["stderr"]
    runs, run = copy_run(interrupted, tmp_path)
    stopped = logged_step(run)
    assert complete_steps(run) == [stopped], note  # --save-every 0: only the signal's checkpoint
    assert f"step {stopped} of 16" in last_line
    assert record(run)["status"] == "interrupted"

    code, text = Job(argv("sft", runs)).finish()  # the same command again (its --save-every 3 may differ)
    assert code == 0, text
    assert f"resuming {TASK}/run from checkpoint step {stopped} of 16" in text.splitlines(), text
    assert record(run)["status"] == "completed" and record(run)["resumes"][0]["step"] == stopped
    assert_bit_identical(trained_weights(run), reference("sft"), note)
    assert complete_steps(run) == [12, 15]  # --save-every asked for checkpoints: the finished run keeps them
    assert f"checkpoints: {run / 'checkpoints'}" in text.splitlines()


def test_a_finished_run_deletes_its_checkpoints_unless_asked_to_keep_them(interrupted, reference, tmp_path, xkd):
    """The interrupted command run again (default checkpoint settings) resumes, says so, and deletes the signal's
    checkpoint once the model is saved, saying where the model is; re-running it then is refused as before.
    --keep-last N keeps them."""
    runs, run = copy_run(interrupted, tmp_path)
    stopped = logged_step(run)
    code, text = Job([*argv("sft", runs), "--save-every", "0"]).finish()  # exactly the interrupted command
    assert code == 0, text
    lines = text.splitlines()
    assert f"resuming {TASK}/run from checkpoint step {stopped} of 16" in lines, text
    assert not (run / "checkpoints").exists()
    assert any(line.startswith("deleted the checkpoints of the finished run (") and
               line.endswith(f"--keep-last N keeps them); the model is {run / 'model'}") for line in lines), text
    assert f"model: {run / 'model'}" in lines and not any(line.startswith("checkpoints:") for line in lines)
    assert_bit_identical(trained_weights(run), reference("sft"), interrupted["note"])

    result = xkd(*argv("sft", runs), "--save-every", "0")  # a finished run: refused as before, untouched
    assert result.code == 2 and "already exists" in result.err and "--overwrite" in result.err
    result = xkd(*argv("sft", runs), "--save-every", "0", "--resume")
    assert result.code == 2 and "has already finished: nothing to resume" in result.err

    runs, run = copy_run(interrupted, tmp_path / "kept")
    code, text = Job([*argv("sft", runs), "--save-every", "0", "--keep-last", "1"]).finish()
    assert code == 0, text
    assert complete_steps(run) == [stopped]  # asked for: kept
    assert not any(line.startswith("deleted the checkpoints") for line in text.splitlines())


def test_a_full_disk_keeps_the_previous_checkpoint(interrupted, reference, tmp_path):
    """Files may not grow past 1 MB (RLIMIT_FSIZE): the next checkpoint cannot be written."""
    runs, run = copy_run(interrupted, tmp_path)
    stopped = logged_step(run)
    code, text = Job([*argv("sft", runs), "--save-every", "2"], fsize_limit=1 << 20).finish()
    assert code == 2, text
    failing = stopped + 2 - stopped % 2
    assert text.strip().splitlines()[-1] == (
        f"error: could not write the checkpoint of step {failing} to {run / 'checkpoints'}: File too large; "
        f"checkpoint step {stopped} is intact. Free disk space, then run the same command again to resume.")
    assert checkpoint_entries(run) == [f"step-{stopped:08d}"] and complete_steps(run) == [stopped]
    assert record(run)["status"] == "failed"

    code, text = Job(argv("sft", runs)).finish()
    assert code == 0, text
    assert_bit_identical(trained_weights(run), reference("sft"), interrupted["note"])


def test_a_full_disk_at_the_final_save_is_one_line_and_leaves_no_half_model(tmp_path):
    """The trained model (4 MB) cannot be written past a 1 MB file limit: one line naming the fix, the run
    recorded as failed, no model directory or temporary copy left behind."""
    runs = tmp_path / "runs"
    code, text = Job([*argv("sft", runs), "--save-every", "0", "--max-steps", "2"], fsize_limit=1 << 20).finish()
    assert code == 2, text
    run = runs / TASK / "run"
    assert text.strip().splitlines()[-1] == (
        f"error: could not save the trained model in {run}: File too large. Free disk space, then run the same "
        "command with --overwrite (no checkpoint was kept; --save-every N keeps some).")
    assert record(run)["status"] == "failed"
    assert not (run / "model").exists() and not [p for p in run.iterdir() if ".tmp-" in p.name]


def test_half_written_and_damaged_checkpoints_are_ignored(interrupted, reference, tmp_path):
    runs, run = copy_run(interrupted, tmp_path)
    stopped = logged_step(run)
    good = run / "checkpoints" / f"step-{stopped:08d}"
    unmarked = good.with_name(f"step-{stopped + 1:08d}")  # renamed into place, COMPLETE never written
    shutil.copytree(good, unmarked)
    (unmarked / COMPLETE).unlink()
    truncated = good.with_name(f"step-{stopped + 2:08d}")  # marked, but a file is shorter than recorded
    shutil.copytree(good, truncated)
    with open(truncated / "optimizer.pt", "r+b") as fh:
        fh.truncate(100)
    shutil.copytree(good, good.with_name(f".tmp-step-{stopped + 3:08d}-1"))  # a writer killed while filling

    code, text = Job([*argv("sft", runs), "--save-every", "5"]).finish()
    assert code == 0, text
    assert record(run)["resumes"][0]["step"] == stopped
    assert_bit_identical(trained_weights(run), reference("sft"), interrupted["note"])
    assert all(name.startswith("step-") for name in checkpoint_entries(run))  # leftovers removed
    assert all(int(name[5:]) % 5 == 0 for name in checkpoint_entries(run))


def test_the_optimizer_file_is_never_unpickled(interrupted, tmp_path, xkd):
    """A checkpoint's optimizer.pt that would run code when unpickled is refused, and the code never runs."""
    runs, run = copy_run(interrupted, tmp_path)
    checkpoint = run / "checkpoints" / f"step-{logged_step(run):08d}"
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {witness}",)

    torch.save({"state": {}, "param_groups": Payload()}, checkpoint / "optimizer.pt")
    marker = json.loads((checkpoint / COMPLETE).read_text())
    marker["files"]["optimizer.pt"] = (checkpoint / "optimizer.pt").stat().st_size  # as if it were genuine
    (checkpoint / COMPLETE).write_text(json.dumps(marker))

    result = xkd(*argv("sft", runs))
    assert result.code == 2
    resuming, error = result.err.strip().splitlines()
    assert resuming == f"resuming {TASK}/run from checkpoint step {logged_step(run)} of 16"
    assert error.startswith(f"error: cannot load the optimizer state from {checkpoint / 'optimizer.pt'} "
                            "(UnpicklingError")
    assert not witness.exists()


# -- what may and may not be resumed -------------------------------------------------------------------------------


def test_a_changed_config_is_refused_naming_the_keys(interrupted, reference, tmp_path, xkd):
    runs, run = copy_run(interrupted, tmp_path)
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    result = xkd(*argv("sft", runs), "--lr", "0.002", "--seed", "7", "--max-input-len", "32")
    assert result.code == 2
    assert result.err.startswith("error: cannot resume run 'run': its checkpoint (step ")
    assert "other settings: lr (0.001 → 0.002), seed (42 → 7). " in result.err
    assert len(result.err.strip().splitlines()) == 1

    result = xkd(*argv("sft", runs), "--resume", "--overwrite")
    assert result.code == 2 and "--resume and --overwrite contradict" in result.err
    result = xkd(*argv("sft", runs, "other"), "--resume")
    assert result.code == 2 and "nothing to resume: there is no run 'other'" in result.err
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before  # untouched

    shutil.rmtree(run / "checkpoints")  # killed before its first checkpoint
    result = xkd(*argv("sft", runs))
    assert result.code == 2 and "did not finish and has no complete checkpoint to resume from" in result.err

    reference("sft")  # a finished run is refused as before (unless --overwrite)
    result = xkd(*argv("sft", reference.root, "sft"))
    assert result.code == 2 and "already exists" in result.err and "--overwrite" in result.err
    result = xkd(*argv("sft", reference.root, "sft"), "--resume")
    assert result.code == 2 and "has already finished: nothing to resume" in result.err


def test_pipeline_continues_an_unfinished_training_step(tmp_path, xkd):
    runs = tmp_path / "runs"
    teacher = "{model: tiny-t5-small, max_steps: 12, batch_size: 4, max_input_len: 32, max_output_len: 12, " \
              "save_every: 2"
    recipe = tmp_path / "pipe.yaml"
    recipe.write_text(f"tasks: [{TASK}]\nteacher: {teacher}}}\nstudent: {teacher}}}\nmethods: [skd]\n")
    job = Job(["sft", "--model", "tiny-t5-small", "--task", TASK, "--role", "teacher", "--name", "teacher",
               "--max-steps", "12", "--batch-size", "4", "--max-input-len", "32", "--max-output-len", "12",
               "--save-every", "2", "--log-every", "1", "--runs-dir", str(runs)])
    job.wait_until(lambda: complete_steps(job.run), "the first checkpoint")
    job.kill()

    result = xkd("pipeline", recipe, "--dry-run", "--json", "--runs-dir", runs)
    assert result.code == 0, result.err
    assert [(s["name"], s["state"]) for s in result.json()["steps"][:2]] == [("teacher", "resume"), ("student", "new")]
    # With another training setting the unfinished run cannot continue: it is redone, as before checkpoints.
    recipe.write_text(f"tasks: [{TASK}]\nteacher: {teacher}, lr: 0.01}}\nstudent: {teacher}}}\nmethods: [skd]\n")
    result = xkd("pipeline", recipe, "--dry-run", "--json", "--runs-dir", runs)
    assert result.json()["steps"][0]["state"] == "stale"
