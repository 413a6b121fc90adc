"""``xkd sft``, ``xkd distill``, ``xkd reward-model`` and ``xkd align``: thin commands over the training stage; their options come from
``xkd_cli.config.training``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from xkd_cli.cli.options import config_command
from xkd_cli.config.defaults import make_config
from xkd_cli.config.alignment import AlignConfig, PreferenceTrainingConfig, RewardModelConfig
from xkd_cli.config.training import DistillConfig, SFTConfig, TrainingConfig
from xkd_cli.core.ui import emit, out, paths, table
from xkd_cli.core.workspace import runs_root
from xkd_cli.core.errors import XKDError
from xkd_cli.data.tasks import TASKS
from xkd_cli.training.checkpoint.resume import find_resume
from xkd_cli.training.preflight import check_distill_models, check_models, check_task

TRAINING_STEERING = ("recipe", "resume", "processes", "runs_dir", "overwrite", "json")

SFT_EPILOG = ("Examples:\n\n  xkd sft --model tiny-t5-large --task synth-sum --role teacher\n\n"
              "  xkd sft --model t5-large --task xsum\n\n"
              "  xkd sft --model tiny-gpt-small --task xsum --data ./xsum.jsonl --max-steps 100\n\n"
              "  xkd sft --recipe recipes/sft/t5-large-xsum.yaml --max-steps 10 --json\n\n"
              "  xkd sft --model t5-xl --task xsum --role teacher --lora-r 64 --load-in-8bit --merge-lora")

DISTILL_EPILOG = ("Examples:\n\n  xkd distill --method gxkd --lam 0.001\n\n"
                  "  xkd distill --task synth-sum --method gkd --alpha 0.5 --beta 0.5\n\n"
                  "  xkd distill --task synth-mt --method seqxkd --teacher-data teacher-samples\n\n"
                  "  xkd distill --task xsum --method sxkd --teacher sft-t5-large --student t5-small --divergence fkl\n\n"
                  "  xkd distill --method gxkd --teacher-load-in-4bit --lora-r 8")


@config_command(SFTConfig, *TRAINING_STEERING, first=("model", "task", "name", "data", "recipe", "role"))
def sft(flags: dict[str, Any], *, recipe, resume, processes, runs_dir, overwrite, json) -> None:
    """Fine-tune a model on a task (the teacher and student starting points)."""
    root = runs_root(runs_dir)
    cfg = make_config(SFTConfig, flags, recipe=recipe, runs_root=root)
    _refuse_early(cfg, "sft", root, overwrite=overwrite, resume=resume)
    _launch_processes(processes, cfg)
    from xkd_cli.training.sft import run_sft  # torch and transformers load only once the options are valid

    emit(run_sft(cfg, runs_root=root, overwrite=overwrite, resume=resume), as_json=json, render=render_training)


@config_command(DistillConfig, *TRAINING_STEERING, first=("method", "task", "teacher", "student", "teacher_data",
                                                          "name", "data"))
def distill(flags: dict[str, Any], *, recipe, resume, processes, runs_dir, overwrite, json) -> None:
    """Distil a teacher into a student with one of the seven methods (X-KD and its baselines)."""
    root = runs_root(runs_dir)
    cfg = make_config(DistillConfig, flags, recipe=recipe, runs_root=root)
    _refuse_early(cfg, "distill", root, overwrite=overwrite, resume=resume)
    _launch_processes(processes, cfg)
    from xkd_cli.training.distill import run_distill  # torch and transformers load only once the options are valid

    emit(run_distill(cfg, runs_root=root, overwrite=overwrite, resume=resume), as_json=json, render=render_training)


REWARD_MODEL_EPILOG = ("Examples:\n\n  xkd reward-model --model tiny-t5-small --task synth-sum-pref --method ava-p\n\n"
                       "  xkd reward-model --model tiny-gpt-small --task synth-sum-pref --method bt --max-steps 200\n\n"
                       "  xkd reward-model --model tiny-t5-small --task synth-sum-pref --method ava-d --lam 0.01\n\n"
                       "  xkd reward rm-ava-p-tiny-t5-small --task synth-sum-pref")


@config_command(RewardModelConfig, *TRAINING_STEERING, first=("model", "method", "task", "name", "data", "recipe"))
def reward_model(flags: dict[str, Any], *, recipe, resume, processes, runs_dir, overwrite, json) -> None:
    """Train a reward model on preference pairs or demonstrations (AVA-p, AVA-d, or Bradley–Terry), then measure
    its preference accuracy on the held-out pairs."""
    root = runs_root(runs_dir)
    cfg = make_config(RewardModelConfig, flags, recipe=recipe, runs_root=root)
    _refuse_early(cfg, "reward-model", root, overwrite=overwrite, resume=resume)
    _refuse_without_pairs(cfg)
    _launch_processes(processes, cfg)
    from xkd_cli.training.reward_model import run_reward_model  # torch and transformers load only once valid

    emit(run_reward_model(cfg, runs_root=root, overwrite=overwrite, resume=resume), as_json=json,
         render=render_reward_model)


ALIGN_EPILOG = ("Examples:\n\n  xkd sft --model tiny-t5-small --task synth-sum-pref --name policy\n\n"
                "  xkd align --model policy --task synth-sum-pref --method dpo\n\n"
                "  xkd align --model policy --task synth-sum-pref --method ava-p --lam 0.01\n\n"
                "  xkd align --model tiny-gpt-small --task prefs.yaml --method ava-d --eval-every 50\n\n"
                "  xkd eval --model align-dpo-policy --task synth-sum-pref")


@config_command(AlignConfig, *TRAINING_STEERING, first=("model", "method", "task", "name", "data", "recipe"))
def align(flags: dict[str, Any], *, recipe, resume, processes, runs_dir, overwrite, json) -> None:
    """Align a policy directly from preference pairs or demonstrations: AVA-p or AVA-d on the policy itself, or DPO
    (the baseline) against the initial policy. The aligned run is a model that eval, judge and report take."""
    root = runs_root(runs_dir)
    cfg = make_config(AlignConfig, flags, recipe=recipe, runs_root=root)
    _refuse_early(cfg, "align", root, overwrite=overwrite, resume=resume)
    _refuse_without_pairs(cfg)
    _launch_processes(processes, cfg)
    from xkd_cli.training.align import run_align  # torch and transformers load only once the options are valid

    emit(run_align(cfg, runs_root=root, overwrite=overwrite, resume=resume), as_json=json, render=render_training)


def _refuse_without_pairs(cfg: PreferenceTrainingConfig) -> None:
    """A method that trains on pairs, on a built-in task without any (a task file's rows are checked when read)."""
    if cfg.preference and cfg.task in TASKS and not TASKS.get(cfg.task).preference:
        other = "ava-d, which learns from demonstrations" + ("" if cfg.COMMAND == "reward-model" else
                                                             ", or sft on the chosen responses")
        raise XKDError(f"--method {cfg.method} trains on preference pairs and task {cfg.task} has none: use a "
                       f"preference task such as synth-sum-pref, or --method {other}")


def _refuse_early(cfg: TrainingConfig, kind: str, root: Path, *, overwrite: bool, resume: bool) -> None:
    """Refusals that need no model, made before torch and transformers load (seconds): an unknown task, a bad task
    file or data row, an existing or unresumable run, a model that cannot be found, distill's missing SFT runs.
    The engine makes the same checks again; they are cheap."""
    task = check_task(cfg).name
    find_resume(root, task, cfg.run_name(), kind=kind, cfg=cfg, overwrite=overwrite, resume=resume)
    if isinstance(cfg, DistillConfig):
        check_distill_models(cfg, task, root)
    else:
        check_models([cfg.model], task, root)


def _launch_processes(processes: int | None, cfg: TrainingConfig) -> None:
    """--processes N (N > 1): run this very command again under ``accelerate launch`` with N processes and
    end with its exit code (settings that cannot run sharded are refused first, here, rather than once per
    process); inside the launch (or with N = 1) do nothing."""
    if processes is None or processes == 1:  # inside a launch --processes is gone from the command line too
        return
    from xkd_cli.core.runtime import launched  # imports torch
    from xkd_cli.training.distributed import check_shardable, relaunch  # imports torch

    if launched():
        return
    check_shardable(cfg)
    argv = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            argv.append(arg)
    raise typer.Exit(relaunch(processes, argv))


def loss_label(steps: int | None) -> str:
    """The run table's name for ``loss_mean``: what it averages."""
    return "loss (last step)" if steps == 1 else f"loss (mean of last {steps} steps)"


def render_training(result: dict) -> None:
    rows = [("steps", result["steps"]), (loss_label(result["loss_mean_steps"]), result["loss_mean"]),
            ("tokens/s", result["tokens_per_s"]), ("time (s)", result["train_seconds"])]
    if result.get("final_eval"):
        rows += [(f"eval {k}", v) for k, v in result["final_eval"].items() if k != "step"]
    out.print(table(f"{result['task']} · {result['run']}", ["", "value"], rows))
    paths(run=result["path"], model=result["model"], checkpoints=result.get("checkpoints"))


def _accuracy_cells(found: dict) -> tuple[str, str, int]:
    return f"{found['accuracy']:.3f}", f"{found['low']:.3f} – {found['high']:.3f}", found["pairs"]


def render_reward_model(result: dict) -> None:
    """The training table, then the preference accuracy on the held-out pairs (overall and per damage kind)."""
    render_training({**result, "final_eval": None})
    found = result.get("final_eval")
    if not found or "accuracy" not in found:
        return
    rows = [("all", *_accuracy_cells(found))]
    rows += [(kind, *_accuracy_cells(v)) for kind, v in found.get("per_kind", {}).items()]
    out.print(table(f"preference accuracy ({result.get('method')}, {found['split']} pairs, reward: {found['reward']})",
                    ["pairs", "accuracy", "95% interval", "n"], rows))
