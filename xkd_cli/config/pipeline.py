"""The keys of an ``xkd pipeline`` recipe, a config like every command's: built by ``build_config``, so an unknown
key is named with the closest valid one, and checked in ``__post_init__``. All are optional except ``tasks`` (or
``task``)::

    tasks: [synth-sum, synth-mt]     # or task: synth-sum
    teacher: {model: tiny-t5-large, max_steps: 600}        # sft options; run name "teacher"
    student: {model: tiny-t5-small}                        # run name "student"
    gen_teacher: {num_samples: 1}                          # gen-teacher options (api_model/api_base for black-box)
    methods: [seqkd, seqxkd, skd, sxkd, gkd, gxkd, minillm]
    distill: {max_steps: 300}                              # options shared by every method (each takes those it reads)
    method_options: {gxkd: {lam: 0.001}}                   # per-method options
    eval: {limit: 200}
    diversity: {models: [student, gkd, gxkd], temperatures: [0.1, 0.3, 0.5, 1.0], num_samples: 4, limit: 20}
    judge: {a: seqxkd, b: seqkd, judge_model: gpt-4, base_url: http://..., limit: 50}
    reward_model_methods: [bt, ava-p, ava-d]               # reward models, runs "rm-<method>" (AVA, issue 20)
    reward_model: {model: tiny-t5-small, max_steps: 300}   # reward-model options (default model: the student's)
    align_methods: [dpo, ava-p, ava-d]                     # aligned policies, runs "align-<method>", from the
    align: {max_steps: 200}                                # SFT student; align options; judge a/b may name
                                                           # "align-<method>", "rm-<method>" likewise
    align_reward_model: bt    # the reward model (its first seed's run) that scores the SFT student's and every
                              # aligned policy's answers in their evaluation (eval --reward-model)
    sweep: {param: lam, values: [0, 0.001, 0.01], methods: [gxkd]}   # or a list of such mappings; a
                              # sweep's set: {reward_position: current} fixes other options at each point
                              # (runs "<method>-<param>-<value>-reward_position-current")
    seeds: [1, 2, 3]          # every distillation once per seed, runs "<method>-seed-<s>" (seed in run.json)
    seed_students: true       # with seeds: also one SFT student per seed ("student-seed-<s>"), which the
                              # distillations of that seed start from

The sections (``teacher`` … ``judge``) hold the options of the command each step runs; that command's config
checks them when the plan is made (``xkd_cli.experiments.pipeline``), as does a :class:`Sweep` its keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xkd_cli.config.checks import check
from xkd_cli.config.core import option

SWEEP_PARAMS = ("train_fraction", "lam", "tau", "teacher", "student", "reward_position")
DEFAULT_METHODS = ("seqkd", "seqxkd", "skd", "sxkd", "gkd", "gxkd", "minillm")
# Sections of command options: their keys are spelled with underscores, as a recipe's own keys are.
SECTIONS = ("teacher", "student", "gen_teacher", "distill", "method_options", "eval", "diversity", "judge", "reward_model",
            "align")

Options = dict[str, Any]


def _underscored(mapping: Options) -> Options:
    return {str(k).replace("-", "_"): v for k, v in mapping.items()}


def names_problem(value: Any, key: str) -> str | None:
    """Why ``value`` is not a name or a list of names (one name alone stands for a list of one), or None."""
    items = [value] if isinstance(value, str) else value
    if value is None or (isinstance(items, list) and all(isinstance(item, str) for item in items)):
        return None
    return f"pipeline key '{key}' must be a name or a list of names, e.g. [synth-sum], got {value!r}"


def names(value: Any) -> list[str]:
    """A checked name or list of names as a list (see :func:`names_problem`)."""
    return [] if value is None else [value] if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class Sweep:
    """One sweep of a pipeline recipe: ``sweep: {param: lam, values: [0, 0.001]}``."""
    param: str | None = option(None, f"The option swept: {', '.join(SWEEP_PARAMS)}.", cli=False)
    values: list[Any] | None = option(None, "Its values: one run per value, method and seed.", cli=False)
    methods: list[str] | None = option(None, "The methods swept (default: every method of the recipe).", cli=False)
    set: Options | None = option(None, "Other distill options fixed at each point, e.g. {reward_position: "
                                       "current} (runs named <method>-<param>-<value>-reward_position-current).",
                                 cli=False)

    def __post_init__(self) -> None:
        if isinstance(self.set, dict):  # one spelling for the checks and the run names
            object.__setattr__(self, "set", _underscored(self.set))
        found: list[str] = []
        if self.param not in SWEEP_PARAMS:
            found.append(f"sweep param must be one of {', '.join(SWEEP_PARAMS)}, got {self.param!r}")
        if not isinstance(self.values, list) or not self.values:
            found.append("sweep needs a non-empty list 'values'")
        fixed = {} if self.set is None else self.set
        if not isinstance(fixed, dict) or self.param in fixed:
            found.append(f"sweep 'set' must map other distill options to one value each, e.g. "
                         f"set: {{reward_position: current}}; got {fixed!r}")
        elif fixed and self.param in ("teacher", "student"):
            found.append("sweep 'set' does not apply to a teacher / student size sweep: put the options in 'distill'")
        check(found)

    @property
    def fixed(self) -> Options:
        return self.set or {}


@dataclass(frozen=True)
class PipelineConfig:
    """The recipe of ``xkd pipeline`` (keys in the module's docstring)."""
    task: str | Options | None = option(None, "One task: a built-in name, a task file or an inline task mapping.",
                                        cli=False)
    tasks: list[Any] | str | Options | None = option(None, "Tasks: built-in names, task files (relative to the "
                                                           "recipe) or inline task mappings.", cli=False)
    teacher: Options | None = option(None, "sft options of the teacher (run 'teacher', model tiny-t5-large).",
                                     cli=False)
    student: Options | None = option(None, "sft options of the student (run 'student', model tiny-t5-small).",
                                     cli=False)
    gen_teacher: Options | None = option(None, "gen-teacher options (api_model / api_base: a black-box teacher).",
                                         cli=False)
    methods: list[str] | str | None = option(None, f"Methods to distil (default: {', '.join(DEFAULT_METHODS)}; [] "
                                                   "for none).", cli=False)
    distill: Options | None = option(None, "distill options shared by every method.", cli=False)
    method_options: Options | None = option(None, "Per-method distill options: {gxkd: {lam: 0.001}}.", cli=False)
    eval: Options | None = option(None, "eval options of every evaluation.", cli=False)
    diversity: Options | None = option(None, "diversity options; models may name methods or 'student'.", cli=False)
    judge: Options | None = option(None, "judge options; a and b may name methods.", cli=False)
    sweep: list[Any] | Options | None = option(None, "One sweep (a mapping) or a list of them.", cli=False)
    reward_model_methods: list[str] | str | None = option(None, "Reward models to train: bt, ava-p, ava-d (runs "
                                                                "rm-<method>).", cli=False)
    reward_model: Options | None = option(None, "reward-model options shared by every reward model (default model: "
                                                "the student's).", cli=False)
    align_methods: list[str] | str | None = option(None, "Policies to align from the SFT student: dpo, ava-p, ava-d "
                                                         "(runs align-<method>).", cli=False)
    align: Options | None = option(None, "align options shared by every aligned policy.", cli=False)
    align_reward_model: str | None = option(None, "A method of reward_model_methods: its reward model (first seed) "
                                                  "scores the answers of the SFT student and the aligned policies.",
                                            cli=False)
    seeds: list[int] | None = option(None, "Run every distillation, reward model and alignment once per seed.",
                                     cli=False)
    seed_students: bool = option(False, "With seeds: also one SFT student per seed.", cli=False)

    def __post_init__(self) -> None:
        found: list[str] = []
        for key in SECTIONS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, dict):
                found.append(f"pipeline key '{key}' must be a mapping of options, got {type(value).__name__}")
            elif value:
                object.__setattr__(self, key, _underscored(value))
        per_method = self.method_options if isinstance(self.method_options, dict) else {}
        bad = [m for m, values in per_method.items() if not isinstance(values, dict)]
        if bad:
            found.append(f"pipeline key 'method_options' must map each method to its options, e.g. "
                         f"{{{bad[0]}: {{lam: 0.001}}}}, got {bad[0]}: {self.method_options[bad[0]]!r}")
        found += [p for p in (names_problem(getattr(self, key), key) for key in
                              ("methods", "reward_model_methods", "align_methods")) if p]
        if not all(isinstance(item, dict) for item in self.sweep_items):
            found.append(f"pipeline key 'sweep' must be a mapping or a list of mappings, got {self.sweep!r}")
        seeds = self.seeds
        if seeds is not None and (not isinstance(seeds, list) or not seeds or
                                  not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
            found.append(f"pipeline key 'seeds' must be a list of integers, e.g. [1, 2, 3], got {seeds!r}")
        elif seeds is not None and len(set(seeds)) != len(seeds):
            found.append(f"pipeline key 'seeds' lists a seed twice: {seeds}")
        if self.align_reward_model is not None and self.align_reward_model not in names(self.reward_model_methods):
            found.append(f"pipeline key 'align_reward_model' must name one of reward_model_methods "
                         f"({', '.join(names(self.reward_model_methods)) or 'none given'}), got {self.align_reward_model!r}")
        if self.seed_students and not seeds:
            found.append("pipeline key 'seed_students' needs 'seeds', e.g. seeds: [1, 2, 3]")
        check(found)

    def section(self, key: str) -> Options:
        """A section's options (``{}`` when the recipe has none)."""
        return dict(getattr(self, key) or {})

    @property
    def method_names(self) -> list[str]:
        return list(DEFAULT_METHODS) if self.methods is None else names(self.methods)

    @property
    def reward_model_names(self) -> list[str]:
        return names(self.reward_model_methods)

    @property
    def align_names(self) -> list[str]:
        return names(self.align_methods)

    @property
    def task_items(self) -> list[Any]:
        value = self.tasks or self.task
        return value if isinstance(value, list) else [] if value is None else [value]

    @property
    def sweep_items(self) -> list[Options]:
        return [] if self.sweep is None else self.sweep if isinstance(self.sweep, list) else [self.sweep]

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds or [])
