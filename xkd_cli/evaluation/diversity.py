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
import sys
import time
from pathlib import Path
from typing import Any

from xkd_cli.config.core import to_dict
from xkd_cli.config.evaluation import DiversityConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import Run, create_run, now, open_run, run_path, write_json, write_text
from xkd_cli.data.taskfile import task_of
from xkd_cli.evaluation.evaluate import run_eval
from xkd_cli.evaluation.plots import Series, metric_label, plot_curves
from xkd_cli.models.references import resolve_model

KIND = "diversity"
FILES = {"csv": "diversity.csv", "json": "diversity.json", "png": "diversity.png", "svg": "diversity.svg"}
CSV_COLUMNS = ("model", "temperature", "top_p", "num_samples", "examples", "metric", "value", "self_bleu",
               "diversity", "eval_dir")


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
    root = Path(runs_root)
    task = task_of(cfg)
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
    write_text(path, buffer.getvalue())


def draw(summary: dict[str, Any], stem: Path) -> dict[str, Path]:
    """Metric (y) against diversity (x): one curve per model, in temperature order, points marked T=…"""
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
