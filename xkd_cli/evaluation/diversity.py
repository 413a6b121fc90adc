"""``xkd diversity``: the quality–diversity trade-off of sampling (the paper's temperature sweep).

For every model and every temperature (0.1, 0.3, 0.5, 1.0 by default, top-p 1.0), ``num_samples``
outputs per evaluation input are sampled and scored with the task metric and SelfBLEU (docs/method.md, "Evaluation");
diversity is ``100 − SelfBLEU`` (the paper's ``1 − SelfBLEU``, in percent like every metric here).

Each (model, temperature) is one ordinary evaluation delegated to :func:`xkd_cli.evaluation.evaluate.run_eval`:
its predictions and metrics live where ``xkd eval`` would put them (the model's run, or
``eval-<model>``, under ``eval/<split>-t<T>-p<P>-n<K>/``), so an interrupted sweep resumes where it
stopped, finished ids are never generated again, and results are shared with ``xkd eval``.

The summary run ``<runs>/<task>/<name>/`` (kind "diversity") holds ``diversity.csv``,
``diversity.json`` and the figure (``diversity.png``, ``diversity.svg``: metric against diversity,
one curve per model, temperatures on the points). Every row names the eval directory (relative to
the runs directory) whose ``metrics.json`` it was read from. The summary is derived data: a re-run
with other models or temperatures rewrites it; ``--overwrite`` also regenerates the evaluations.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xkd_cli.config.core import DTYPES, build_config, check, in_range, to_dict
from xkd_cli.core.errors import XKDError
from xkd_cli.cli.options import (BatchSize, Data, Device, Dtype, Json, MaxInputLen, Name, Overwrite, Recipe, RunsDir, Seed,
                      Task, recipe_value)
from xkd_cli.cli.options import LoadIn4bit, LoadIn8bit, TrustRemoteCode
from xkd_cli.core.ui import emit, out, table
from xkd_cli.core.workspace import Run, check_run_name, create_run, default_task, now, open_run, run_path, runs_root, write_json

KIND = "diversity"
DEFAULT_NAME = "diversity"
DEFAULT_TEMPERATURES = (0.1, 0.3, 0.5, 1.0)  # the paper's sweep (Section 4.1; docs/method.md, "Evaluation")
FILES = {"csv": "diversity.csv", "json": "diversity.json", "png": "diversity.png", "svg": "diversity.svg"}
CSV_COLUMNS = ("model", "temperature", "top_p", "num_samples", "examples", "metric", "value", "self_bleu",
               "diversity", "eval_dir")


@dataclass(frozen=True)
class DiversityConfig:
    task: str = ""
    models: tuple[str, ...] = ()     # each: run name, path, hub id or built-in model
    name: str = DEFAULT_NAME         # the summary run
    data: str | None = None
    split: str | None = None         # default: the task's evaluation split
    limit: int | None = None
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    top_p: float = 1.0
    num_samples: int = 4
    batch_size: int = 32
    max_input_len: int = 512
    max_new_tokens: int = 64
    seed: int = 42
    dtype: str = "float32"
    device: str = "auto"
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    trust_remote_code: bool = False  # run a model's own code (auto_map) only when asked

    def __post_init__(self) -> None:
        found: list[str] = []
        if not self.task:
            found.append("--task is required")
        if not self.models:
            found.append("--model is required: give it once per model to compare (run name, path, hub id or "
                         "built-in model)")
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            found.append(f"--model {repeated[0]} is given twice: name each model once")
        if self.num_samples < 2:
            found.append(f"--num-samples must be at least 2, got {self.num_samples}: SelfBLEU scores each sample "
                         "against the other samples of the same input")
        if not self.temperatures:
            found.append("--temperatures needs at least one temperature, e.g. 0.1,0.3,0.5,1.0")
        bad = [t for t in self.temperatures if not t > 0]
        if bad:
            found.append(f"--temperatures must all be > 0 (0 is greedy decoding, which has no diversity), "
                         f"got {bad[0]:g}")
        if len(set(self.temperatures)) != len(self.temperatures):
            found.append(f"--temperatures lists a temperature twice: {','.join(f'{t:g}' for t in self.temperatures)}")
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        for key in ("limit", "batch_size", "max_input_len", "max_new_tokens"):
            in_range(found, key, getattr(self, key), 1)
        if self.dtype not in DTYPES:
            found.append(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        try:
            check_run_name(self.name)
        except XKDError as exc:
            found.append(f"--name: {str(exc).rstrip('.')}")
        if not found:  # the evaluation's own checks (split, …), once, with a valid model and temperature
            try:
                self.eval_config(self.models[0], self.temperatures[0])
            except XKDError as exc:
                found.append(str(exc).rstrip("."))
        check(found)

    def eval_config(self, model: str, temperature: float):
        """The evaluation of one (model, temperature) point: where its results live is run_eval's choice."""
        from xkd_cli.evaluation.evaluate import EvalConfig

        return EvalConfig(task=self.task, model=model, data=self.data, split=self.split, limit=self.limit,
                          batch_size=self.batch_size, max_input_len=self.max_input_len,
                          max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=self.top_p,
                          num_samples=self.num_samples, seed=self.seed, dtype=self.dtype, device=self.device,
                          load_in_8bit=self.load_in_8bit, load_in_4bit=self.load_in_4bit,
                          trust_remote_code=self.trust_remote_code)


def parse_temperatures(text: str | None) -> tuple[float, ...] | None:
    """``"0.1,0.3, 1"`` → (0.1, 0.3, 1.0); a word that is not a number is a one-line error."""
    if text is None:
        return None
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise XKDError(f"--temperatures takes numbers separated by commas, e.g. 0.1,0.3,0.5,1.0; "
                           f"{part.strip()!r} in {text!r} is not a number") from None
    return tuple(values)


def _summary_run(root: Path, task: str, cfg: DiversityConfig, settings: dict[str, Any], overwrite: bool) -> Run:
    """The run receiving the summary: created, replaced (--overwrite) or rewritten. Never another kind's run."""
    config = {**to_dict(cfg), **settings}
    extra = {"models": list(cfg.models), "temperatures": list(cfg.temperatures), "num_samples": cfg.num_samples}
    path = run_path(root, task, cfg.name)
    if not path.exists():
        return create_run(root, task, cfg.name, kind=KIND, config=config, seed=cfg.seed, extra=extra)
    run = open_run(root, task, cfg.name)  # refuses a directory that is not an xkd run
    kind = run.record().get("kind")
    if kind != KIND:  # even with --overwrite: a model or eval run is never deleted to make room for a summary
        raise XKDError(f"run '{cfg.name}' at {path} is a {kind} run, not a {KIND} run: pick another --name")
    if overwrite:
        return create_run(root, task, cfg.name, kind=KIND, config=config, seed=cfg.seed, overwrite=True, extra=extra)
    write_json(run.path / "config.json", config)
    run.update_record(status="running", started=now(), command=sys.argv, **extra)
    return run


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def run_diversity(cfg: DiversityConfig, *, runs_root: Path, overwrite: bool = False) -> dict[str, Any]:
    """Evaluate every (model, temperature) with ``num_samples`` samples per input (resumable), then write
    the summary table, JSON and figure into the run ``<runs_root>/<task>/<cfg.name>``."""
    from xkd_cli.evaluation.evaluate import run_eval
    from xkd_cli.models.loading import resolve_model
    from xkd_cli.experiments.plots import metric_label
    from xkd_cli.data.tasks import get_task

    root = Path(runs_root)
    task = get_task(cfg.task)
    split = cfg.split or task.eval_split
    for model in cfg.models:  # an unknown model fails now, before anything is generated or written
        resolve_model(model, task=task.name, runs_dir=root)
    examples = task.load(split, cfg.data, limit=cfg.limit)
    if not examples:
        raise XKDError(f"the {split} split of task '{task.name}' is empty. Check --data / --split.")
    settings = {"task": task.name, "split": split, "examples": len(examples), "metric": task.headline}
    run = _summary_run(root, task.name, cfg, settings, overwrite)
    started = time.time()

    rows: list[dict[str, Any]] = []
    for model in cfg.models:
        for temperature in cfg.temperatures:
            try:
                result = run_eval(cfg.eval_config(model, temperature), runs_root=root, overwrite=overwrite)
            except XKDError as exc:
                raise XKDError(f"{model} at temperature {temperature:g}: {exc}") from None
            values = result["metrics"]
            rows.append({"model": model, "temperature": temperature, "top_p": cfg.top_p,
                         "num_samples": cfg.num_samples, "examples": result["examples"],
                         "metric": result["headline"], "value": values[result["headline"]],
                         "self_bleu": values["self_bleu"], "diversity": values["diversity"],
                         "eval_dir": _relative(Path(result["predictions"]).parent, root),
                         "decoding": result["decoding"], "metrics": values})

    paths = {kind: run.path / file for kind, file in FILES.items()}
    label = metric_label(task.headline)
    summary = {"task": task.name, "run": run.name, "path": str(run.path), "split": split,
               "metric": task.headline, "metric_label": label, "models": list(cfg.models),
               "temperatures": list(cfg.temperatures), "top_p": cfg.top_p, "num_samples": cfg.num_samples,
               "examples": len(examples), "runs_dir": str(root.resolve()), "rows": rows,
               "files": {kind: str(p) for kind, p in paths.items()}}
    write_csv(paths["csv"], rows)
    write_json(paths["json"], summary)
    draw(summary, run.path / "diversity")
    run.finish(started, rows=len(rows))
    return {**summary, "seconds": round(time.time() - started, 2)}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The table as CSV (``CSV_COLUMNS``), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def draw(summary: dict[str, Any], stem: Path) -> dict[str, Path]:
    """Metric (y) against diversity (x): one curve per model, in temperature order, points marked T=…"""
    from xkd_cli.experiments.plots import Series, metric_label, plot_curves

    series = []
    for model in summary["models"]:
        points = [r for r in summary["rows"] if r["model"] == model]
        series.append(Series(model, x=[r["diversity"] for r in points], y=[r["value"] for r in points],
                             annotations=[f"T={r['temperature']:g}" for r in points]))
    title = (f"{summary['task']} · {summary['split']}: {summary['metric_label']} vs diversity\n"
             f"top-p {summary['top_p']:g}, {summary['num_samples']} samples per input, {summary['examples']} inputs")
    return plot_curves(series, xlabel=metric_label("diversity"), ylabel=summary["metric_label"], title=title,
                       legend_title="model", stem=stem)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

EPILOG = ("Examples:\n\n  xkd diversity --model sft-student --model gxkd --task synth-mt\n\n"
          "  xkd diversity -m gkd -m gxkd --task xsum --temperatures 0.1,0.3,0.5,1.0 --num-samples 4 --limit 500\n\n"
          "  xkd diversity --model tiny-t5-small --task synth-mt --limit 3 --num-samples 2 "
          "--temperatures 0.5,1.0 --json")

Models = Annotated[Optional[list[str]], typer.Option(
    "--model", "-m", help="A model to compare; repeat for several. Run name, local path, Hugging Face id or "
                          "built-in tiny model.")]


def diversity(
    model: Models = None, task: Task = None, name: Name = None, data: Data = None, recipe: Recipe = None,
    temperatures: Annotated[Optional[str], typer.Option(help="Sampling temperatures, comma-separated, each > 0 "
                                                             "(default: 0.1,0.3,0.5,1.0, the paper's).")] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Samples per input, at least 2 (default: 4).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass (default: 1.0).")] = None,
    split: Annotated[Optional[str], typer.Option(help="train, validation or test (default: the task's eval split).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use the first N evaluation inputs only.")] = None,
    batch_size: BatchSize = None, max_input_len: MaxInputLen = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Maximum generated tokens.")] = None,
    seed: Seed = None, dtype: Dtype = None, device: Device = None,
    load_in_8bit: LoadIn8bit = None, load_in_4bit: LoadIn4bit = None, trust_remote_code: TrustRemoteCode = None,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Quality vs diversity: sample each model at several temperatures, score the task metric and SelfBLEU,
    plot metric against diversity (100 − SelfBLEU); resumable. Results: <runs>/<task>/<name>/ (default name
    'diversity'): diversity.csv, .json, .png, .svg. --overwrite also regenerates the evaluations."""
    from xkd_cli.config.defaults import eval_defaults

    root = runs_root(runs_dir)
    task_name = recipe_value(recipe, "task", task) or default_task(root)
    flags = dict(task=task_name, models=tuple(model) if model else None, name=name, data=data, split=split,
                 limit=limit, temperatures=parse_temperatures(temperatures), top_p=top_p, num_samples=num_samples,
                 batch_size=batch_size, max_input_len=max_input_len, max_new_tokens=max_new_tokens, seed=seed,
                 dtype=dtype, device=device, load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit,
                 trust_remote_code=trust_remote_code)
    cfg = build_config(DiversityConfig, defaults=eval_defaults(task_name), recipe=recipe, flags=flags)
    result = run_diversity(cfg, runs_root=root, overwrite=overwrite)
    emit(result, as_json=json, render=_render)


def _render(result: dict[str, Any]) -> None:
    label = result["metric_label"]
    rows = [(r["model"], f"{r['temperature']:g}", r["value"], r["self_bleu"], r["diversity"]) for r in result["rows"]]
    out.print(table(f"{result['task']} · {result['run']} · {result['split']} · top-p {result['top_p']:g} · "
                    f"{result['num_samples']} samples × {result['examples']} inputs",
                    ["model", "temperature", label, "SelfBLEU", "diversity"], rows))
    files = result["files"]
    out.print(f"figure: {files['png']} (and .svg)")
    out.print(f"table: {files['csv']}, {files['json']}")


def register(app: typer.Typer) -> None:
    app.command(name="diversity", epilog=EPILOG)(diversity)
