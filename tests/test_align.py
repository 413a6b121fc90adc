"""``xkd align``: DPO's reference log-probabilities (each pair's own, whatever batch it is in), the DPO objective on a
hand-set reference, learning in the right direction, each method end to end through the real CLI, `eval` of the
aligned run, resume (the reference is the initial policy's again) and the refusals (before torch)."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from xkd_cli.data.taskfile import get_task
from xkd_cli.models.loading import load_model
from xkd_cli.objectives.ava import DPOParams, sequence_logprob
from xkd_cli.objectives.dpo import DPOObjective, reference_logprobs
from xkd_cli.models.forward import forward
from xkd_cli.training.sources import EncodedPairSet

TASK = "synth-sum-pref"
SMALL = ["--task", TASK, "--max-steps", "3", "--batch-size", "4", "--max-input-len", "64", "--max-output-len", "16",
         "--train-fraction", "0.02", "--device", "cpu"]
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules))); "
         "from xkd_cli.cli.app import main; main(sys.argv[1:])")


@pytest.fixture(scope="module", params=["tiny-t5-small", "tiny-gpt-small"])
def pair_set(request):
    """Six synth-sum-pref pairs on a tiny model (T5, and a decoder-only one whose prompts are left-padded)."""
    torch.manual_seed(0)
    loaded = load_model(request.param, dtype="float32", device="cpu")
    pairs = get_task(TASK).load_pairs("train", limit=6)
    return loaded, EncodedPairSet(pairs, loaded, max_input_len=64, max_output_len=16)


def test_reference_is_each_pairs_own_whatever_its_batch(pair_set):
    loaded, pairs = pair_set
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    together = reference_logprobs(loaded.model, pairs, batch_size=6, vocab_size=vocab, device="cpu")
    alone = reference_logprobs(loaded.model, pairs, batch_size=1, vocab_size=vocab, device="cpu")
    assert list(together) == [p.id for p in pairs.pairs]
    for pair_id, (chosen, rejected) in together.items():
        assert alone[pair_id] == pytest.approx((chosen, rejected), abs=1e-4)
        assert chosen < 0 and rejected < 0
    loaded.model.eval()
    with torch.no_grad():  # the chosen side of pair 0, by hand: Σ_t log softmax(logits)[y_t] over its counted positions
        batch = pairs.batch([0])
        logits, _ = forward(loaded.model, batch)
        labels = batch.labels[0]
        keep = labels != -100
        by_hand = torch.log_softmax(logits[0].float(), -1)[keep].gather(-1, labels[keep][:, None]).sum()
    assert together[pairs.pairs[0].id][0] == pytest.approx(float(by_hand), abs=1e-4)
    assert loaded.model.training is False  # the mode it was in


def test_dpo_objective_on_a_hand_set_reference(pair_set):
    loaded, pairs = pair_set
    model = loaded.model.eval()  # no dropout: the policy's log-probabilities are the reference's exactly
    vocab = model.get_output_embeddings().weight.shape[0]
    own = reference_logprobs(model, pairs, batch_size=6, vocab_size=vocab, device="cpu")
    batch = pairs.batch(range(6))
    # The reference equal to the policy: every margin is 0 and the loss is log 2 per pair.
    same = DPOObjective(model, own, params=DPOParams(beta=0.1), vocab_size=vocab)
    (total, count), = same.terms(batch).values()
    assert count == "pairs" and same.counts(batch)["pairs"] == 6
    assert float(total.detach()) / 6 == pytest.approx(math.log(2), abs=1e-5)
    # A reference that finds each chosen response 2 nats likelier and each rejected one 3 nats less likely than the
    # policy: the margin is β·((−2) − (+3)) = −0.5 and the loss −log σ(−0.5) = 0.974077 per pair.
    shifted = {k: (c + 2.0, r - 3.0) for k, (c, r) in own.items()}
    dpo = DPOObjective(model, shifted, params=DPOParams(beta=0.1), vocab_size=vocab)
    (total, _), = dpo.terms(batch).values()
    assert float(total.detach()) / 6 == pytest.approx(-math.log(1 / (1 + math.exp(0.5))), abs=1e-5)
    metrics = dpo.step_metrics()
    assert metrics["reward_chosen"] == pytest.approx(-0.2, abs=1e-5)
    assert metrics["reward_rejected"] == pytest.approx(0.3, abs=1e-5)
    assert metrics["reward_margin"] == pytest.approx(-0.5, abs=1e-5) and metrics["train_pair_accuracy"] == 0.0
    assert dpo.step_metrics() == {}  # read once per optimizer step


def test_dpo_steps_raise_the_chosen_over_the_rejected():
    torch.manual_seed(0)
    loaded = load_model("tiny-t5-small", dtype="float32", device="cpu")
    pairs = EncodedPairSet(get_task(TASK).load_pairs("train", limit=4), loaded, max_input_len=64, max_output_len=16)
    model = loaded.model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    dpo = DPOObjective(model, reference_logprobs(model, pairs, batch_size=4, vocab_size=vocab, device="cpu"),
                       params=DPOParams(beta=0.1), vocab_size=vocab)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = pairs.batch(range(4))
    losses = []
    for _ in range(4):
        (total, _), = dpo.terms(batch).values()
        optimizer.zero_grad()
        (total / 4).backward()
        optimizer.step()
        losses.append(float(total.detach()) / 4)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] < losses[0] - 0.01
    with torch.no_grad():
        logits, _ = forward(model, batch)
        logps = sequence_logprob(logits, batch.labels)
    ref = torch.tensor([dpo.reference[p.id] for p in pairs.pairs])
    assert ((logps[:4] - ref[:, 0]) - (logps[4:] - ref[:, 1])).mean() > 0  # the margin moved the right way


# -- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, model", [("dpo", "tiny-t5-small"), ("ava-p", "tiny-gpt-small"),
                                           ("ava-d", "tiny-t5-small")])
def test_align_end_to_end(xkd, runs, method, model):
    result = xkd("align", "--model", model, "--method", method, *SMALL, "--json")
    assert result.code == 0, result.err
    found = result.json()
    run = runs / TASK / f"align-{method}-{model}"
    assert found["path"] == str(run) and found["method"] == method and (run / "model").is_dir()
    assert (run / "reward_head.safetensors").is_file() == (method != "dpo")  # AVA trains its reward head too
    record = json.loads((run / "run.json").read_text())
    assert record["kind"] == "align" and record["method"] == method and record["status"] == "completed"
    config = json.loads((run / "config.json").read_text())
    assert ("dpo_beta" in config) == (method == "dpo") and ("lam" in config) == (method != "dpo")
    log = [json.loads(line) for line in (run / "train_log.jsonl").open()]
    assert all(math.isfinite(row.get("loss", 0.0)) for row in log)
    if method == "dpo":
        assert "reward_margin" in log[-1] and "train_pair_accuracy" in log[-1]
        evaluated = xkd("eval", "--model", f"align-{method}-{model}", "--task", TASK, "--limit", "4",
                        "--max-new-tokens", "8", "--json")
        assert evaluated.code == 0, evaluated.err
        assert "rouge2" in json.dumps(evaluated.json())


def test_dpo_resume_continues_to_the_same_model(xkd, runs):
    steps = ["--max-steps", "4", "--save-every", "2", "--keep-last", "5"]
    args = ["align", "--model", "tiny-t5-small", "--method", "dpo", *SMALL, *steps]
    assert xkd(*args, "--name", "full").code == 0
    # The run as its step-2 checkpoint left it (a kill after step 3): the resumed run's reference must again be the
    # initial policy's, not the checkpoint's.
    cut = runs / TASK / "cut"
    shutil.copytree(runs / TASK / "full", cut)
    for later in (cut / "checkpoints").glob("step-*"):
        if later.name != "step-00000002":
            shutil.rmtree(later)
    shutil.rmtree(cut / "model")
    record = json.loads((cut / "run.json").read_text())
    record.update(status="interrupted", name="cut")
    (cut / "run.json").write_text(json.dumps(record))
    resumed = xkd(*args, "--name", "cut", "--resume")
    assert resumed.code == 0, resumed.err
    assert "step 2" in resumed.err
    a = load_file(runs / TASK / "full" / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("args, words", [
    (["--method", "dpo", "--lam", "0.1"], "--lam 0.1 has no effect on dpo: it applies to ava-p and ava-d only"),
    (["--method", "ava-p", "--dpo-beta", "0.5"], "--dpo-beta 0.5 has no effect on ava-p: it applies to dpo only"),
    (["--method", "dpo", "--dpo-beta", "0"], "--dpo-beta must be in (0, inf]"),
    (["--method", "bt"], "--method must be one of ava-p, ava-d, dpo"),
    (["--method", "dpo", "--task", "synth-sum"], "task synth-sum has none"),
])
def test_refused_before_torch(tmp_path, args, words):
    proc = subprocess.run([sys.executable, "-c", PROBE, "align", "--model", "tiny-t5-small", "--task", TASK, *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XKD_RUNS_DIR": str(tmp_path / "runs")})
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert "TORCH=False" in proc.stderr
