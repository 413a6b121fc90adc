"""Supervised fine-tuning: the ground-truth data source with the NLL objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any


from xkd_cli.training.checkpoint.resume import find_resume
from xkd_cli.config.training import SFTConfig
from xkd_cli.models.lora import load_trained_model, lora_record
from xkd_cli.data.taskfile import task_of
from xkd_cli.models.chat import use_chat_template
from xkd_cli.objectives.steps import NLLObjective
from xkd_cli.training.lifecycle import load_split, run_training
from xkd_cli.training.sources import EncodedSet, Targets


def run_sft(cfg: SFTConfig, *, runs_root: Path, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    task = task_of(cfg)
    resume_from = find_resume(runs_root, task.name, cfg.run_name(), kind="sft", cfg=cfg, overwrite=overwrite,
                              resume=resume)
    train_examples = load_split(task, "train", cfg, train_fraction=cfg.train_fraction)
    eval_examples = load_split(task, task.eval_split, cfg, limit=cfg.eval_limit) if cfg.eval_every else []
    loaded = use_chat_template(load_trained_model(cfg.model, cfg, task=task.name, runs_dir=runs_root),
                               cfg.chat_template)
    train_set = EncodedSet(train_examples, loaded, max_input_len=cfg.max_input_len,
                           max_output_len=cfg.max_output_len, keep_end=task.keep_prompt_end)
    objective = NLLObjective(loaded.model, fused_head=cfg.fused_head)
    return run_training(cfg, kind="sft", runs_root=runs_root, overwrite=overwrite, loaded=loaded, task=task,
                        train_set=train_set, eval_examples=eval_examples,
                        source=Targets(train_set, cfg.batch_size), objective=objective,
                        record={"role": cfg.role, "chat_template": loaded.chat.origin if loaded.chat else None, "base_model": cfg.model, "model_source": loaded.source,
                                **lora_record(cfg, loaded)},
                        name=cfg.run_name(), resume_from=resume_from)
