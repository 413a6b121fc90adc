"""``xkd align``: optimise a policy directly from preference pairs or demonstrations, on the one training lifecycle
(seeds, --resume, --processes, checkpoints, in-training evaluation as for sft).

| method | source                                  | objective                                                         |
|--------|-----------------------------------------|-------------------------------------------------------------------|
| ava-p  | pairs (chosen rows, then rejected rows) | −F_p − F_c on the policy itself, no reference model (AVA Eq. 17)  |
| ava-d  | demonstrations                          | −F_d on the policy itself (AVA Eq. 13)                            |
| dpo    | pairs                                   | DPO's sigmoid loss, the initial policy as reference (TRL's)       |

AVA's objective is the reward model's (:class:`~xkd_cli.objectives.reward_model.RewardModelObjective`): the policy
*is* the backbone whose Q the reward head explains, so one training gives both; align keeps the backbone as a policy
and evaluates what it generates, reward-model scores the head. The aligned run is a run like any other: ``model/``
(and AVA's ``reward_head.safetensors``), which ``eval``, ``diversity``, ``judge``, ``report`` and ``reward`` take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xkd_cli.config.alignment import AlignConfig
from xkd_cli.core.runtime import resolve_device
from xkd_cli.core.ui import progress
from xkd_cli.data.taskfile import task_of
from xkd_cli.models.loaded_model import model_vocab_size
from xkd_cli.objectives.ava import DPOParams
from xkd_cli.objectives.dpo import DPOObjective, reference_logprobs
from xkd_cli.objectives.reward_model import REWARD_MODEL_POSITION, RewardModelObjective
from xkd_cli.training.checkpoint.resume import find_resume
from xkd_cli.training.lifecycle import load_split, run_training
from xkd_cli.training.reward_model import ava_params, prepare
from xkd_cli.training.sources import Targets


def run_align(cfg: AlignConfig, *, runs_root: Path, overwrite: bool = False, resume: bool = False) -> dict[str, Any]:
    task = task_of(cfg)
    resume_from = find_resume(runs_root, task.name, cfg.run_name(), kind="align", cfg=cfg, overwrite=overwrite,
                              resume=resume)
    eval_examples = load_split(task, task.eval_split, cfg, limit=cfg.eval_limit) if cfg.eval_every else []
    setup = prepare(cfg, runs_root=runs_root, task=task)
    loaded, vocab_size = setup.loaded, model_vocab_size(setup.loaded)
    record = setup.record(cfg)
    if cfg.method == "dpo":
        # The reference is the policy before training: computed here, before a resumed run loads its checkpoint.
        device = resolve_device(cfg.device)
        with progress() as bar:
            bar_id = bar.add_task("dpo reference log-probabilities", total=len(setup.train_set), info="")
            reference = reference_logprobs(loaded.model.to(device), setup.train_set,
                                           batch_size=max(cfg.batch_size, 16), vocab_size=vocab_size, device=device,
                                           on_batch=lambda pairs: bar.update(bar_id, advance=pairs))
        objective = DPOObjective(loaded.model, reference, params=DPOParams(beta=cfg.dpo_beta), vocab_size=vocab_size)
    else:
        objective = RewardModelObjective(loaded, cfg.method, params=ava_params(cfg), vocab_size=vocab_size)
        record["reward_position"] = REWARD_MODEL_POSITION
    result = run_training(cfg, kind="align", runs_root=runs_root, overwrite=overwrite, loaded=loaded, task=task,
                          train_set=setup.train_set, eval_examples=eval_examples,
                          source=Targets(setup.train_set, cfg.batch_size), objective=objective, record=record,
                          name=cfg.run_name(), resume_from=resume_from)
    result["method"] = cfg.method
    return result
