"""The lifecycle every training command shares: a task split tokenised once (:class:`EncodedSet`), and
:func:`run_training`, which creates (or reopens) the run, trains on the one loop, saves the model and
finishes the record. ``sft`` and ``distill`` differ only in the data source and objective they hand it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from xkd_cli.data.batches import Batch, make_batch, special_ids
from xkd_cli.training.checkpoint.checkpointer import Checkpointer, TrainingInterrupted
from xkd_cli.training.checkpoint.resume import Checkpoint, latest_checkpoint, reopen_run
from xkd_cli.config.core import to_dict
from xkd_cli.config.training import TrainingConfig
from xkd_cli.core.errors import StopRequested, XKDError
from xkd_cli.core.runtime import resolve_device, seed_everything
from xkd_cli.evaluation.evaluate import quick_eval
from xkd_cli.models.lora import MERGED_DIR, export_merged
from xkd_cli.models.chat import encode_example_prompts, encode_example_targets, stop_ids
from xkd_cli.models.loaded_model import LoadedModel, count_parameters
from xkd_cli.models.loading import save_model
from xkd_cli.data.tasks import Example, Task
from xkd_cli.training.distributed import ShardedStream, check_shardable
from xkd_cli.training.distributed import current as current_processes
from xkd_cli.training.loop import IndexStream, Schedule, set_dropout, train
from xkd_cli.core.workspace import Run, create_run, run_path


class EncodedSet:
    """A task split tokenised once: prompt and target ids per example, ready for ``make_batch``."""

    def __init__(self, examples: Sequence[Example], loaded: LoadedModel, *, max_input_len: int, max_output_len: int,
                 keep_end: bool = False):
        tok = loaded.tokenizer
        self.examples = list(examples)
        self.is_encoder_decoder = loaded.is_encoder_decoder
        self.pad_id, self.eos_id, self.start_id = special_ids(tok, loaded.model.config)
        self.stop_ids = stop_ids(loaded)
        if loaded.chat is not None:  # targets (and empty samples) end with the template's end-of-turn token
            self.eos_id = loaded.chat.end_of_turn
        self.prompts = encode_example_prompts(loaded, self.examples, max_len=max_input_len, keep_end=keep_end)
        self.targets = encode_example_targets(loaded, [e.reference for e in self.examples], max_len=max_output_len)

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, indices: Sequence[int], targets: Sequence[Sequence[int]] | None = None) -> Batch:
        return make_batch([self.prompts[i] for i in indices],
                          targets if targets is not None else [self.targets[i] for i in indices],
                          is_encoder_decoder=self.is_encoder_decoder, pad_id=self.pad_id,
                          decoder_start_id=self.start_id, ids=[self.examples[i].id for i in indices])


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


def run_training(cfg: TrainingConfig, *, kind: str, runs_root: Path, overwrite: bool, loaded: LoadedModel,
                 task: Task, train_set: EncodedSet, eval_examples: Sequence[Example], objective,
                 draw: Callable[[IndexStream], Batch], extra_params: Sequence[torch.nn.Parameter] = (),
                 record: dict[str, Any] | None = None, save_extra: Callable[[Run], None] | None = None,
                 step_metrics: Callable[[], dict] | None = None, name: str,
                 resume_from: Checkpoint | None = None, checkpointed: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create the run (or reopen it to continue from ``resume_from``), train, save the model (and whatever
    ``save_extra`` adds), finish the record. ``checkpointed``: trained modules and stateful data-source
    parts that checkpoints must hold besides the model and the index stream (see xkd_cli/training/checkpoint/)."""
    processes = current_processes(cfg.device)
    device = resolve_device(cfg.device)
    model = loaded.model.to(device)
    set_dropout(model, cfg.dropout)
    if processes.sharded:
        check_shardable(cfg)
        processes.shard(model)
    stream = IndexStream(len(train_set), cfg.seed)
    share = ShardedStream(stream, processes)  # the whole stream when there is one process
    checkpoints = Checkpointer(run_path(runs_root, task.name, name), kind=kind, cfg=cfg, examples=len(train_set),
                               parts={"model": model, "stream": stream, **(checkpointed or {})}, resume=resume_from,
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
    if run is not None:
        run.log(f"{kind} started: {len(train_set)} training examples on {where}" if resume_from is None else
                f"{kind} resumed from checkpoint step {resume_from.step} on {where}")
    seed_everything(cfg.seed)
    schedule = Schedule(max_steps=cfg.max_steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, grad_accum=cfg.grad_accum,
                        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, log_every=cfg.log_every,
                        eval_every=cfg.eval_every, mixed_precision=cfg.mixed_precision)

    def evaluate(step: int) -> dict:
        return quick_eval(loaded, task, eval_examples, max_input_len=cfg.max_input_len,
                          max_new_tokens=cfg.max_output_len, batch_size=max(cfg.batch_size, 16),
                          should_stop=lambda: checkpoints.signal_received is not None)

    try:
        result = train(model=model, objective=objective, draw=lambda: draw(share), schedule=schedule,
                       params=model.parameters(), extra_params=extra_params, device=device,
                       log_path=run.path / "train_log.jsonl" if run is not None else None,
                       evaluate=evaluate if cfg.eval_every and eval_examples and run is not None else None,
                       step_metrics=step_metrics, description=f"{kind} {task.name}/{name}", checkpoints=checkpoints,
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
        return {"task": task.name, "run": name, "path": str(path), "model": str(path / "model"),
                "process": processes.rank, "final_loss": result["last"].get("loss")}
    try:
        save_model(loaded, run.model_dir, state_dict=full_state)
        if cfg.merge_lora:  # a plain transformers copy with the adapter folded in, beside the adapter
            merged = export_merged(run.model_dir, run.path / MERGED_DIR, dtype=cfg.dtype, task=task.name,
                                   runs_dir=runs_root)
            run.update_record(merged_model=str(merged))
        if save_extra is not None:
            save_extra(run)
    except OSError as exc:  # e.g. a full disk: the trained weights are lost, the checkpoints are not
        error = f"could not save the trained model in {run.path}: {exc.strerror or exc}. {_how_to_redo(run.path)}"
        with contextlib.suppress(OSError):
            run.update_record(status="failed", error=error)
        checkpoints.release()
        processes.wait()
        raise XKDError(error) from None
    final_eval = result["evals"][-1] if result["evals"] else None
    run.finish(started, train_seconds=round(result["train_seconds"], 3), final_loss=result["last"].get("loss"),
               final_eval=final_eval)
    run.log(f"{kind} finished in {result['train_seconds']:.1f}s")
    checkpoints.release()
    processes.wait()
    return {"task": task.name, "run": name, "path": str(run.path), "model": str(run.model_dir),
            "steps": cfg.max_steps, "final_loss": result["last"].get("loss"),
            "train_seconds": round(result["train_seconds"], 2),
            "tokens_per_s": round(result["last"].get("tokens_per_s", 0.0), 1),
            "final_eval": final_eval, "evals": result["evals"]}
