"""``xkd reward-model``: the preference accuracy and its interval on hand-built rewards; each method end to end
through the real CLI on synth-sum-pref with a tiny model; the refusal of AVA's options with bt (before torch);
resume after an interruption; ``xkd reward`` on the trained reward model."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from xkd_cli.evaluation.preference import preference_accuracy, wilson_interval

TASK = "synth-sum-pref"
SMALL = ["--task", TASK, "--max-steps", "3", "--batch-size", "4", "--max-input-len", "64", "--max-output-len", "16",
         "--train-fraction", "0.02", "--eval-pairs", "24", "--device", "cpu"]
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules))); "
         "from xkd_cli.cli.app import main; main(sys.argv[1:])")


# -- the accuracy ----------------------------------------------------------------------------------------------


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71676, half 1.96/1.38416·√(0.016 + 0.009604) = 0.22657
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-4)
    assert high == pytest.approx(0.94332, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(5, 5)
    assert high == 1.0 and 0.5 < low < 0.6  # 5/(5 + 3.8415) = 0.5655


def test_preference_accuracy_hand_built():
    chosen = [1.0, 2.0, 0.5, 0.0, 3.0, -1.0]
    rejected = [0.0, 2.0, 1.0, -0.5, 1.0, -2.0]  # wins: yes, tie (a miss), no, yes, yes, yes → 4 of 6
    kinds = ["a", "a", "b", "b", "b", None]
    found = preference_accuracy(chosen, rejected, kinds)
    assert found["accuracy"] == pytest.approx(4 / 6)
    assert (found["correct"], found["pairs"]) == (4, 6)
    assert (found["low"], found["high"]) == pytest.approx(wilson_interval(4, 6))
    assert found["low"] < 4 / 6 < found["high"]
    assert found["per_kind"]["a"]["correct"] == 1 and found["per_kind"]["a"]["pairs"] == 2
    assert found["per_kind"]["b"]["correct"] == 2 and found["per_kind"]["b"]["pairs"] == 3
    assert list(found["per_kind"]) == ["a", "b"]  # the pair without a kind counts in the total only
    assert "per_kind" not in preference_accuracy(chosen, rejected)
    assert preference_accuracy([0.0] * 4, [0.0] * 4)["accuracy"] == 0.0  # a constant reward is no better than a miss
    with pytest.raises(ValueError):
        preference_accuracy([1.0], [])


# -- end to end --------------------------------------------------------------------------------------------------


def _check_accuracy(found, pairs):
    assert 0.0 <= found["low"] <= found["accuracy"] <= found["high"] <= 1.0
    assert found["pairs"] == pairs
    assert set(found["per_kind"]) == {"dropped-fact", "repeated-clause", "wrong-entity"}
    assert sum(v["pairs"] for v in found["per_kind"].values()) == pairs


@pytest.mark.parametrize("method, model", [("ava-p", "tiny-t5-small"), ("ava-d", "tiny-gpt-small"),
                                           ("bt", "tiny-gpt-small")])
def test_reward_model_end_to_end(xkd, runs, method, model):
    result = xkd("reward-model", "--model", model, "--method", method, *SMALL, "--json")
    assert result.code == 0, result.err
    found = result.json()
    run = runs / TASK / f"rm-{method}-{model}"
    assert found["path"] == str(run) and found["method"] == method
    assert (run / "model").is_dir() and (run / "reward_head.safetensors").is_file()
    _check_accuracy(found["final_eval"], 24)
    record = json.loads((run / "run.json").read_text())
    assert record["kind"] == "reward-model" and record["method"] == method and record["status"] == "completed"
    assert record["final_eval"]["accuracy"] == found["final_eval"]["accuracy"]
    config = json.loads((run / "config.json").read_text())
    assert ("lam" in config) == (method != "bt")  # bt reads none of AVA's options
    assert all(math.isfinite(json.loads(line).get("loss", 0.0)) for line in (run / "train_log.jsonl").open())

    table = xkd("reward-model", "--model", model, "--method", method, *SMALL, "--name", "again")
    assert table.code == 0, table.err
    assert "preference accuracy" in table.out and "95% interval" in table.out and "wrong-entity" in table.out


def test_xkd_reward_shows_a_reward_model(xkd, runs, tmp_path):
    assert xkd("reward-model", "--model", "tiny-t5-small", *SMALL, "--name", "rm").code == 0
    shown = xkd("reward", "rm", "--task", TASK, "--limit", "2", "--json")
    assert shown.code == 0, shown.err
    view = shown.json()
    assert view["scorer"]["method"] == "ava-p"
    assert len(view["examples"]) == 2 and all(len(e["tokens"]) > 0 for e in view["examples"])


@pytest.mark.parametrize("args, words", [
    (["--method", "bt", "--lam", "0.1"], "--lam 0.1 has no effect on bt"),
    (["--method", "bt", "--ava-beta", "2.5"], "--ava-beta 2.5 has no effect on bt"),
    (["--method", "bt", "--reward", "sum"], "--reward sum has no effect on bt"),
    (["--method", "ava-p", "--ava-beta", "-1"], "--ava-beta must be in [0, inf]"),
    (["--method", "ava-p", "--eval-every", "5"], "--eval-every 5 has no effect on reward-model"),
    (["--method", "dpo"], "--method must be one of ava-p, ava-d, bt"),
    (["--method", "ava-p", "--task", "synth-sum"], "task synth-sum has none"),
    (["--method", "bt", "--task", "synth-mt"], "task synth-mt has none"),
])
def test_refused_before_torch(tmp_path, args, words):
    proc = subprocess.run([sys.executable, "-c", PROBE, "reward-model", "--model", "tiny-t5-small", "--task", TASK,
                           *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XKD_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert "TORCH=False" in proc.stderr


def test_resume_continues_to_the_same_model(xkd, runs):
    steps = ["--max-steps", "6", "--save-every", "3", "--keep-last", "5"]
    args = ["reward-model", "--model", "tiny-t5-small", "--method", "ava-p", *SMALL, *steps]
    full = xkd(*args, "--name", "full", "--json")
    assert full.code == 0, full.err
    # An interrupted run: the same run as it stood at its step-3 checkpoint (what a kill after step 4 leaves).
    cut = runs / TASK / "cut"
    shutil.copytree(runs / TASK / "full", cut)
    for later in (cut / "checkpoints").glob("step-*"):
        if later.name != "step-00000003":
            shutil.rmtree(later)
    assert (cut / "checkpoints" / "step-00000003").is_dir()
    shutil.rmtree(cut / "model")
    (cut / "reward_head.safetensors").unlink()
    record = json.loads((cut / "run.json").read_text())
    record.update(status="interrupted", name="cut")
    (cut / "run.json").write_text(json.dumps(record))

    resumed = xkd(*args, "--name", "cut", "--resume", "--json")
    assert resumed.code == 0, resumed.err
    assert "resuming" in resumed.err and "step 3" in resumed.err
    a, b = load_file(runs / TASK / "full" / "reward_head.safetensors"), load_file(cut / "reward_head.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    assert resumed.json()["final_eval"]["accuracy"] == full.json()["final_eval"]["accuracy"]


def test_help(xkd):
    result = xkd("reward-model", "--help")
    assert result.code == 0
    for words in ("Examples", "--recipe", "--json", "--resume", "--ava-beta", "--method", "ava-p and ava-d only"):
        assert words in result.out, words


def test_ava_d_on_demonstrations(xkd, runs):
    demo = [a if a != TASK else "synth-sum" for a in SMALL if a not in ("--eval-pairs", "24")]
    result = xkd("reward-model", "--model", "tiny-t5-small", "--method", "ava-d", *demo, "--json")
    assert result.code == 0, result.err
    assert "no held-out preference pairs" in result.err
    assert result.json()["final_eval"] is None
    assert (runs / "synth-sum" / "rm-ava-d-tiny-t5-small" / "reward_head.safetensors").is_file()
