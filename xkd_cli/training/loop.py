"""The one training loop every method uses: it draws micro-batches from a data source and asks an
objective for loss terms; methods differ only in the source and the objective they hand it.

Each term is a *sum* over tokens together with the name of the count that normalises it. The loop
counts those tokens over all micro-batches of an optimizer step first, so a step of ``batch × accum``
gives exactly the loss and gradient of one batch of ``batch · accum`` (per-token normalisation).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from xkd_cli.data.batches import Batch
from xkd_cli.objectives.steps import Objective
from xkd_cli.training.checkpoint.checkpointer import LoopState
from xkd_cli.training.distributed import Processes, current, is_sharded
from xkd_cli.core.errors import EvalCancelled, XKDError
from xkd_cli.core.timing import PHASES
from xkd_cli.core.ui import progress


@dataclass(frozen=True)
class Schedule:
    """The optimizer steps of a run. ``optimizer="sgd"`` is no command's choice: it is kept on purpose, for
    checks that need the update to be a plain multiple of the gradient (the tests) and for ablations."""

    max_steps: int
    lr: float
    warmup_steps: int = 0
    grad_accum: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    eval_every: int = 0
    optimizer: str = "adamw"  # or "sgd"
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast; fp16 adds loss scaling)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The fewest steps the reported mean loss averages: one step's loss is noise (a mixed-α step of gkd alone can be 10×
# its neighbours), and --log-every 1 must not make the run table report it.
MIN_LOSS_WINDOW = 10


def loss_window(log_every: int) -> int:
    """How many of the last steps the reported loss averages: the last logging window, at least
    ``MIN_LOSS_WINDOW`` steps (fewer only when the run has fewer)."""
    return max(log_every, MIN_LOSS_WINDOW)


def autocast(mode: str, device: torch.device):
    """The forward passes' autocast for ``--mixed-precision`` (a no-op for "no"). Weights, gradients and the
    optimizer stay in the model's dtype; the losses compute in float32 whatever the logits' dtype."""
    if mode == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[mode])


class TrainingDiverged(XKDError):
    """The loss became NaN or infinite: not bad input, so a different exit code."""

    exit_code = 1


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak LR, then linear decay to 0 at ``total`` (the paper's "linear" schedule)."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(*, model: torch.nn.Module, objective: Objective, draw: Callable[[], Batch], schedule: Schedule,
          params: Iterable[torch.nn.Parameter], device: torch.device, extra_params: Iterable[torch.nn.Parameter] = (),
          log_path=None,
          evaluate: Callable[[int], dict] | None = None, step_metrics: Callable[[], dict] | None = None,
          description: str = "train", checkpoints=None, processes: Processes | None = None) -> dict:
    """Run ``schedule.max_steps`` optimizer steps; return the last step's log, every evaluation and the mean loss
    of the last :func:`loss_window` steps (``loss_mean`` over ``loss_mean_steps``; every log line carries it too).
    ``checkpoints`` (a :class:`checkpoint.Checkpointer`) resumes from its checkpoint, saves after steps
    and turns SIGTERM/SIGINT into "finish the step, save, stop". With several ``processes`` each draws its
    own share of the global batch; counts, loss terms and gradients are summed over all of them.
    ``step_metrics()`` is the caller's one source of further numbers for each step's log entry (the
    objective's counters and F_ex statistics, sampling time), read once per optimizer step."""
    processes = processes or current()
    groups = [[p for p in group if p.requires_grad] for group in (params, extra_params)]
    groups = [group for group in groups if group]
    params = [p for group in groups for p in group]
    optimizer = (torch.optim.SGD if schedule.optimizer == "sgd" else torch.optim.AdamW)(
        params, lr=schedule.lr, weight_decay=schedule.weight_decay)
    scheduler = linear_schedule(optimizer, schedule.warmup_steps, schedule.max_steps)
    # fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none. Disabled, the scaler
    # hands the loss, the gradients and the optimizer step through untouched.
    fp16 = schedule.mixed_precision == "fp16"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    kept_scaler = scaler if fp16 else None  # only fp16 checkpoints hold a "scaler" entry
    model.train()
    log_file = open(log_path, "a", encoding="utf-8") if log_path else None
    board = tensorboard_writer(log_path)
    last: dict = {}
    # Last before the loop: a resume restores the RNG states here, so nothing may draw random numbers between.
    resumed = checkpoints.restore(optimizer, scheduler, scaler=kept_scaler) if checkpoints is not None else None
    evals: list[dict] = list(resumed.evals) if resumed else []
    started = time.perf_counter() - (resumed.elapsed_s if resumed else 0.0)
    tokens_seen = resumed.tokens_seen if resumed else 0
    first = resumed.step + 1 if resumed else 1
    # the last steps' losses, carried in checkpoints: a resumed run reports the mean an uninterrupted one does
    recent = deque(resumed.recent_losses if resumed else (), maxlen=loss_window(schedule.log_every))
    try:
        with progress() as bar, (checkpoints.signals() if checkpoints is not None else contextlib.nullcontext()):
            task_id = bar.add_task(description, total=schedule.max_steps, completed=first - 1, info="")
            for step in range(first, schedule.max_steps + 1):
                try:
                    # drawing the batches (student sampling, its own phase, runs under the autocast too)
                    with PHASES("collate"), autocast(schedule.mixed_precision, device):
                        batches = [draw().to(device) for _ in range(schedule.grad_accum)]
                    totals: dict[str, int] = {}
                    for batch in batches:
                        for key, value in objective.counts(batch).items():
                            totals[key] = totals.get(key, 0) + value
                    totals = processes.sum_counts(totals)  # per-token normalisation over the global batch
                    optimizer.zero_grad(set_to_none=True)
                    sums: dict[str, torch.Tensor] = {}
                    for batch in batches:
                        with autocast(schedule.mixed_precision, device):
                            terms = objective.terms(batch)
                        loss = sum(value / max(totals[key], 1) for value, key in terms.values())
                        with PHASES.backward():
                            scaler.scale(loss).backward()
                        for name, (value, key) in terms.items():
                            sums[name] = sums.get(name, 0.0) + value.detach() / max(totals[key], 1)
                except XKDError as exc:  # e.g. a non-finite teacher: say where it happened
                    raise type(exc)(f"step {step}: {exc}") from exc
                processes.sum_gradients(params)
                values = processes.sum_values({name: float(v) for name, v in sums.items()})
                loss_value = sum(values.values())
                if not math.isfinite(loss_value):
                    raise TrainingDiverged(
                        f"loss became {loss_value} at step {step} ({values}). Lower --lr or check the data; "
                        "nothing was saved from this step.")
                scaler.unscale_(optimizer)  # after the gradients are summed: every process sees the same inf
                grad_norm = clip_gradients(groups, schedule.max_grad_norm) if schedule.max_grad_norm > 0 else None
                with PHASES("optimizer"):
                    scaler.step(optimizer)  # fp16: skips the update when a gradient overflowed
                    scaler.update()  # fp16: adapts the scale
                scheduler.step()
                tokens_seen += totals.get("tokens", 0)
                elapsed = time.perf_counter() - started
                extra = step_metrics() if step_metrics is not None else {}
                recent.append(loss_value)
                last = {"step": step, "loss": loss_value, "loss_mean": sum(recent) / len(recent), **values, **extra,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": None if grad_norm is None else float(grad_norm),
                        "tokens": totals.get("tokens", 0), "tokens_per_s": tokens_seen / max(elapsed, 1e-9),
                        "elapsed_s": elapsed}
                if PHASES.enabled:  # opt-in profiling (xkd_cli.core.timing, bench/)
                    last["phase_seconds"] = PHASES.take()
                stopping = checkpoints is not None and checkpoints.signal_received is not None
                if evaluate is not None and schedule.eval_every and not stopping and (
                        step % schedule.eval_every == 0 or step == schedule.max_steps):
                    with contextlib.suppress(EvalCancelled):  # a stop came: save and stop now, not after the eval
                        result = {"step": step, **evaluate(step)}
                        evals.append(result)
                        last["eval"] = result
                    model.train()
                if step % schedule.log_every == 0 or step == schedule.max_steps or "eval" in last:
                    if log_file:
                        log_file.write(json.dumps(last) + "\n")
                        log_file.flush()
                    if board is not None:
                        flat = {**last, **{f"eval/{k}": v for k, v in last.get("eval", {}).items()}}
                        for key, value in flat.items():
                            if isinstance(value, (int, float)) and key != "step":
                                board.add_scalar(key, value, step)
                parts = " ".join(f"{k} {v:.4f}" for k, v in values.items()) if len(values) > 1 else ""
                bar.update(task_id, advance=1, info=f"loss {loss_value:.4f} {parts}".strip())
                if checkpoints is not None:
                    checkpoints.step_done(LoopState(step, tokens_seen, elapsed, evals, list(recent)),
                                          max_steps=schedule.max_steps,
                                          optimizer=optimizer, scheduler=scheduler, scaler=kept_scaler)
    finally:
        if log_file:
            log_file.close()
        if board is not None:
            board.close()
    return {"last": last, "evals": evals, "train_seconds": time.perf_counter() - started,
            "loss_mean": last.get("loss_mean"), "loss_mean_steps": len(recent)}


def clip_gradients(groups: list[list[torch.nn.Parameter]], max_norm: float) -> torch.Tensor:
    """Clip by the global norm of all groups, computed group by group: a group whose gradient is exactly
    zero (the reward head at its prior when λ = 0) then leaves the norm bit for bit what it is without it
    (sqrt(x² + 0) == x in IEEE arithmetic), so an X-variant with λ = 0 follows its baseline exactly."""
    norms = [torch.nn.utils.get_total_norm([p.grad for p in group if p.grad is not None]) for group in groups]
    norms = [n.full_tensor() if is_sharded(n) else n for n in norms]  # FSDP: the norm over every process's shard
    total = norms[0] if len(norms) == 1 else torch.stack(norms).square().sum().sqrt()
    params = [p for group in groups for p in group]
    if not any(is_sharded(p) for p in params):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        return total
    # clip_grads_with_norm_'s arithmetic, on each process's own shard (torch refuses to mix shards and tensors)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            (p.grad.to_local() if is_sharded(p.grad) else p.grad).mul_(coefficient)
    return total


def tensorboard_writer(log_path):
    """A TensorBoard writer beside the JSONL log when the tensorboard package is installed."""
    if not log_path:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_path.parent / "tensorboard"))


def set_dropout(model: torch.nn.Module, p: float | None) -> None:
    """Override every dropout probability (``None`` keeps the model's own) except LoRA's, which
    ``--lora-dropout`` sets."""
    if p is None:
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." not in f".{name}.":
            module.p = p
