"""``xkd reward-model``: a reward model trained with AVA (ava-p on pairs, ava-d on demonstrations) or Bradley–Terry
(bt), on the one training lifecycle (seeds, --resume, --processes and checkpoints as for sft), then scored on the
task's held-out pairs (preference accuracy with its 95% interval, per damage kind where the pairs record one).

| method | source                                           | objective (``objectives/reward_model.py``) |
|--------|--------------------------------------------------|--------------------------------------------|
| ava-p  | pairs: chosen rows, then rejected rows           | −F_p − F_c                                 |
| ava-d  | demonstrations: a preference task's chosen side, | −F_d                                       |
|        | or a prompt-completion / messages task           |                                            |
| bt     | pairs                                            | −log σ(r⁺ − r⁻)                            |

The run folder holds ``model/`` and ``reward_head.safetensors`` like an X-KD run, so ``xkd reward RUN`` shows its
per-token rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_cli.config.alignment import PreferenceTrainingConfig, RewardModelConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.ui import note
from xkd_cli.core.workspace import open_run
from xkd_cli.data.taskfile import task_of
from xkd_cli.data.tasks import PreferencePair, Task
from xkd_cli.evaluation.preference import preference_accuracy, score_pairs
from xkd_cli.models.chat import use_chat_template
from xkd_cli.models.loaded_model import LoadedModel, model_vocab_size
from xkd_cli.models.lora import load_trained_model, lora_record
from xkd_cli.objectives.ava import AVAParams
from xkd_cli.objectives.experiential import ExperientialParams
from xkd_cli.objectives.reward_model import REWARD_MODEL_POSITION, RewardModelObjective
from xkd_cli.training.checkpoint.resume import find_resume
from xkd_cli.training.lifecycle import load_split, run_training
from xkd_cli.training.sources import EncodedPairSet, EncodedSet, Targets


def ava_params(cfg: PreferenceTrainingConfig) -> AVAParams | None:
    """AVA's hyperparameters for ava-p and ava-d; None for the baselines."""
    if cfg.method not in ("ava-p", "ava-d"):
        return None
    return AVAParams(beta=cfg.ava_beta, reward=cfg.reward,
                     experiential=ExperientialParams(lam=cfg.lam, gamma=cfg.gamma, tau=cfg.tau,
                                                     reward_position=REWARD_MODEL_POSITION))


def held_out_pairs(task: Task, cfg: RewardModelConfig) -> list[PreferencePair]:
    """The pairs of the task's eval split (the first --eval-pairs); none for a task of demonstrations only."""
    try:
        return task.load_pairs(task.eval_split, cfg.data, limit=cfg.eval_pairs)
    except XKDError:
        if cfg.preference:
            raise
        return []


@dataclass
class PreferenceSetup:
    """What reward-model and align train on: the task, the loaded model and its training set (pairs, or
    demonstrations for ava-d)."""

    task: Task
    loaded: LoadedModel
    train_set: EncodedPairSet | EncodedSet
    lengths: dict[str, Any]

    def record(self, cfg: PreferenceTrainingConfig) -> dict[str, Any]:
        """The run record's fields both commands write."""
        return {"method": cfg.method, "chat_template": self.loaded.chat.origin if self.loaded.chat else None,
                "base_model": cfg.model, "model_source": self.loaded.source, **lora_record(cfg, self.loaded)}


def prepare(cfg: PreferenceTrainingConfig, *, runs_root: Path, task: Task) -> PreferenceSetup:
    """Read the training split (checked before the model loads), load the model, encode the training set."""
    if cfg.preference:
        train_pairs = task.load_pairs("train", cfg.data, train_fraction=cfg.train_fraction)
        if not train_pairs:
            raise XKDError(f"the train split of task '{task.name}' has no preference pairs. Check --data.")
    else:
        train_examples = load_split(task, "train", cfg, train_fraction=cfg.train_fraction)
    loaded = use_chat_template(load_trained_model(cfg.model, cfg, task=task.name, runs_dir=runs_root),
                               cfg.chat_template)
    lengths = dict(max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len, keep_end=task.keep_prompt_end)
    train_set = EncodedPairSet(train_pairs, loaded, **lengths) if cfg.preference else \
        EncodedSet(train_examples, loaded, **lengths)
    return PreferenceSetup(task, loaded, train_set, lengths)


def run_reward_model(cfg: RewardModelConfig, *, runs_root: Path, overwrite: bool = False,
                     resume: bool = False) -> dict[str, Any]:
    task = task_of(cfg)
    resume_from = find_resume(runs_root, task.name, cfg.run_name(), kind="reward-model", cfg=cfg,
                              overwrite=overwrite, resume=resume)
    eval_pairs = held_out_pairs(task, cfg)
    setup = prepare(cfg, runs_root=runs_root, task=task)
    loaded = setup.loaded
    params = ava_params(cfg)
    objective = RewardModelObjective(loaded, cfg.method, params=params, vocab_size=model_vocab_size(loaded))
    result = run_training(cfg, kind="reward-model", runs_root=runs_root, overwrite=overwrite, loaded=loaded, task=task,
                          train_set=setup.train_set, eval_examples=[],
                          source=Targets(setup.train_set, cfg.batch_size), objective=objective,
                          record={**setup.record(cfg), "reward_position": REWARD_MODEL_POSITION},
                          name=cfg.run_name(), resume_from=resume_from)
    if "process" in result:  # another process of a launch: the main one evaluates and records
        return result
    result["method"] = cfg.method
    if not eval_pairs:
        note(f"task {task.name} has no held-out preference pairs: no preference accuracy measured")
        return result
    held_out = EncodedPairSet(eval_pairs, loaded, **setup.lengths)
    how = params.reward if params is not None else "last"
    chosen, rejected = score_pairs(loaded.model, objective.head, held_out, how=how,
                                   batch_size=max(cfg.batch_size, 16))
    kinds = [p.meta.get("damage") for p in eval_pairs]
    accuracy = preference_accuracy(chosen, rejected, kinds if any(kinds) else None)
    accuracy.update(split=task.eval_split, reward=how)
    open_run(runs_root, task.name, cfg.run_name()).update_record(final_eval=accuracy)
    result["final_eval"] = accuracy
    return result
