"""Per-task defaults: the paper's Appendix C for the real tasks, CPU-sized ones for the bundled tasks, and
:func:`make_config`, the one place a command's config is merged: defaults → YAML recipe → flags.

Each config says which presets it takes (its ``TASK_DEFAULTS``, a :class:`TaskDefaults` from here), so this
module knows no config class. The same numbers ship as recipes under ``recipes/`` so they can be read and copied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from xkd_cli.config.core import build_config, load_recipe, respell
from xkd_cli.core.workspace import default_task

C = TypeVar("C")

# Table 4 (T5-small/base SFT) and Table 7 (distillation): steps, batch, LR, warmup, input/output length.
PAPER_SMALL = {
    "xsum": dict(max_steps=20_000, batch_size=32, lr=2e-3, warmup_steps=2_000, max_input_len=1024, max_output_len=64),
    "wmt": dict(max_steps=100_000, batch_size=32, lr=2e-3, warmup_steps=2_000, max_input_len=64, max_output_len=64),
    "gsm8k": dict(max_steps=10_000, batch_size=32, lr=3e-3, warmup_steps=2_000, max_input_len=512, max_output_len=64),
}
# Table 5 (T5-large SFT): 0.4x the steps, 0.05x / 0.05x / 0.1x the LR.
PAPER_LARGE = {
    "xsum": dict(PAPER_SMALL["xsum"], max_steps=8_000, lr=1e-4),
    "wmt": dict(PAPER_SMALL["wmt"], max_steps=40_000, lr=1e-4),
    "gsm8k": dict(PAPER_SMALL["gsm8k"], max_steps=10_000, lr=3e-4),
}
# Table 6 (T5-xl SFT, QLoRA in the paper): batch 4, no warm-up.
PAPER_XL = {
    "xsum": dict(PAPER_SMALL["xsum"], max_steps=1_000, batch_size=4, lr=5e-5, warmup_steps=0),
    "wmt": dict(PAPER_SMALL["wmt"], max_steps=5_000, batch_size=4, lr=5e-5, warmup_steps=0),
    "gsm8k": dict(PAPER_SMALL["gsm8k"], max_steps=1_000, batch_size=4, lr=1e-4, warmup_steps=0),
}
# Bundled tasks: a few CPU minutes for the tiny models.
BUNDLED = {
    "synth-sum": dict(max_steps=600, batch_size=16, lr=1e-3, warmup_steps=60, max_input_len=160, max_output_len=48),
    "synth-mt": dict(max_steps=600, batch_size=16, lr=1e-3, warmup_steps=60, max_input_len=48, max_output_len=64),
    "synth-gsm": dict(max_steps=600, batch_size=16, lr=1e-3, warmup_steps=60, max_input_len=64, max_output_len=80),
}
BUNDLED["synth-sum-pref"] = BUNDLED["synth-sum"]  # synth-sum's prompts, its summaries the chosen responses


# Larger models on bundled tasks, where the shared default does not suit them: as the paper lowers T5-large's LR
# (Table 5), tiny-t5-large on synth-sum learns faster at half the LR (ROUGE-2 after 600 steps: 72.9 at 5e-4,
# 71.9 at 3e-4, 68.1 at 1e-3, 44.9 at 3e-3 after 300), while tiny-t5-small is best at 1e-3 (67.2; 55.9 at 5e-4).
BUNDLED_LARGE = {"synth-sum": dict(BUNDLED["synth-sum"], lr=5e-4)}
BUNDLED_LARGE["synth-sum-pref"] = BUNDLED_LARGE["synth-sum"]


def model_scale(model: str | None) -> str:
    """'large' / 'xl' / 'small' from a model reference, for picking the paper's table."""
    name = (model or "").lower()
    if "xl" in name.split("/")[-1].replace("xxl", "xl"):
        return "xl"
    return "large" if "large" in name else "small"


def sft_defaults(task: str, model: str | None) -> dict[str, Any]:
    if task in BUNDLED:
        large = model_scale(model) == "large" and task in BUNDLED_LARGE
        return dict(BUNDLED_LARGE[task] if large else BUNDLED[task])
    table = {"small": PAPER_SMALL, "large": PAPER_LARGE, "xl": PAPER_XL}[model_scale(model)]
    return dict(table.get(task, PAPER_SMALL.get(task, {})))


LENGTHS = ("max_input_len", "max_output_len")


def length_defaults(task: str, model: str | None = None) -> dict[str, Any]:
    """The task's prompt and output lengths, for the commands that only generate."""
    lengths = BUNDLED.get(task) or PAPER_SMALL.get(task) or {}
    return {k: lengths[k] for k in LENGTHS if lengths.get(k) is not None}


# Table 7 (distillation to T5-small/base): as Table 4 but GSM8K's LR is 0.001. Table 8 (to T5-large) = Table 5.
PAPER_DISTILL = {**PAPER_SMALL, "gsm8k": dict(PAPER_SMALL["gsm8k"], lr=1e-3)}
# Bundled tasks: distillation continues from the SFT'd student, so it starts from a good model.
BUNDLED_DISTILL = {task: dict(values, max_steps=200, lr=1e-3, warmup_steps=20) for task, values in BUNDLED.items()}


def distill_defaults(task: str, student: str | None) -> dict[str, Any]:
    if task in BUNDLED_DISTILL:
        return dict(BUNDLED_DISTILL[task])
    if model_scale(student) == "large":
        return dict(PAPER_LARGE.get(task, {}))
    return dict(PAPER_DISTILL.get(task, {}))


def task_file_lengths(task: str) -> dict[str, Any]:
    """A task file's own max_input_len / max_output_len, as defaults (the file is checked in full later)."""
    path = Path(task).expanduser()
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return {}
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}  # loading the task reports what is wrong with the file
    if not isinstance(spec, dict):
        return {}
    found = {k: spec.get(k) for k in LENGTHS}
    return {k: v for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)}


@dataclass(frozen=True)
class TaskDefaults:
    """How a config gets its per-task defaults (its ``TASK_DEFAULTS``): ``pick(task, model)`` gives the preset,
    ``model`` being the value of the option this names (sft's ``model``, distill's ``student``: the model whose
    size picks the paper's table); ``options`` are the options a preset sets, shown as "default: per task". A task
    file's own lengths come first. Keys are spelled as the presets spell them (``max_output_len``); the config
    takes them in its own spelling."""
    pick: Callable[[str, str | None], dict[str, Any]]
    options: tuple[str, ...]
    model: str | None = None

    def __call__(self, task: str, values: dict[str, Any]) -> dict[str, Any]:
        return task_file_lengths(task) or self.pick(task, values.get(self.model) if self.model else None)


SFT_DEFAULTS = TaskDefaults(sft_defaults, tuple(BUNDLED["synth-sum"]), model="model")
DISTILL_DEFAULTS = TaskDefaults(distill_defaults, tuple(BUNDLED["synth-sum"]), model="student")
LENGTH_DEFAULTS = TaskDefaults(length_defaults, LENGTHS)


def task_defaults(cls: type, task: str, values: dict[str, Any]) -> dict[str, Any]:
    """The per-task defaults of a command's config; ``values`` are the options given so far (recipe and flags),
    which pick the paper's table by model size."""
    preset: TaskDefaults | None = getattr(cls, "TASK_DEFAULTS", None)
    return preset(task, values) if preset else {}


def per_task_options(cls: type) -> set[str]:
    """The options of ``cls`` whose default depends on the task (or the model), for the command-line help."""
    preset: TaskDefaults | None = getattr(cls, "TASK_DEFAULTS", None)
    fields = {f.name for f in dataclasses.fields(cls)}
    return set(respell(dict.fromkeys(preset.options if preset else ()), fields, f"{cls.__name__}.TASK_DEFAULTS"))


def make_config(cls: type[C], flags: dict[str, Any], *, recipe: str | Path | None = None,
                runs_root: Path | None = None) -> C:
    """A command's config: per-task defaults, then the recipe, then the flags given (``None``: not given).
    Commands that may (``cls.TASK_FROM_RUNS``) take the task from the runs directory when neither names it."""
    recipe_values = load_recipe(recipe)  # read once: its task and model pick the defaults, then it is merged
    given = {**recipe_values, **{k: v for k, v in flags.items() if v is not None}}
    task = given.get("task")
    if not task and getattr(cls, "TASK_FROM_RUNS", False) and runs_root is not None:
        task = default_task(runs_root)
    defaults = task_defaults(cls, task, given) if task else {}
    return build_config(cls, defaults=defaults, recipe=recipe_values,
                        flags={**flags, "task": task or flags.get("task")})


def reward_model_defaults(task: str, model: str | None) -> dict[str, Any]:
    """sft's presets; on a bundled task a reward model needs fewer steps than a generator (it learns one
    comparison, not the text): 300, with 30 warm-up."""
    found = sft_defaults(task, model)
    if task in BUNDLED:
        found.update(max_steps=300, warmup_steps=30)
    return found


REWARD_MODEL_DEFAULTS = TaskDefaults(reward_model_defaults, tuple(BUNDLED["synth-sum"]), model="model")


def align_defaults(task: str, model: str | None) -> dict[str, Any]:
    """sft's presets; on a bundled task alignment continues from an SFT'd policy, as distillation does from the SFT'd
    student: 200 steps with 20 of warm-up, at a tenth of SFT's learning rate (measured on synth-sum-pref, README
    "Alignment")."""
    found = sft_defaults(task, model)
    if task in BUNDLED:
        found.update(max_steps=200, warmup_steps=20, lr=found["lr"] / 10)
    return found


ALIGN_DEFAULTS = TaskDefaults(align_defaults, tuple(BUNDLED["synth-sum"]), model="model")
