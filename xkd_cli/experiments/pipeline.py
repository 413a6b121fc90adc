"""A whole experiment from one YAML recipe: SFT teacher and student → gen-teacher → distill each method
→ eval → diversity → judge → report, with optional one-parameter sweeps.

Each step is an ordinary command's config run through the same engine function the command uses.
A step whose run already exists, completed, with the same config is skipped, so an interrupted
pipeline resumes; a run of the same name made with another config is refused (the keys are named)
unless ``--overwrite``.

Recipe keys (all optional except ``tasks`` or ``task``)::

    tasks: [synth-sum, synth-mt]     # or task: synth-sum
    teacher: {model: tiny-t5-large, max_steps: 600}        # sft options; run name "teacher"
    student: {model: tiny-t5-small}                        # run name "student"
    gen_teacher: {num_samples: 1}                          # gen-teacher options (api_model/api_base for black-box)
    methods: [seqkd, seqxkd, skd, sxkd, gkd, gxkd, minillm]
    distill: {max_steps: 300}                              # options shared by every method (each method takes those it reads)
    method_options: {gxkd: {lam: 0.001}}                   # per-method options
    eval: {limit: 200}
    diversity: {models: [student, gkd, gxkd], temperatures: [0.1, 0.3, 0.5, 1.0], num_samples: 4, limit: 20}
    judge: {a: seqxkd, b: seqkd, judge_model: gpt-4, base_url: http://..., limit: 50}
    sweep: {param: lam, values: [0, 0.001, 0.01], methods: [gxkd]}   # or a list of such mappings; a
                              # sweep's set: {reward_position: current} fixes other options at each point
                              # (runs "<method>-<param>-<value>-reward_position-current")
    seeds: [1, 2, 3]          # every distillation once per seed, runs "<method>-seed-<s>" (seed in run.json)
    seed_students: true       # with seeds: also one SFT student per seed ("student-seed-<s>"), which the
                              # distillations of that seed start from

With ``seeds``, diversity and judge steps that name a method or the student use its first seed's run, and
every sweep point runs once per seed too ("<method>-<param>-<value>-seed-<s>"; teacher / student size
sweeps excepted: one SFT'd model per size); ``xkd report`` shows each seeded method as mean ± sd over its
seeds and the X-variants' paired differences (default runs and each sweep point) with intervals.
"""

from __future__ import annotations

import difflib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from xkd_cli.config.core import load_recipe, to_dict
from xkd_cli.config.defaults import make_config
from xkd_cli.config.evaluation import DiversityConfig, EvalConfig, JudgeConfig
from xkd_cli.config.generation import GenTeacherConfig
from xkd_cli.config.training import DistillConfig, SFTConfig, inapplicable_options
from xkd_cli.core.errors import XKDError
from xkd_cli.data.taskfile import get_task, is_task_path, task_from_mapping
from xkd_cli.core.ui import console
from xkd_cli.core.workspace import RUN_RECORD, open_run, read_json, read_record, run_path
from xkd_cli.config.methods import METHOD_OPTIONS, METHODS, methods_reading

TOP_KEYS = ("task", "tasks", "teacher", "student", "gen_teacher", "methods", "distill", "method_options", "eval",
            "diversity", "judge", "sweep", "seeds", "seed_students")
SWEEP_PARAMS = ("train_fraction", "lam", "tau", "teacher", "student", "reward_position")
DEFAULT_METHODS = ["seqkd", "seqxkd", "skd", "sxkd", "gkd", "gxkd", "minillm"]


@dataclass
class Step:
    kind: str                      # sft | gen-teacher | distill | eval | diversity | judge
    task: str
    name: str                      # the run it writes (eval: the run it evaluates)
    config: Any                    # the command's frozen config
    run: Callable[..., dict] = field(repr=False)
    note: str = ""
    record: dict = field(default_factory=dict)  # written into the run's run.json (e.g. sweep membership)

    def describe(self) -> str:
        return f"{self.kind:<11} {self.task}/{self.name}" + (f"  ({self.note})" if self.note else "")


def _mapping(recipe: dict, key: str) -> dict:
    value = recipe.get(key) or {}
    if not isinstance(value, dict):
        raise XKDError(f"pipeline key '{key}' must be a mapping of options, got {type(value).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in value.items()}


def _names(value: Any, key: str) -> list[str]:
    """A list of names from the recipe; one name alone is a list of one (not a string of letters)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise XKDError(f"pipeline key '{key}' must be a name or a list of names, e.g. [synth-sum], got {value!r}.")
    return list(items)


def _tasks(value: Any, recipe_path: Path, runs_root: Path) -> dict[str, str]:
    """The recipe's tasks as {what --task says: the task's name}: built-in names, task files (relative to the
    recipe) and inline mappings, which are written to ``<runs>/.tasks/<name>.yaml`` for the commands to read."""
    items = value if isinstance(value, list) else [] if value is None else [value]
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


def _config(cls, options: dict, where: str):
    """A command's config from recipe options, merged as the command merges its flags (the task's defaults,
    then the options); an unknown option is named with its recipe section."""
    fields = {f for f in cls.__dataclass_fields__}
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise XKDError(f"unknown option '{key}' in pipeline section '{where}'.{hint}")
    return make_config(cls, options)


def plan(recipe_path: str | Path, runs_root: Path) -> list[Step]:
    """Validate the recipe and list the steps in order, building every config (no compute)."""
    recipe = load_recipe(recipe_path, given_as="xkd pipeline (its RECIPE argument; the bundled ones are in "
                                                   "recipes/pipeline/)")
    unknown = [k for k in recipe if k not in TOP_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], TOP_KEYS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise XKDError(f"unknown key '{unknown[0]}' in pipeline recipe {recipe_path}.{hint} "
                       f"Valid keys: {', '.join(TOP_KEYS)}.")
    tasks = _tasks(recipe.get("tasks") or recipe.get("task"), Path(recipe_path), runs_root)
    if not tasks:
        raise XKDError(f"pipeline recipe {recipe_path} names no task: add 'tasks: [synth-sum]'.")
    methods = _names(recipe.get("methods"), "methods") or list(DEFAULT_METHODS)
    for method in methods:
        METHODS.get(method)
    method_options = _mapping(recipe, "method_options")
    for method in method_options:
        if method not in methods:
            raise XKDError(f"method_options names '{method}', which is not in 'methods' ({', '.join(methods)}).")
    sweeps = _sweeps(recipe)
    for sweep in sweeps:
        if sweep.get("param") not in SWEEP_PARAMS:
            raise XKDError(f"sweep param must be one of {', '.join(SWEEP_PARAMS)}, got {sweep.get('param')!r}.")
        if not isinstance(sweep.get("values"), list) or not sweep["values"]:
            raise XKDError("sweep needs a non-empty list 'values'.")
        unknown_sweep = set(sweep) - {"param", "values", "methods", "set"}
        if unknown_sweep:
            raise XKDError(f"unknown key '{sorted(unknown_sweep)[0]}' in pipeline section 'sweep' "
                           "(valid: param, values, methods, set).")
        fixed = sweep.get("set", {})
        if not isinstance(fixed, dict) or sweep["param"] in fixed:
            raise XKDError(f"sweep 'set' must map other distill options to one value each, e.g. "
                           f"set: {{reward_position: current}}; got {fixed!r}.")
        if fixed and sweep["param"] in ("teacher", "student"):
            raise XKDError("sweep 'set' does not apply to a teacher / student size sweep: put the options in 'distill'.")

    seeds = _seeds(recipe.get("seeds"))
    seed_students = recipe.get("seed_students", False)
    if not isinstance(seed_students, bool):
        raise XKDError(f"pipeline key 'seed_students' must be true or false, got {seed_students!r}.")
    if seed_students and not seeds:
        raise XKDError("pipeline key 'seed_students' needs 'seeds', e.g. seeds: [1, 2, 3].")
    from xkd_cli.evaluation.evaluate import run_eval  # torch loads only once the recipe's keys are valid
    from xkd_cli.models.loading import resolve_model  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.distill import run_distill  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.gen_teacher import run_gen_teacher  # torch loads only once the recipe's keys are valid
    from xkd_cli.training.sft import run_sft  # torch loads only once the recipe's keys are valid

    steps: list[Step] = []
    for task, task_name in tasks.items():  # task: what --task would say (a built-in name or a task file)
        roles, sft_cfgs = {}, {}
        gen_options = _mapping(recipe, "gen_teacher")
        black_box = "api_model" in gen_options or "api_base" in gen_options
        needs_local_teacher = not black_box or any(METHODS.get(m).needs_teacher_model for m in methods)
        students: dict[int, str] = {}  # seed -> its SFT student run (seed_students)
        for role in ("teacher", "student") if needs_local_teacher else ("student",):
            options = _mapping(recipe, role)
            model = options.get("model") or ("tiny-t5-large" if role == "teacher" else "tiny-t5-small")
            per_seed = role == "student" and seed_students
            for seed in seeds if per_seed else [None]:
                extra = {} if seed is None else {"seed": seed, "name": f"{options.get('name', role)}-seed-{seed}"}
                cfg = _config(SFTConfig, {**options, "task": task, "model": model, "role": role,
                                           "name": options.get("name", role), **extra}, role)
                resolve_model(cfg.model, task=task_name, runs_dir=runs_root)  # an unknown model fails the plan, not step N
                if role not in roles:
                    roles[role], sft_cfgs[role] = cfg.run_name(), cfg
                if seed is not None:
                    students[seed] = cfg.run_name()
                steps.append(Step("sft", task_name, cfg.run_name(), cfg, run_sft, note=model + _seed_note(seed),
                                  record={} if seed is None else {"seed": seed, "seed_group": role}))
        for sweep in sweeps:
            if sweep.get("param") not in ("teacher", "student"):
                continue
            for model in sweep["values"]:  # each size is SFT'd like the default pair
                role = sweep["param"]
                options = {**_mapping(recipe, role), "task": task, "model": model, "role": role,
                           "name": f"{role}-{model}"}
                cfg = _config(SFTConfig, options, f"sweep {role}")
                resolve_model(cfg.model, task=task_name, runs_dir=runs_root)
                steps.append(Step("sft", task_name, cfg.run_name(), cfg, run_sft, note=f"{role} size sweep"))

        gen_name = None
        if any(METHODS.get(m).source == "teacher-samples" for m in methods):
            options = {**gen_options, "task": task, **({} if black_box else {"teacher": roles["teacher"]})}
            if options.get("max_input_len") is None:  # prompts cut as the student's training cuts them
                options["max_input_len"] = sft_cfgs["student"].max_input_len
            cfg = _config(GenTeacherConfig, options, "gen_teacher")
            steps.append(Step("gen-teacher", task_name, cfg.name, cfg, run_gen_teacher,
                              note="black-box" if black_box else "white-box"))
            gen_name = cfg.name

        distill_options = _mapping(recipe, "distill")
        unread = [key for key in distill_options if key in METHOD_OPTIONS and all(
            key in inapplicable_options(METHODS.get(m), {**distill_options, **method_options.get(m, {})})
            for m in methods)]
        if unread:
            readers = ", ".join(methods_reading(unread[0]))
            raise XKDError(f"pipeline section 'distill' sets {unread[0]}, which none of its methods "
                           f"({', '.join(methods)}) reads: it applies to {readers}; drop it or add one of those methods.")
        eval_options = _mapping(recipe, "eval")
        evaluated = list(dict.fromkeys([*roles.values(), *students.values()]))

        def add_distill(method: str, name: str, extra: dict, note: str = "", record: dict | None = None) -> None:
            own = {**method_options.get(method, {}), **extra}
            options = {"task": task, "method": method, "name": name, "teacher": roles.get("teacher"),
                       "student": roles["student"], **distill_options, **own}
            for key in inapplicable_options(METHODS.get(method), options):  # the shared section's, where ignored
                if key not in own:
                    del options[key]
            if METHODS.get(method).source == "teacher-samples":
                options.setdefault("teacher_data", gen_name)
            cfg = _config(DistillConfig, options, f"distill/{method}")
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
        for sweep in sweeps:
            param = sweep["param"]
            for method in sweep.get("methods") or methods:
                if method not in methods:
                    raise XKDError(f"sweep method '{method}' is not in 'methods' ({', '.join(methods)}).")
                fixed = sweep.get("set", {})
                for value in sweep["values"]:
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

        for name in evaluated:
            cfg = _config(EvalConfig, {**eval_options, "task": task, "model": name}, "eval")
            steps.append(Step("eval", task_name, name, cfg, run_eval))

        for kind, key in (("diversity", "diversity"), ("judge", "judge")):
            options = _mapping(recipe, key)
            if options:
                steps.append(_extra_step(kind, task, task_name, options, roles))
    return steps


def _sweeps(recipe: dict) -> list[dict]:
    """The recipe's sweeps: one mapping, or a list of them (e.g. λ and the reward position)."""
    value = recipe.get("sweep")
    items = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(item, dict) for item in items):
        raise XKDError(f"pipeline key 'sweep' must be a mapping or a list of mappings, got {value!r}.")
    sweeps = [{str(k).replace("-", "_"): v for k, v in item.items()} for item in items]
    for sweep in sweeps:  # the fixed options are distill options too: one spelling for the checks and the names
        if isinstance(sweep.get("set"), dict):
            sweep["set"] = {str(k).replace("-", "_"): v for k, v in sweep["set"].items()}
    return sweeps


def _seeds(value: Any) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise XKDError(f"pipeline key 'seeds' must be a list of integers, e.g. [1, 2, 3], got {value!r}.")
    if len(set(value)) != len(value):
        raise XKDError(f"pipeline key 'seeds' lists a seed twice: {value}.")
    return list(value)


def _seed_note(seed: int | None) -> str:
    return "" if seed is None else f", seed {seed}"


def _extra_step(kind: str, task: str, task_name: str, options: dict, roles: dict) -> Step:
    """Diversity and judge steps, built by their own modules."""
    if kind == "diversity":
        from xkd_cli.evaluation.diversity import run_diversity  # torch loads only once a recipe is planned

        models = [roles.get(m, m) for m in _names(options.pop("models", None), "diversity.models") or [roles["student"]]]
        cfg = _config(DiversityConfig, {**options, "task": task, "models": models}, "diversity")
        return Step("diversity", task_name, cfg.name, cfg, run_diversity, note=", ".join(models))
    cfg = _config(JudgeConfig, {**options, "task": task, "a": roles.get(options.get("a"), options.get("a")),
                                "b": roles.get(options.get("b"), options.get("b"))}, "judge")
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

        resumable = step.kind in ("sft", "distill") and resumable_checkpoint(path, step.config) is not None
        return ("resume" if resumable else "stale"), []
    previous = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    wanted = to_dict(step.config)
    changed = sorted(k for k in wanted if previous.get(k) != wanted[k])  # commands may record more keys
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
