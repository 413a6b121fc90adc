"""The training loop: per-token normalisation over the optimizer step, determinism, the reported loss."""

import json

import pytest
import torch

from xkd_cli.models.zoo import build_tiny_model
from xkd_cli.objectives.steps import NLLObjective
from xkd_cli.training.sources import EncodedSet
from xkd_cli.data.taskfile import get_task
from xkd_cli.training.loop import Schedule, linear_schedule, train
from xkd_cli.training.sources import IndexStream


def fit(batch_size, grad_accum, steps=2, model_name="tiny-t5-small", optimizer="adamw", mixed_precision="no",
        objective=None):
    loaded = build_tiny_model(model_name)
    examples = get_task("synth-mt").load("train", limit=64)
    data = EncodedSet(examples, loaded, max_input_len=48, max_output_len=24)
    stream = IndexStream(len(data), seed=0)
    objective = (objective or NLLObjective)(loaded.model)
    train(model=loaded.model, objective=objective, draw=lambda: data.batch(stream.take(batch_size)),
          schedule=Schedule(max_steps=steps, lr=1.0 if optimizer == "sgd" else 1e-3, grad_accum=grad_accum, max_grad_norm=0.0,
                            optimizer=optimizer, mixed_precision=mixed_precision),
          params=loaded.model.parameters(), device=torch.device("cpu"))
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


@pytest.mark.parametrize("model_name", ["tiny-t5-small", "tiny-gpt-small"])
def test_accumulation_equals_big_batch(model_name):
    """Batch 8 × 1 and batch 4 × 2 see the same examples; per-token normalisation over the whole step
    makes their gradients equal (up to float summation order). Plain SGD with lr 1 exposes the gradient
    itself: Adam would hide a wrong scale."""
    start = build_tiny_model(model_name).model.state_dict()
    big = fit(8, 1, steps=1, model_name=model_name, optimizer="sgd")
    accumulated = fit(4, 2, steps=1, model_name=model_name, optimizer="sgd")
    for key in big:
        grad_big, grad_acc = start[key] - big[key], start[key] - accumulated[key]
        torch.testing.assert_close(grad_acc, grad_big, atol=1e-6, rtol=1e-4)
    assert any(not torch.equal(big[k], start[k]) for k in big)  # it did train


def test_same_seed_same_weights():
    a, b = fit(4, 1), fit(4, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_index_stream_covers_each_epoch_once_and_resumes():
    stream = IndexStream(10, seed=3)
    first_epoch = stream.take(4) + stream.take(4) + stream.take(2)
    assert sorted(first_epoch) == list(range(10))
    state = stream.state_dict()
    copy_stream = IndexStream(10, seed=3)
    copy_stream.load_state_dict(state)
    assert copy_stream.take(7) == stream.take(7)
    assert IndexStream(10, seed=4).take(10) != IndexStream(10, seed=3).take(10)


def test_linear_schedule_warmup_and_decay():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    schedule = linear_schedule(optimizer, warmup=4, total=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lrs[5:] == pytest.approx([5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


class LogitDtypes(NLLObjective):
    """NLL, recording the dtype the model's logits came out in."""

    seen: list = []

    def terms(self, batch):
        from xkd_cli.models.forward import forward

        logits, _ = forward(self.model, batch)
        LogitDtypes.seen.append(logits.dtype)
        return super().terms(batch)


@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_autocasts_the_forward_and_keeps_float32_weights(mode, dtype):
    """--mixed-precision runs the forward passes in bf16 / fp16 (fp16 with loss scaling) while the weights
    and their updates stay float32; the result is close to, not equal to, full precision."""
    LogitDtypes.seen = []
    start = build_tiny_model("tiny-t5-small").model.state_dict()
    full = fit(8, 1, steps=1, optimizer="sgd")  # plain SGD with lr 1: the update is the gradient itself
    mixed = fit(8, 1, steps=1, optimizer="sgd", mixed_precision=mode, objective=LogitDtypes)
    assert set(LogitDtypes.seen) == {dtype}
    assert all(v.dtype == torch.float32 for v in mixed.values())
    g_full = torch.cat([(start[k] - full[k]).flatten() for k in full])
    g_mixed = torch.cat([(start[k] - mixed[k]).flatten() for k in full])
    assert (g_mixed - g_full).norm() / g_full.norm() < 0.05  # the same gradient up to half-precision rounding
    assert not torch.equal(g_mixed, g_full)  # the autocast did change the arithmetic


class ScriptedLoss:
    """An objective whose step losses are given in advance (one micro-batch a step, one token): step k's loss is
    ``losses[k - 1]``, whatever the weights."""

    def __init__(self, losses, param):
        self.losses, self.param = iter(losses), param

    def counts(self, batch):
        return {"tokens": 1}

    def terms(self, batch):
        return {"nll": (self.param.sum() * 0 + next(self.losses), "tokens")}

    def modules(self):
        return {}


class NoBatch:
    def to(self, device):
        return self


@pytest.mark.parametrize("log_every, window", [(1, 10), (4, 10), (12, 12), (20, 13)])
def test_the_reported_loss_is_the_mean_of_the_last_logging_window(tmp_path, log_every, window):
    """The run's loss is the mean over its last max(log_every, 10) steps (all of them when it has fewer), not the
    last step's loss: a noisy last step (every third step is 10× the others here, like a gkd step that drew the
    other data source) moves it by a tenth, not tenfold."""
    # float32 holds these exactly (the loss is a float32 tensor): step 12 is a noisy one, step 13 is not
    losses = [3.75 if k % 3 == 0 else 0.25 + k / 64 for k in range(1, 14)]
    model = torch.nn.Linear(1, 1)
    log = tmp_path / "train_log.jsonl"
    result = train(model=model, objective=ScriptedLoss(losses, model.weight), draw=NoBatch,
                   schedule=Schedule(max_steps=len(losses), lr=0.1, log_every=log_every),
                   params=model.parameters(), device=torch.device("cpu"), log_path=log)
    assert result["loss_mean_steps"] == window
    assert result["loss_mean"] == pytest.approx(sum(losses[-window:]) / window, rel=1e-12)
    assert result["last"]["loss"] == losses[-1]  # final_loss keeps meaning the last step's loss
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged[-1]["loss_mean"] == result["loss_mean"]  # the last log line carries the same number
    if log_every == 1:  # every step is logged: the reported loss is the mean of the last ten logged losses
        assert result["loss_mean"] == pytest.approx(sum(line["loss"] for line in logged[-10:]) / 10, rel=1e-12)
