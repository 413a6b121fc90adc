"""A whole experiment from one YAML recipe: SFT teacher and student → gen-teacher → distill each method
→ reward models → aligned policies → eval → diversity → judge → report, with optional one-parameter sweeps.

Each step is an ordinary command's config run through the same engine function the command uses.
A step whose run already exists, completed, with the same config is skipped, so an interrupted
pipeline resumes; a run of the same name made with another config is refused (the keys are named)
unless ``--overwrite``.

The recipe's keys are a config, :class:`xkd_cli.config.pipeline.PipelineConfig` (its docstring lists them).

With ``seeds``, diversity and judge steps that name a method or the student use its first seed's run, and
every sweep point runs once per seed too ("<method>-<param>-<value>-seed-<s>"; teacher / student size
sweeps excepted: one SFT'd model per size); ``xkd report`` shows each seeded method as mean ± sd over its
seeds and the X-variants' paired differences (default runs and each sweep point) with intervals.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from xkd_cli.config.alignment import AlignConfig, PreferenceTrainingConfig, RewardModelConfig, inapplicable_method_options
from xkd_cli.config.checks import check
from xkd_cli.config.core import Recipe, build_config, known_values, load_recipe, to_dict
from xkd_cli.config.defaults import make_config
from xkd_cli.config.evaluation import DiversityConfig, EvalConfig, JudgeConfig
from xkd_cli.config.generation import GenTeacherConfig
from xkd_cli.config.pipeline import PipelineConfig, Sweep, names, names_problem
from xkd_cli.config.training import DistillConfig, SFTConfig, inapplicable_options
from xkd_cli.core.errors import XKDError
from xkd_cli.data.taskfile import get_task, is_task_path, task_from_mapping
from xkd_cli.models.references import resolve_model
from xkd_cli.core.ui import console
from xkd_cli.core.workspace import RUN_RECORD, open_run, read_json, read_record, run_path
from xkd_cli.config.methods import METHOD_OPTIONS, METHODS, methods_reading


@dataclass
class Step:
    kind: str                      # sft | gen-teacher | distill | reward-model | align | eval | diversity | judge
    task: str
    name: str                      # the run it writes (eval: the run it evaluates)
    config: Any                    # the command's frozen config
    run: Callable[..., dict] = field(repr=False)
    note: str = ""
    record: dict = field(default_factory=dict)  # written into the run's run.json (e.g. sweep membership)

    def describe(self) -> str:
        return f"{self.kind:<11} {self.task}/{self.name}" + (f"  ({self.note})" if self.note else "")


def _tasks(items: list[Any], recipe_path: Path, runs_root: Path) -> dict[str, str]:
    """The recipe's tasks as {what --task says: the task's name}: built-in names, task files (relative to the
    recipe) and inline mappings, which are written to ``<runs>/.tasks/<name>.yaml`` for the commands to read."""
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict):
            spec = dict(item)
            base = recipe_path.parent
            if isinstance(spec.get("data"), str) and not Path(spec["data"]).expanduser().is_absolute() \
                    and (base / spec["data"]).exists():
                spec["data"] = str((base / spec["data"]).resolve())
            task = task_from_mapping(spec, where=f"{recipe_path}, inline task", base=base)
            path = runs_root / ".tasks" / f"{task.name}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
            item = str(path)
        elif not isinstance(item, str):
            raise XKDError(f"pipeline key 'tasks' must be a name or a list of names (built-in tasks, task files) "
                           f"or task mappings, got {item!r}.")
        elif is_task_path(item) and not Path(item).expanduser().is_absolute() and (recipe_path.parent / item).is_file():
            item = str(recipe_path.parent / item)
        found[item] = get_task(item).name
    return found


def plan(recipe_path: str | Path, runs_root: Path) -> list[Step]:
    """Validate the recipe and list the steps in order, building every config (no compute)."""
    recipe = build_config(PipelineConfig, recipe=load_recipe(
        recipe_path, given_as="xkd pipeline (its RECIPE argument; the bundled ones are in recipes/pipeline/)"))

    def section(name: str, values: dict) -> Recipe:
        return Recipe(values, where=f"recipe {recipe_path}, section '{name}'")

    def options(cls: type, values: dict, name: str) -> dict:
        """A section's options for the command config ``cls``, in its spelling; an unknown one is named with the
        section, as a recipe's unknown key is."""
        return known_values(section(name, values), list(cls.__dataclass_fields__))

    tasks = _tasks(recipe.task_items, Path(recipe_path), runs_root)
    if not tasks:
        raise XKDError(f"pipeline recipe {recipe_path} names no task: add 'tasks: [synth-sum]'.")
    methods = recipe.method_names
    for method in methods:
        METHODS.get(method)
    method_options = recipe.section("method_options")
    for method, values in method_options.items():
        if method not in methods:
            raise XKDError(f"method_options names '{method}', which is not in 'methods' ({', '.join(methods)}).")
        method_options[method] = options(DistillConfig, values, f"method_options/{method}")
    sweeps = [build_config(Sweep, recipe=section("sweep", item)) for item in recipe.sweep_items]
    fixed_options = [options(DistillConfig, sweep.fixed, "sweep") for sweep in sweeps]
    sft_options = {role: options(SFTConfig, recipe.section(role), role) for role in ("teacher", "student")}
    gen_options = options(GenTeacherConfig, recipe.section("gen_teacher"), "gen_teacher")
    distill_options = options(DistillConfig, recipe.section("distill"), "distill")
    eval_options = options(EvalConfig, recipe.section("eval"), "eval")
    extra_options = {"diversity": options(DiversityConfig, recipe.section("diversity"), "diversity"),
                     "judge": options(JudgeConfig, recipe.section("judge"), "judge")}
    seeds, seed_students = recipe.seed_list, recipe.seed_students
    preference_options = {"reward_model": options(RewardModelConfig, recipe.section("reward_model"), "reward_model"),
                          "align": options(AlignConfig, recipe.section("align"), "align")}
    preference_methods = {"reward_model": recipe.reward_model_names, "align": recipe.align_names}
    for key, cls in (("reward_model", RewardModelConfig), ("align", AlignConfig)):
        _check_shared(cls, preference_options[key], preference_methods[key], key)
    from xkd_cli.evaluation.evaluate import run_eval  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.align import run_align  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.distill import run_distill  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.reward_model import run_reward_model  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.gen_teacher import run_gen_teacher  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.sft import run_sft  # torch loads only once the recipe's keys are valid

    steps: list[Step] = []
    for task, task_name in tasks.items():  # task: what --task would say (a built-in name or a task file)
        roles, sft_cfgs = {}, {}
        black_box = "api_model" in gen_options or "api_base" in gen_options
        needs_local_teacher = bool(methods) and (not black_box or any(METHODS.get(m).needs_teacher_model
                                                                       for m in methods))
        students: dict[int, str] = {}  # seed -> its SFT student run (seed_students)
        for role in ("teacher", "student") if needs_local_teacher else ("student",):
            given = sft_options[role]
            model = given.get("model") or ("tiny-t5-large" if role == "teacher" else "tiny-t5-small")
            per_seed = role == "student" and seed_students
            for seed in seeds if per_seed else [None]:
                extra = {} if seed is None else {"seed": seed, "name": f"{given.get('name', role)}-seed-{seed}"}
                cfg = make_config(SFTConfig, {**given, "task": task, "model": model, "role": role,
                                              "name": given.get("name", role), **extra})
                resolve_model(cfg.model, task=task_name, runs_dir=runs_root)  # an unknown model fails the plan, not step N
                if role not in roles:
                    roles[role], sft_cfgs[role] = cfg.run_name(), cfg
                if seed is not None:
                    students[seed] = cfg.run_name()
                steps.append(Step("sft", task_name, cfg.run_name(), cfg, run_sft, note=model + _seed_note(seed),
                                  record={} if seed is None else {"seed": seed, "seed_group": role}))
        for sweep in sweeps:
            if sweep.param not in ("teacher", "student"):
                continue
            for model in sweep.values:  # each size is SFT'd like the default pair
                role = sweep.param
                cfg = make_config(SFTConfig, {**sft_options[role], "task": task, "model": model, "role": role,
                                              "name": f"{role}-{model}"})
                resolve_model(cfg.model, task=task_name, runs_dir=runs_root)
                steps.append(Step("sft", task_name, cfg.run_name(), cfg, run_sft, note=f"{role} size sweep"))

        gen_name = None
        if any(METHODS.get(m).source == "teacher-samples" for m in methods):
            given = {**gen_options, "task": task, **({} if black_box else {"teacher": roles["teacher"]})}
            if given.get("max_input_len") is None:  # prompts cut as the student's training cuts them
                given["max_input_len"] = sft_cfgs["student"].max_input_len
            cfg = make_config(GenTeacherConfig, given)
            steps.append(Step("gen-teacher", task_name, cfg.name, cfg, run_gen_teacher,
                              note="black-box" if black_box else "white-box"))
            gen_name = cfg.name

        unread = [key for key in distill_options if key in METHOD_OPTIONS and all(
            key in inapplicable_options(METHODS.get(m), {**distill_options, **method_options.get(m, {})})
            for m in methods)]
        if unread:
            readers = ", ".join(methods_reading(unread[0]))
            raise XKDError(f"pipeline section 'distill' sets {unread[0]}, which none of its methods "
                           f"({', '.join(methods)}) reads: it applies to {readers}; drop it or add one of those methods.")
        evaluated = list(dict.fromkeys([*roles.values(), *students.values()]))

        def add_distill(method: str, name: str, extra: dict, note: str = "", record: dict | None = None) -> None:
            own = {**method_options.get(method, {}), **extra}
            given = {"task": task, "method": method, "name": name, "teacher": roles.get("teacher"),
                     "student": roles["student"], **distill_options, **own}
            for key in inapplicable_options(METHODS.get(method), given):  # the shared section's, where ignored
                if key not in own:
                    del given[key]
            if METHODS.get(method).source == "teacher-samples":
                given.setdefault("teacher_data", gen_name)
            cfg = make_config(DistillConfig, given)
            steps.append(Step("distill", task_name, name, cfg, run_distill, note=note or METHODS.get(method).paper_name,
                              record=record or {}))
            evaluated.append(name)

        for method in methods:
            if not seeds:
                add_distill(method, method, {})
                continue
            for seed in seeds:
                extra = {"seed": seed, **({"student": students[seed]} if seed in students else {})}
                add_distill(method, f"{method}-seed-{seed}", extra, note=METHODS.get(method).paper_name + _seed_note(seed),
                            record={"seed": seed, "seed_group": method})
            roles.setdefault(method, f"{method}-seed-{seeds[0]}")  # what diversity / judge mean by the method
        for sweep, fixed in zip(sweeps, fixed_options):
            param = sweep.param
            for method in sweep.methods or methods:
                if method not in methods:
                    raise XKDError(f"sweep method '{method}' is not in 'methods' ({', '.join(methods)}).")
                for value in sweep.values:
                    if param in ("teacher", "student"):
                        extra = {param: f"{param}-{value}"}
                    else:
                        extra = {**fixed, param: value}
                    name = f"{method}-{param}-{value}" + "".join(f"-{k}-{v}" for k, v in fixed.items())
                    record = {"sweep": {"param": param, "value": value, "method": method, **({"set": fixed} if fixed else {})}}
                    if not seeds or param in ("teacher", "student"):  # a size sweep uses the one SFT'd model per size
                        add_distill(method, name, extra, note=f"sweep {param}={value}", record=record)
                        continue
                    for seed in seeds:
                        add_distill(method, f"{name}-seed-{seed}",
                                    {**extra, "seed": seed, **({"student": students[seed]} if seed in students else {})},
                                    note=f"sweep {param}={value}{_seed_note(seed)}",
                                    record={**record, "seed": seed, "seed_group": name})

        def add_preference(key: str, cls: type[PreferenceTrainingConfig], run: Callable[..., dict], prefix: str,
                           model: Callable[[int | None], str]) -> None:
            for method in preference_methods[key]:
                for seed in seeds or [None]:
                    name = f"{prefix}-{method}" + ("" if seed is None else f"-seed-{seed}")
                    given = _own_options(cls, method, preference_options[key])
                    cfg = make_config(cls, {"model": model(seed), **given, "task": task, "method": method,
                                            "name": name, **({} if seed is None else {"seed": seed})})
                    steps.append(Step(cls.COMMAND, task_name, name, cfg, run, note=method + _seed_note(seed),
                                      record={} if seed is None else {"seed": seed, "seed_group": f"{prefix}-{method}"}))
                    roles.setdefault(f"{prefix}-{method}", name)  # what judge means by it: its first seed's run
                    if key == "align":
                        evaluated.append(name)
                        aligned.append(name)

        student_model = sft_options["student"].get("model") or "tiny-t5-small"
        aligned: list[str] = []
        add_preference("reward_model", RewardModelConfig, run_reward_model, "rm", lambda seed: student_model)
        add_preference("align", AlignConfig, run_align, "align", lambda seed: students.get(seed, roles["student"]))

        scored = {roles["student"], *students.values(), *aligned} if recipe.align_reward_model else set()
        for name in evaluated:
            scorer = {"reward_model": roles[f"rm-{recipe.align_reward_model}"]} if name in scored else {}
            cfg = make_config(EvalConfig, {**eval_options, "task": task, "model": name, **scorer})
            steps.append(Step("eval", task_name, name, cfg, run_eval))

        for kind, given in extra_options.items():
            if given:
                steps.append(_extra_step(kind, task, task_name, dict(given), roles))
    return steps


def _check_shared(cls: type[PreferenceTrainingConfig], shared: dict, methods: list[str], key: str) -> None:
    """A shared section's method-specific option that none of the recipe's methods of that command reads is refused,
    as the distill section's is; each method's own options are checked when its config is built."""
    for method in methods:
        if method not in cls.METHODS:
            raise XKDError(f"pipeline key '{key}_methods' names {method!r}: use {', '.join(cls.METHODS)}.")
    if not methods:
        return
    unread = [name for name in shared if all(name in inapplicable_method_options(cls, m, shared) for m in methods)]
    if unread:
        readers = [m for m, reads in cls.METHODS.items() if unread[0] in reads]
        raise XKDError(f"pipeline section '{key}' sets {unread[0]}, which none of its methods ({', '.join(methods)}) "
                       f"reads: it applies to {', '.join(readers)}; drop it or add one of those methods.")


def _own_options(cls: type[PreferenceTrainingConfig], method: str, shared: dict) -> dict:
    """A shared section's options less those ``method`` does not read."""
    unread = inapplicable_method_options(cls, method, shared)
    return {k: v for k, v in shared.items() if k not in unread}


def _seed_note(seed: int | None) -> str:
    return "" if seed is None else f", seed {seed}"


def _extra_step(kind: str, task: str, task_name: str, options: dict, roles: dict) -> Step:
    """Diversity and judge steps, built by their own modules."""
    if kind == "diversity":
        from xkd_cli.evaluation.diversity import run_diversity  # torch loads only once a recipe is planned

        given = options.pop("models", None)
        check([p for p in (names_problem(given, "diversity.models"),) if p])
        models = [roles.get(m, m) for m in names(given) or [roles["student"]]]
        cfg = make_config(DiversityConfig, {**options, "task": task, "models": models})
        return Step("diversity", task_name, cfg.name, cfg, run_diversity, note=", ".join(models))
    cfg = make_config(JudgeConfig, {**options, "task": task, "a": roles.get(options.get("a"), options.get("a")),
                                    "b": roles.get(options.get("b"), options.get("b"))})
    from xkd_cli.evaluation.judge import run_judge  # loads the API client: only once a judge step is planned

    return Step("judge", task_name, cfg.name or f"judge-{cfg.a}-vs-{cfg.b}", cfg, run_judge, note=f"{cfg.a} vs {cfg.b}")


def _state(step: Step, runs_root: Path) -> tuple[str, list[str]]:
    """'new', 'done' (same config, completed), 'resume' (incomplete, with a checkpoint this config may
    continue), 'stale' (incomplete otherwise) or 'changed' (other config: keys)."""
    if step.kind in ("eval", "diversity", "judge"):
        return "always", []  # resumable on their own: finished items are skipped inside
    path = run_path(runs_root, step.task, step.name)
    if not (path / RUN_RECORD).is_file():
        return "new", []
    record = read_record(path / RUN_RECORD)
    if record.get("status") != "completed":
        from xkd_cli.training.checkpoint.resume import resumable_checkpoint  # torch: only for an unfinished run

        resumable = step.kind in ("sft", "distill", "reward-model", "align") and \
            resumable_checkpoint(path, step.config) is not None
        return ("resume" if resumable else "stale"), []
    previous = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    wanted = to_dict(step.config)
    # commands may record more keys; checkpoint bookkeeping never changes a finished run's model
    changed = sorted(k for k in wanted if previous.get(k) != wanted[k] and k not in ("save_every", "keep_last"))
    return ("changed", changed) if changed else ("done", [])


def run_pipeline(recipe_path: str | Path, *, runs_root: Path, dry_run: bool = False,
                 overwrite: bool = False) -> dict[str, Any]:
    steps = plan(recipe_path, runs_root)
    states = [_state(step, runs_root) for step in steps]
    conflicts = [(s, keys) for s, (state, keys) in zip(steps, states) if state == "changed"]
    if conflicts and not overwrite and not dry_run:
        step, keys = conflicts[0]
        raise XKDError(f"run {step.task}/{step.name} exists with another config ({', '.join(keys)}). "
                       "Pass --overwrite to redo it, or change its name.")
    listed = [{"step": i + 1, "kind": s.kind, "task": s.task, "name": s.name, "note": s.note,
               "state": state, **({"changed": keys} if keys else {})}
              for i, (s, (state, keys)) in enumerate(zip(steps, states))]
    if dry_run:
        return {"recipe": str(recipe_path), "dry_run": True, "steps": listed}
    started = time.time()
    results = []
    total = len(steps) + 1  # the report is the last step
    for i, (step, (state, _)) in enumerate(zip(steps, states), start=1):
        if state == "done":
            console.print(f"[dim]{i}/{total} skip {step.describe()} (done, same config)[/]")
            results.append({**listed[i - 1], "skipped": True})
            continue
        console.print(f"[bold]{i}/{total}[/] {step.describe()}")
        if step.kind == "judge" and not _judge_configured(step.config):
            console.print(f"[yellow]judge skipped: ${step.config.api_key_env or 'OPENAI_API_KEY'} holds no API key. "
                          "To judge, set it (any value for a local server that needs none) and give the recipe's "
                          "judge section a base_url if the judge is not OpenAI's.[/]")
            results.append({**listed[i - 1], "skipped": True, "reason": "no judge endpoint configured"})
            continue
        t0 = time.time()
        result = step.run(step.config, runs_root=runs_root, **({"overwrite": True} if state in ("stale", "changed")
                                                                else {}))
        if step.record:
            open_run(runs_root, step.task, step.name).update_record(**step.record)
        results.append({**listed[i - 1], "seconds": round(time.time() - t0, 1), "result": result})
    console.print(f"[bold]{total}/{total}[/] report")
    from xkd_cli.experiments.report.build import build_report  # loads numpy: not before the plan is checked

    report = build_report(runs_root)
    return {"recipe": str(recipe_path), "steps": results, "seconds": round(time.time() - started, 1),
            "report": report}


def _judge_configured(cfg: Any) -> bool:
    return bool(os.environ.get(getattr(cfg, "api_key_env", "OPENAI_API_KEY") or "OPENAI_API_KEY"))
