"""The benchmark scripts (bench/) in quick mode, and the opt-in phase timers they read (xkd_cli.core.timing)."""

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xkd_cli.config.training import DistillConfig
from xkd_cli.training.distill import run_distill
from xkd_cli.core.timing import PHASES, PhaseTimer

ROOT = Path(__file__).resolve().parent.parent
HAVE_TRL = importlib.util.find_spec("trl") is not None


def run_script(*args, timeout=600):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_phase_timer_counts_every_second_once():
    timer = PhaseTimer()
    with timer("outer"):  # off: nothing is recorded
        time.sleep(0.01)
    assert timer.take() == {}

    timer.enable()
    began = time.perf_counter()
    with timer("outer"):
        time.sleep(0.02)
        timer.start("inner")
        time.sleep(0.03)
        timer.stop("inner")
    elapsed = time.perf_counter() - began
    taken = timer.take()
    assert set(taken) == {"outer", "inner"}
    assert taken["inner"] >= 0.03 and taken["outer"] >= 0.02
    assert taken["outer"] + taken["inner"] == pytest.approx(elapsed, abs=2e-3)  # inner is not counted twice
    assert timer.take() == {}  # take starts again
    with pytest.raises(RuntimeError, match="'a' stopped while 'b' is open"):
        timer.start("b")
        timer.stop("a")


def distill_log(tmp_path, name, **overrides):
    cfg = DistillConfig(task="synth-sum", name=name, method="gxkd", teacher="tiny-gpt-large", student="tiny-gpt-small",
                        alpha=1.0, max_steps=2, batch_size=2, max_input_len=32, max_output_len=6, train_fraction=0.01,
                        log_every=1, device="cpu", top_p=1.0, **overrides)
    result = run_distill(cfg, runs_root=tmp_path)
    return [json.loads(line) for line in (Path(result["path"]) / "train_log.jsonl").read_text().splitlines()]


def test_phase_seconds_only_when_enabled(tmp_path):
    assert not PHASES.enabled
    assert all("phase_seconds" not in line for line in distill_log(tmp_path, "plain"))
    PHASES.enable()
    try:
        lines = distill_log(tmp_path, "timed")
    finally:
        PHASES.enable(False)
    previous = 0.0
    for line in lines:
        phases = line["phase_seconds"]
        # α = 1: every step samples; gxkd: the experiential term; the student's logits are watched.
        assert set(phases) == {"collate", "generate", "student_forward", "teacher_forward", "loss", "experiential",
                               "loss_backward", "student_backward", "optimizer"}
        assert all(value >= 0 for value in phases.values())
        assert sum(phases.values()) <= line["elapsed_s"] - previous + 1e-3  # phases never overlap
        previous = line["elapsed_s"]


def check_report(out: Path) -> dict:
    report = json.loads((out / "gkd_vs_trl.json").read_text())
    table = (out / "gkd_vs_trl.md").read_text()
    for name, by in report["results"].items():
        for framework, result in by.items():
            assert f"| {name} | {framework} |" in table
            assert result["tokens_per_s"] > 0 and result["rss_peak_mb"] > result["rss_training_mb"] > 0
            assert {"teacher_forward", "student_forward", "loss", "loss_backward", "student_backward",
                    "other"} <= set(result["phase_s"])
            assert sum(result["phase_s"].values()) == pytest.approx(result["step_s"], rel=1e-6)
    return report


def test_gkd_vs_trl_quick(tmp_path):
    """The xkd side always; TRL's too where the bench extra is installed (it is not a test dependency)."""
    out = tmp_path / "results"
    frameworks = "xkd,trl" if HAVE_TRL else "xkd"
    proc = run_script("bench/gkd_vs_trl.py", "--quick", "--frameworks", frameworks, "--configs",
                      "gpt-gkd-a0.5,gpt-gxkd-a0.5", "--out", out)
    report = check_report(out)
    assert set(report["results"]) == {"gpt-gkd-a0.5", "gpt-gxkd-a0.5"}
    assert set(report["results"]["gpt-gxkd-a0.5"]) == {"xkd"}  # TRL has no experiential term
    assert report["settings"]["steps"] == 3 and report["repeats"] == 1
    assert "gpt-gxkd-a0.5" in report["comparisons"]["gxkd_vs_gkd"]
    # The on-policy coin is xkd's AlphaMix draw, replayed: random.Random(0) gives 0.844, 0.758, 0.421.
    for name in report["results"]:
        steps = report["runs"][name]["xkd"][0]["steps"]
        assert [s["on_policy"] for s in steps] == [False, False, True]
        assert "generate" in steps[2]["phases"] and "generate" not in steps[0]["phases"]
    assert "wrote" in proc.stdout
    if not HAVE_TRL:
        assert report["comparisons"]["xkd_vs_trl"] == {}
        return
    assert set(report["results"]["gpt-gkd-a0.5"]) == {"xkd", "trl"}
    same = report["comparisons"]["xkd_vs_trl"]["gpt-gkd-a0.5"]
    assert same["same_on_policy_steps"] and same["same_off_policy_tokens"]
    # Steps 1-2 are off-policy: same weights and batch on both sides, so the same loss up to rounding.
    assert same["loss_steps_compared"] == 2 and same["loss_max_rel_diff"] < 1e-4


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable VmHWM")
def test_loss_memory_quick(tmp_path):
    # Small chunks (256 KiB per intermediate) make the chunk work negligible next to one B x T x V tensor
    # (64 MiB here), so what is left is what the loss materialises at full size: the gradient, once.
    run_script("bench/loss_memory.py", "--quick", "--impls", "xkd-gkd,naive-gkd", "--chunk-elements", 65536,
               "--out", tmp_path)
    report = json.loads((tmp_path / "loss_memory.json").read_text())
    by = {r["impl"]: r for r in report["results"]}
    assert set(by) == {"xkd-gkd", "naive-gkd"}
    for r in by.values():
        assert r["method"] == "VmHWM after clear_refs" and r["tensor_mb"] == 64
    assert 0.95 < by["xkd-gkd"]["extra_tensors"] < 1.4  # before: 2.0 (a full-size zero gradient per chunk)
    # The full-tensor loss holds log-softmaxes, the stacked mixture and the KL terms at full size at once.
    assert by["naive-gkd"]["extra_tensors"] > 8
    assert "| 32768 | xkd-gkd |" in (tmp_path / "loss_memory.md").read_text()


def test_shared_cpu_quick(tmp_path):
    """Every measurement is made and reported; the speeds themselves are the benchmark's, not asserted here."""
    proc = run_script("bench/shared_cpu.py", "--quick", "--workloads", "tiny-sft", "--out", tmp_path)
    report = json.loads((tmp_path / "shared_cpu.json").read_text())
    work = report["workloads"]["tiny-sft"]
    assert [(r["setting"], r["kind"]) for r in work["runs"]] == [("default", "alone"), ("default", "pair"),
                                                                   ("xkd", "alone"), ("xkd", "pair")]
    for row in work["runs"]:
        assert len(row["train_s"]) == len(row["job_wall_s"]) == len(row["waits"]) == row["jobs"]
        # how each job's threads waited, from its run record: the default is untouched; xkd chose one of two
        assert set(row["waits"]) <= ({"default"} if row["setting"] == "default" else {"default", "spin-1000"})
        assert max(row["job_wall_s"]) == pytest.approx(row["wall_s"], abs=0.05) and row["cpu_s_per_job"] > 0
        assert row["other_cores"] >= 0 and row["load_start"] >= 0
    assert {"cost_alone", "cost_alone_train", "gain_shared", "cost_alone_idle"} <= set(work["summary"]["xkd"])
    assert "cost_alone" not in work["summary"]["default"]
    table = (tmp_path / "shared_cpu.md").read_text()
    assert "| default |" in table and "| xkd |" in table and "wrote" in proc.stdout


def test_fused_head_quick(tmp_path):
    """bench/fused_head.py runs (speed part, one tiny process: off and on steps alternating on the same models)."""
    run_script("bench/fused_head.py", "--parts", "speed", "--speed-pairs", "tiny", "--speed-batch", "tiny:2x8",
               "--time-steps", 1, "--repeats", 1, "--out", tmp_path)
    report = json.loads((tmp_path / "fused_head.json").read_text())
    (run,) = report["speed"]["tiny"]
    assert run["vocab"] == 2048 and set(run["tokens_per_s"]) == {"off", "on"}
    assert all(v > 0 for v in run["tokens_per_s"].values())
    assert "| tiny | 2048 | 2 x 8 |" in (tmp_path / "fused_head.md").read_text()
