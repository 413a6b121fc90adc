"""The lifecycle every training command shares: :func:`run_training` creates (or reopens) the run, trains on
the one loop, saves the model (and what the objective trained besides it) and finishes the record. ``sft``
and ``distill`` differ only in the data source and the objective they hand it (``xkd_cli.training.sources``,
``xkd_cli.objectives.steps``), and it needs to know neither."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Sequence

from xkd_cli.training.checkpoint.checkpointer import Checkpointer, TrainingInterrupted
from xkd_cli.training.checkpoint.resume import Checkpoint, checkpoint_dir, latest_checkpoint, reopen_run
from xkd_cli.config.core import to_dict
from xkd_cli.config.training import TrainingConfig
from xkd_cli.core.errors import StopRequested, XKDError
from xkd_cli.core.runtime import resolve_device, seed_everything
from xkd_cli.core.ui import note
from xkd_cli.evaluation.evaluate import quick_eval
from xkd_cli.models.lora import MERGED_DIR, export_merged
from xkd_cli.models.loaded_model import LoadedModel, count_parameters
from xkd_cli.models.loading import save_model
from xkd_cli.data.tasks import Example, Task
from xkd_cli.objectives.steps import Objective
from xkd_cli.training.distributed import check_shardable
from xkd_cli.training.distributed import current as current_processes
from xkd_cli.training.loop import Schedule, set_dropout, train
from xkd_cli.training.sources import EncodedSet, IndexStream, ShardedStream, Source
from xkd_cli.core.workspace import create_run, run_model_dir, run_path


def load_split(task: Task, split: str, cfg: TrainingConfig, **kw: Any) -> list[Example]:
    examples = task.load(split, cfg.data, **kw)
    if not examples:
        raise XKDError(f"the {split} split of task '{task.name}' is empty. Check --data.")
    return examples


def _how_to_redo(run_dir: Path) -> str:
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return ("Free disk space, then run the same command with --overwrite (no checkpoint was kept; "
                "--save-every N keeps some).")
    return f"Free disk space, then run the same command again: it resumes from checkpoint step {latest.step}."


def _losses(result: dict[str, Any]) -> dict[str, Any]:
    """The run's loss for its record and result: ``loss_mean``, the mean over the last ``loss_mean_steps`` steps
    (the number to read); ``final_loss``, the last step's alone (noisy, kept for what reads it)."""
    return {"final_loss": result["last"].get("loss"), "loss_mean": result["loss_mean"],
            "loss_mean_steps": result["loss_mean_steps"]}


def run_training(cfg: TrainingConfig, *, kind: str, runs_root: Path, overwrite: bool, loaded: LoadedModel,
                 task: Task, train_set: EncodedSet, eval_examples: Sequence[Example], source: Source,
                 objective: Objective, record: dict[str, Any] | None = None, name: str,
                 resume_from: Checkpoint | None = None) -> dict[str, Any]:
    """Create the run (or reopen it to continue from ``resume_from``), train, save the model and what the
    objective trained besides it, finish the record. Checkpoints hold the model, the index stream, the source,
    the objective and its modules (see xkd_cli/training/checkpoint/)."""
    processes = current_processes(cfg.device)
    device = resolve_device(cfg.device)
    model = loaded.model.to(device)
    modules = {key: module.to(device) for key, module in objective.modules().items()}
    set_dropout(model, cfg.dropout)
    if processes.sharded:
        check_shardable(cfg)
        processes.shard(model)
    stream = IndexStream(len(train_set), cfg.seed)
    share = ShardedStream(stream, processes)  # the whole stream when there is one process
    checkpoints = Checkpointer(run_path(runs_root, task.name, name), kind=kind, cfg=cfg, examples=len(train_set),
                               parts={"model": model, "stream": stream, "source": source, "objective": objective,
                                      **modules}, resume=resume_from,
                               processes=processes)
    processes.wait()  # every process has checked the run directory before the main one creates and locks it
    run = None  # only the main process writes the run
    if processes.is_main and resume_from is None:
        run = create_run(runs_root, task.name, name, kind=kind, config=to_dict(cfg), seed=cfg.seed,
                         overwrite=overwrite, extra={"model_parameters": count_parameters(model),
                                                     "processes": processes.count, **(record or {})})
        checkpoints.lock()
    elif processes.is_main:
        checkpoints.lock()
        run = reopen_run(runs_root, task.name, name, resume_from, to_dict(cfg))
    processes.wait()
    started = time.time()
    where = f"{device}" + (f" × {processes.count} processes" if processes.count > 1 else "")
    if run is not None and resume_from is None:
        run.log(f"{kind} started: {len(train_set)} training examples on {where}")
    elif run is not None:
        run.log(f"{kind} resumed from checkpoint step {resume_from.step} on {where}")
        note(f"resuming {task.name}/{name} from checkpoint step {resume_from.step} of {cfg.max_steps}")
    seed_everything(cfg.seed)
    schedule = Schedule(max_steps=cfg.max_steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, grad_accum=cfg.grad_accum,
                        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, log_every=cfg.log_every,
                        eval_every=cfg.eval_every, mixed_precision=cfg.mixed_precision)

    def evaluate(step: int) -> dict:
        return quick_eval(loaded, task, eval_examples, max_input_len=cfg.max_input_len,
                          max_new_tokens=cfg.max_output_len, batch_size=max(cfg.batch_size, 16),
                          should_stop=lambda: checkpoints.signal_received is not None)

    try:
        result = train(model=model, objective=objective, draw=lambda: source.draw(share), schedule=schedule,
                       params=model.parameters(), extra_params=[p for m in modules.values() for p in m.parameters()],
                       device=device,
                       log_path=run.path / "train_log.jsonl" if run is not None else None,
                       evaluate=evaluate if cfg.eval_every and eval_examples and run is not None else None,
                       step_metrics=lambda: {**objective.step_metrics(), **source.step_metrics()}, description=f"{kind} {task.name}/{name}", checkpoints=checkpoints,
                       processes=processes)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, (TrainingInterrupted, StopRequested, KeyboardInterrupt)) else "failed"
        if run is not None:
            with contextlib.suppress(OSError):  # a full disk must not hide the error itself
                run.update_record(status=status, error=str(exc) or type(exc).__name__)
        checkpoints.release()
        raise
    full_state = processes.full_state_dict(model) if processes.sharded else None  # every process takes part
    if run is None:  # another process: the main one saves the model and finishes the record
        processes.wait()
        path = run_path(runs_root, task.name, name)
        return {"task": task.name, "run": name, "path": str(path), "model": str(run_model_dir(path)),
                "process": processes.rank, **_losses(result)}
    try:
        save_model(loaded, run.model_dir, state_dict=full_state)
        if cfg.merge_lora:  # a plain transformers copy with the adapter folded in, beside the adapter
            merged = export_merged(run.model_dir, run.path / MERGED_DIR, dtype=cfg.dtype, task=task.name,
                                   runs_dir=runs_root)
            run.update_record(merged_model=str(merged))
        saved = objective.save(run.path)
    except OSError as exc:  # e.g. a full disk: the trained weights are lost, the checkpoints are not
        error = f"could not save the trained model in {run.path}: {exc.strerror or exc}. {_how_to_redo(run.path)}"
        with contextlib.suppress(OSError):
            run.update_record(status="failed", error=error)
        checkpoints.release()
        processes.wait()
        raise XKDError(error) from None
    final_eval = result["evals"][-1] if result["evals"] else None
    run.finish(started, train_seconds=round(result["train_seconds"], 3), **_losses(result), final_eval=final_eval)
    run.log(f"{kind} finished in {result['train_seconds']:.1f}s")
    deleted = checkpoints.finished()
    if deleted is not None:
        message = (f"deleted the checkpoints of the finished run ({deleted / 1e6:.1f} MB; --keep-last N keeps them); "
                   f"the model is {run.model_dir}")
        run.log(message)
        note(message)
    checkpoints.release()
    processes.wait()
    kept = checkpoint_dir(run.path)
    return {"task": task.name, "run": name, "path": str(run.path), "model": str(run.model_dir), **saved,
            "checkpoints": str(kept) if kept.is_dir() else None, "steps": cfg.max_steps, **_losses(result),
            "train_seconds": round(result["train_seconds"], 2),
            "tokens_per_s": round(result["last"].get("tokens_per_s", 0.0), 1),
            "final_eval": final_eval, "evals": result["evals"]}
