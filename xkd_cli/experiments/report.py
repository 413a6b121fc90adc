"""``xkd report``: the paper's tables and figures from what is on disk, every number traced to its file.

Nothing is computed here: the report reads the runs directory (one task with ``--task``, or all of it)
and writes, by default to ``<runs>/report/`` (``<runs>/report-<task>/`` with ``--task``):

* ``table1.csv`` — the Table-1 layout: rows SFT student, the seven methods (their default runs, i.e.
  distill runs without a ``sweep`` record, by paper name), the teacher; one column per task; each cell
  the headline metric (ROUGE-2 / BLEU / accuracy) of the run's greedy evaluation
  (``<run>/eval/<split>-greedy/metrics.json``, the task's evaluation split preferred).
* ``judge.csv`` — the Table-2 layout: one row per judge run (A vs B, win / tie / lose %, orders that
  disagree %, judged items, judge model), read from its ``results.json``.
* ``figures/<task>-<param>.png`` / ``.svg`` — one figure per task and swept parameter of the distill runs
  the pipeline marked with ``sweep`` (one curve per method): metric vs training-data fraction (Figure
  1d–f), vs λ (Figure 3), vs τ′ (Figure 4, with the default runs of the matching non-experiential methods
  as dashed lines), vs teacher / student size (Figure 2; x is the SFT'd model's parameter count from its
  ``run.json``, else the size label). Diversity figures already drawn by ``xkd diversity`` are linked.
* ``sweeps.csv`` — every figure point and baseline, one per line.
* ``report.json`` — all of the above with, for each number, the file it was read from (relative to the
  runs directory); ``--json`` prints it.
* ``report.md`` — the tables and the figures (relative links) and a "Sources" section naming the
  ``metrics.json`` / ``results.json`` / ``run.json`` behind every cell and point.

The report is derived data: re-running rewrites it (figures of sweeps that are gone are removed).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xkd_cli import __version__
from xkd_cli.core.errors import XKDError
from xkd_cli.cli.options import Json, RunsDir, Task
from xkd_cli.core.ui import console, emit, out, table
from xkd_cli.core.workspace import RUN_RECORD, find_runs, read_json, runs_root, write_json

MISSING = "—"
FIGURES_DIR = "figures"
FILES = {"md": "report.md", "json": "report.json", "table1": "table1.csv", "judge": "judge.csv",
         "sweeps": "sweeps.csv"}
ROLE_LABELS = {"student": "SFT student", "teacher": "Teacher"}
JUDGE_COLUMNS = ("task", "a", "b", "win_rate", "tie_rate", "lose_rate", "inconsistency_rate", "judged", "unparsed",
                 "judge_model", "run", "source")
SWEEP_COLUMNS = ("figure", "task", "param", "kind", "method", "label", "value", "x", "y", "metric", "run",
                 "source", "x_source")


@dataclass(frozen=True)
class SweepAxis:
    xlabel: str
    figure: str       # the paper's figure it mirrors
    short: str        # the parameter as written in titles and tables


SWEEP_AXES = {
    "train_fraction": SweepAxis("Training data (%)", "Figure 1d–f", "training data"),
    "lam": SweepAxis("Experiential weight λ", "Figure 3", "λ"),
    "tau": SweepAxis("Boltzmann temperature τ′", "Figure 4", "τ′"),
    "teacher": SweepAxis("Teacher model", "Figure 2", "teacher size"),
    "student": SweepAxis("Student model", "Figure 2", "student size"),
}


@dataclass
class RunInfo:
    task: str
    name: str
    path: Path
    record: dict[str, Any]

    @property
    def kind(self) -> str | None:
        return self.record.get("kind")


# ---------------------------------------------------------------------------------------------
# Reading the runs directory
# ---------------------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    """A path as written in the report: relative to the runs directory where possible."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _task_order(name: str) -> tuple[int, str]:
    from xkd_cli.data.tasks import TASKS

    names = TASKS.names()
    return (names.index(name), name) if name in names else (len(names), name)


def task_dirs(root: Path) -> list[str]:
    """Tasks with at least one run (a subdirectory holding run.json), in the registry's order."""
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir()
             if p.is_dir() and any((child / RUN_RECORD).is_file() for child in p.iterdir() if child.is_dir())]
    return sorted(found, key=_task_order)


def collect_runs(root: Path, task: str) -> list[RunInfo]:
    """Completed runs of a task with their records, oldest first."""
    return [RunInfo(task, run.name, run.path, run.record()) for run in find_runs(root, task)]


def _eval_split(task: str) -> str | None:
    from xkd_cli.data.tasks import TASKS

    return TASKS.get(task).eval_split if task in TASKS else None


def _task_headline(task: str) -> str | None:
    from xkd_cli.data.tasks import TASKS

    return TASKS.get(task).headline if task in TASKS else None


def greedy_eval(run: RunInfo, root: Path) -> dict[str, Any] | None:
    """The headline metric of the run's greedy evaluation (the task's evaluation split first), with its file."""
    eval_dir = run.path / "eval"
    if not eval_dir.is_dir():
        return None
    split = _eval_split(run.task)
    preferred = eval_dir / f"{split}-greedy" / "metrics.json"
    candidates = [preferred] if split and preferred.is_file() else sorted(eval_dir.glob("*-greedy/metrics.json"))
    for path in candidates:
        data = read_json(path)
        headline = data.get("headline")
        metrics = data.get("metrics")
        value = metrics.get(headline) if isinstance(metrics, dict) else None  # a damaged file counts as missing
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return {"value": float(value), "metric": headline, "run": run.name,
                    "split": data.get("split") or path.parent.name.rsplit("-", 1)[0],
                    "examples": data.get("examples"), "source": _relative(path, root)}
    return None


# ---------------------------------------------------------------------------------------------
# Table 1
# ---------------------------------------------------------------------------------------------


def _methods():
    from xkd_cli.objectives.methods import METHODS

    return METHODS


def default_runs(runs: list[RunInfo]) -> dict[str, RunInfo]:
    """The default run of each method: a distill run without ``sweep``; the one named after the method
    if there is one, else the newest."""
    chosen: dict[str, RunInfo] = {}
    for method in _methods().names():
        found = [r for r in runs if r.kind == "distill" and r.record.get("method") == method
                 and not r.record.get("sweep")]
        named = [r for r in found if r.name == method]
        if named or found:
            chosen[method] = (named or found)[-1]
    return chosen


def role_run(runs: list[RunInfo], role: str, defaults: dict[str, RunInfo]) -> RunInfo | None:
    """The SFT'd teacher / student of the table: the one the default distill runs used, else the run
    named after the role, else the newest SFT run of that role."""
    sft = {r.name: r for r in runs if r.kind == "sft" and r.record.get("role") == role}
    used = Counter(d.record.get(role) for d in defaults.values() if d.record.get(role))
    for name, _ in used.most_common():
        if name in sft:
            return sft[name]
    if role in sft:
        return sft[role]
    return list(sft.values())[-1] if sft else None


def build_table1(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                 missing: list[dict[str, Any]]) -> dict[str, Any]:
    methods = _methods()
    rows = [{"key": "student", "label": ROLE_LABELS["student"], "method": None, "cells": {}}]
    rows += [{"key": m, "label": methods.get(m).paper_name, "method": m, "cells": {}} for m in methods.names()]
    rows.append({"key": "teacher", "label": ROLE_LABELS["teacher"], "method": None, "cells": {}})
    metrics: dict[str, str | None] = {}
    best: dict[str, list[str]] = {}
    for task in tasks:
        defaults = default_runs(runs[task])
        picked = {**defaults, "student": role_run(runs[task], "student", defaults),
                  "teacher": role_run(runs[task], "teacher", defaults)}
        for row in rows:
            run = picked.get(row["key"])
            cell = greedy_eval(run, root) if run is not None else None
            row["cells"][task] = cell
            if run is not None and cell is None:
                missing.append({"task": task, "where": f"Table 1 · {row['label']}", "run": run.name,
                                "reason": "no greedy evaluation",
                                "fix": f"xkd eval --model {run.name} --task {task}"})
        values = [row["cells"][task]["value"] for row in rows if row["method"] and row["cells"][task]]
        best[task] = [row["key"] for row in rows if row["method"] and row["cells"][task]
                      and row["cells"][task]["value"] == max(values)] if values else []
        metrics[task] = next((row["cells"][task]["metric"] for row in rows if row["cells"][task]), None) \
            or _task_headline(task)
    return {"columns": tasks, "metrics": metrics, "rows": rows, "best": best}


# ---------------------------------------------------------------------------------------------
# Table 2 (judge)
# ---------------------------------------------------------------------------------------------


def build_judge(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                missing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        for run in runs[task]:
            if run.kind != "judge":
                continue
            path = run.path / "results.json"
            if not path.is_file():
                missing.append({"task": task, "where": "Table 2", "run": run.name, "reason": "no results.json",
                                "fix": f"re-run the judge: xkd judge --task {task} --name {run.name} ..."})
                continue
            data = read_json(path)
            rows.append({"task": task, "a": data.get("a", run.record.get("a")), "b": data.get("b", run.record.get("b")),
                         **{k: data.get(k) for k in ("win_rate", "tie_rate", "lose_rate", "inconsistency_rate",
                                                     "judged", "unparsed")},
                         "judge_model": (data.get("judge") or {}).get("model"), "split": data.get("split"),
                         "run": run.name, "source": _relative(path, root)})
    return rows


# ---------------------------------------------------------------------------------------------
# Sweep figures
# ---------------------------------------------------------------------------------------------


def counterpart(method: str) -> str | None:
    """The non-experiential method an X method extends (same data source and loss): gxkd → gkd."""
    methods = _methods()
    spec = methods.get(method)
    if not spec.experiential:
        return None
    for name in methods.names():
        other = methods.get(name)
        if not other.experiential and (other.data, other.loss) == (spec.data, spec.loss):
            return name
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _model_size(root: Path, run: RunInfo, role: str) -> tuple[int | None, str | None]:
    """Parameter count of the SFT'd teacher / student a size-sweep run used, from that SFT run's run.json."""
    ref = run.record.get(role)
    value = (run.record.get("sweep") or {}).get("value")
    for name in (ref, f"{role}-{value}"):
        if not name or "/" in str(name) or name in (".", ".."):
            continue
        path = root / run.task / str(name) / RUN_RECORD
        if path.is_file():
            count = read_json(path).get("model_parameters")
            if isinstance(count, int) and count > 0:
                return count, _relative(path, root)
    return None, None


def human_count(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _spread_scale(values: list[float], zero_ok: bool):
    """Linear unless the (non-zero) values span a decade or more: then log, or symlog when 0 is among them
    (its linear part reaches the smallest non-zero value, so 0 and that value sit one decade apart).

    A scale object rather than a name, because ``plot_curves`` passes it on to matplotlib unchanged and a
    name cannot carry symlog's ``linthresh``."""
    from matplotlib.scale import LogScale, SymmetricalLogScale

    nonzero = sorted(abs(v) for v in values if v != 0)
    if len(nonzero) < 2 or nonzero[-1] / nonzero[0] < 10:
        return "linear"
    if zero_ok and len(nonzero) < len(values):
        return SymmetricalLogScale(None, linthresh=nonzero[0], linscale=1.0)
    # explicit minor subs: minor ticks stay unlabelled, so only the pinned (swept) values are written
    return LogScale(None, subs=tuple(range(2, 10))) if all(v > 0 for v in values) else "linear"


def _scale_name(scale: Any) -> str:
    return scale if isinstance(scale, str) else getattr(scale, "name", "linear")


def _fmt_value(value: Any) -> str:
    number = _number(value)
    return f"{number:g}" if number is not None and not isinstance(value, str) else str(value)


def build_figures(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                  table1: dict[str, Any], missing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group each task's sweep runs by parameter; one figure (data + drawing spec) per group."""
    methods = _methods()
    figures = []
    for task in tasks:
        groups: dict[str, dict[str, dict[str, tuple[Any, RunInfo]]]] = {}
        for run in runs[task]:
            sweep = run.record.get("sweep")
            if run.kind != "distill" or not isinstance(sweep, dict) or sweep.get("param") not in SWEEP_AXES:
                continue
            method = sweep.get("method") or run.record.get("method")
            if method not in methods:
                continue
            key = _fmt_value(sweep.get("value"))
            groups.setdefault(sweep["param"], {}).setdefault(method, {})[key] = (sweep.get("value"), run)  # newest wins
        for param in SWEEP_AXES:
            if param in groups:
                figure = _sweep_figure(root, task, param, groups[param], table1, missing)
                if figure is not None:
                    figures.append(figure)
    return figures


def _sweep_figure(root: Path, task: str, param: str, by_method: dict[str, dict[str, tuple[Any, RunInfo]]],
                  table1: dict[str, Any], missing: list[dict[str, Any]]) -> dict[str, Any] | None:
    methods = _methods()
    axis = SWEEP_AXES[param]
    series = []
    for method in [m for m in methods.names() if m in by_method]:
        points = []
        for label, (value, run) in by_method[method].items():
            cell = greedy_eval(run, root)
            if cell is None:
                missing.append({"task": task, "where": f"{axis.figure} sweep · {methods.get(method).paper_name} "
                                                       f"{axis.short}={label}", "run": run.name,
                                "reason": "no greedy evaluation", "fix": f"xkd eval --model {run.name} --task {task}"})
                continue
            point = {"value": value, "label": label, "y": cell["value"], "metric": cell["metric"], "run": run.name,
                     "split": cell["split"], "examples": cell["examples"], "source": cell["source"]}
            if param in ("teacher", "student"):
                point["parameters"], point["x_source"] = _model_size(root, run, param)
            else:
                config_path = run.path / "config.json"
                configured = read_json(config_path).get(param) if config_path.is_file() else None
                number = _number(configured if configured is not None else value)
                if number is None:
                    missing.append({"task": task, "where": f"{axis.figure} sweep", "run": run.name,
                                    "reason": f"{param} value {value!r} is not a number", "fix": "check its run.json"})
                    continue
                point["value"] = number
                point["x"] = number * 100 if param == "train_fraction" else number
            points.append(point)
        if points:
            series.append({"method": method, "label": methods.get(method).paper_name, "points": points})
    if not series:
        return None

    spec: dict[str, Any] = {"xlabel": axis.xlabel}
    points = [p for s in series for p in s["points"]]
    if param in ("teacher", "student"):
        if all(p["parameters"] for p in points):  # x: parameter count
            for p in points:
                p["x"] = float(p["parameters"])
            ticks = sorted({(p["x"], p["label"]) for p in points})
            spec.update(xlabel=f"{axis.xlabel} (parameters)", xscale=_spread_scale([t[0] for t in ticks], False),
                        xticks=[t[0] for t in ticks],
                        xticklabels=[f"{label}\n{human_count(x)}" for x, label in ticks])
        else:  # x: the size labels, evenly spaced in the order of their first run
            order = list(dict.fromkeys(p["label"] for p in points))
            for p in points:
                p["x"] = float(order.index(p["label"]))
            spec.update(xscale="linear", xticks=[float(i) for i in range(len(order))], xticklabels=order)
    else:
        xs = sorted({p["x"] for p in points})
        spec.update(xscale=_spread_scale(xs, zero_ok=param == "lam"), xticks=xs,
                    xticklabels=[f"{x:g}%" if param == "train_fraction" else f"{x:g}" for x in xs])
    for s in series:
        s["points"].sort(key=lambda p: p["x"])

    baselines = []
    if param == "tau":  # Figure 4: each X method's non-experiential counterpart, default settings, dashed
        rows = {row["key"]: row for row in table1["rows"]}
        for s in series:
            base = counterpart(s["method"])
            cell = rows[base]["cells"].get(task) if base in rows else None
            if cell is not None:
                baselines.append({"method": base, "for": s["method"],
                                  "label": f"{methods.get(base).paper_name} (baseline of {s['label']})",
                                  "value": cell["value"], "run": cell["run"], "source": cell["source"]})
    metric = points[0]["metric"]
    return {"id": f"{task}-{param}", "task": task, "param": param, "paper_figure": axis.figure, "metric": metric,
            "title": f"{task}: {_metric_label(metric)} vs {axis.short} (cf. {axis.figure})",
            "xlabel": spec["xlabel"], "ylabel": _metric_label(metric), "xscale": _scale_name(spec["xscale"]),
            "series": series, "baselines": baselines, "_spec": spec}


def _metric_label(key: str | None) -> str:
    from xkd_cli.experiments.plots import metric_label

    return metric_label(key) if key else "metric"


def draw_figure(figure: dict[str, Any], out_dir: Path) -> None:
    """Write the figure's PNG and SVG under ``out_dir/figures`` and record their paths (relative to out_dir)."""
    import matplotlib

    from xkd_cli.experiments.plots import Baseline, Series, plot_curves

    colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    color_of = {s["method"]: colors[i % len(colors)] for i, s in enumerate(figure["series"])}
    series = [Series(s["label"], x=[p["x"] for p in s["points"]], y=[p["y"] for p in s["points"]],
                     style={"color": color_of[s["method"]]}) for s in figure["series"]]
    baselines = [Baseline(b["label"], b["value"], color=color_of[b["for"]]) for b in figure["baselines"]]
    spec = figure["_spec"]
    paths = plot_curves(series, xlabel=spec["xlabel"], ylabel=figure["ylabel"], title=figure["title"],
                        baselines=baselines, legend_title="method", stem=out_dir / FIGURES_DIR / figure["id"],
                        xscale=spec["xscale"], xticks=spec["xticks"], xticklabels=spec["xticklabels"])
    figure.update({fmt: path.relative_to(out_dir).as_posix() for fmt, path in paths.items()})


# ---------------------------------------------------------------------------------------------
# Diversity figures (drawn by `xkd diversity`; linked here)
# ---------------------------------------------------------------------------------------------


def build_diversity(root: Path, out_dir: Path, tasks: list[str], runs: dict[str, list[RunInfo]]) -> list[dict[str, Any]]:
    found = []
    for task in tasks:
        for run in runs[task]:
            summary_path = run.path / "diversity.json"
            if run.kind != "diversity" or not summary_path.is_file():
                continue
            summary = read_json(summary_path)
            entry = {"task": task, "run": run.name, "metric": summary.get("metric"),
                     "source": _relative(summary_path, root), "points": []}
            for fmt in ("png", "svg"):
                path = run.path / f"diversity.{fmt}"
                entry[fmt] = _link(path, out_dir) if path.is_file() else None
                entry[f"{fmt}_path"] = _relative(path, root) if path.is_file() else None
            for row in summary.get("rows") or []:
                entry["points"].append({"model": row.get("model"), "temperature": row.get("temperature"),
                                        "value": row.get("value"), "diversity": row.get("diversity"),
                                        "self_bleu": row.get("self_bleu"),
                                        "source": f"{row['eval_dir']}/metrics.json" if row.get("eval_dir") else None})
            found.append(entry)
    return found


def _link(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _num(value: float | None, suffix: str = "") -> str:
    return MISSING if value is None else f"{value:.2f}{suffix}"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    _write_text(path, buffer.getvalue())


def table1_cells(t1: dict[str, Any], row: dict[str, Any], best: str) -> list[str]:
    """A Table-1 row's cells as text, the best distilled method of each task marked with ``best``."""
    cells = []
    for task in t1["columns"]:
        cell = row["cells"][task]
        text = _num(cell["value"] if cell else None)
        cells.append(best.format(text) if row["key"] in t1["best"][task] else text)
    return cells


def table1_header(table1: dict[str, Any]) -> list[str]:
    return [f"{task} ({_metric_label(table1['metrics'][task])})" for task in table1["columns"]]


def write_csvs(report: dict[str, Any], out_dir: Path) -> None:
    t1 = report["table1"]
    _write_csv(out_dir / FILES["table1"], ["model", *t1["columns"]],
               [[row["label"], *[(row["cells"][t] or {}).get("value") for t in t1["columns"]]] for row in t1["rows"]])
    _write_csv(out_dir / FILES["judge"], list(JUDGE_COLUMNS), [[r.get(k) for k in JUDGE_COLUMNS] for r in report["judge"]])
    lines = []
    for fig in report["figures"]:
        for s in fig["series"]:
            for p in s["points"]:
                lines.append([fig["id"], fig["task"], fig["param"], "point", s["method"], s["label"], p["value"], p["x"],
                              p["y"], p["metric"], p["run"], p["source"], p.get("x_source")])
        for b in fig["baselines"]:
            lines.append([fig["id"], fig["task"], fig["param"], "baseline", b["method"], b["label"], None, None,
                          b["value"], fig["metric"], b["run"], b["source"], None])
    _write_csv(out_dir / FILES["sweeps"], list(SWEEP_COLUMNS), lines)


def render_markdown(report: dict[str, Any], out_dir: Path, root: Path) -> str:
    def src(rel: str) -> str:
        """A source file: its path relative to the runs directory, linked relative to report.md."""
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        return f"[`{rel}`]({_link(path, out_dir)})"

    t1 = report["table1"]
    lines = ["# X-KD report", "",
             f"Runs directory `{report['runs_dir']}` · tasks: {', '.join(report['tasks'])} · xkd {report['xkd']}.", "",
             "Every number below is read from the file listed for it under [Sources](#sources) "
             "(paths relative to the runs directory).", "",
             "## Table 1 — headline metric, greedy decoding", "",
             "| Model | " + " | ".join(_md(h) for h in table1_header(t1)) + " |",
             "|---|" + "---:|" * len(t1["columns"])]
    for row in t1["rows"]:
        lines.append(f"| {_md(row['label'])} | " + " | ".join(table1_cells(t1, row, "**{}**")) + " |")
    lines += ["", f"Bold: the best distilled method of each task. {MISSING}: no run or no greedy evaluation.", ""]

    lines += ["## Table 2 — LLM-judge win rates (A vs B)", ""]
    if report["judge"]:
        lines += ["| Task | A vs B | Win | Tie | Lose | Orders disagree | Judged | Judge |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in report["judge"]:
            lines.append(f"| {_md(r['task'])} | {_md(r['a'])} vs {_md(r['b'])} | {_num(r['win_rate'], '%')} | "
                         f"{_num(r['tie_rate'], '%')} | {_num(r['lose_rate'], '%')} | "
                         f"{_num(r['inconsistency_rate'], '%')} | {r['judged'] if r['judged'] is not None else MISSING} | "
                         f"{_md(r['judge_model'] or MISSING)} |")
        lines += ["", "Rates are percent of the judged items (both answer orders parsed); a win counts only when "
                      "both orders agree.", ""]
    else:
        lines += ["No judge runs (`xkd judge --a seqxkd --b seqkd`).", ""]

    lines += ["## Figures", ""]
    if not report["figures"] and not report["diversity"]:
        lines += ["No sweep or diversity runs.", ""]
    for fig in report["figures"]:
        lines += [f"### {_md(fig['title'])}", "", f"![{_md(fig['title'])}]({fig['png']})", "",
                  f"[SVG]({fig['svg']}) · x scale: {fig['xscale']}"
                  + (" · dashed: the non-experiential baselines (default runs)" if fig["baselines"] else ""), ""]
    for div in report["diversity"]:
        title = f"{div['task']}: {_metric_label(div['metric'])} vs diversity, run {div['run']} (cf. Figure 1a–c)"
        lines += [f"### {_md(title)}", ""]
        if div["png"]:
            lines += [f"![{_md(title)}]({div['png']})", ""]
        lines += [" · ".join(f"[{fmt.upper()}]({div[fmt]})" for fmt in ("png", "svg") if div[fmt])
                  + f" · drawn by `xkd diversity` from {src(div['source'])}", ""]

    if report["missing"]:
        lines += ["## Not in the report", ""]
        lines += [f"- {_md(m['where'])} ({m['task']}/{m['run']}): {m['reason']} — `{m['fix']}`"
                  for m in report["missing"]]
        lines.append("")

    lines += ["## Sources", "", "### Table 1", "", "| Task | Model | Value | Run | Split (examples) | File |",
              "|---|---|---:|---|---|---|"]
    for task in t1["columns"]:
        for row in t1["rows"]:
            cell = row["cells"][task]
            if cell:
                lines.append(f"| {task} | {_md(row['label'])} | {_num(cell['value'])} | {cell['run']} | "
                             f"{cell['split']} ({cell['examples']}) | {src(cell['source'])} |")
    if report["judge"]:
        lines += ["", "### Table 2", "", "| Task | A vs B | Run | File |", "|---|---|---|---|"]
        lines += [f"| {r['task']} | {_md(r['a'])} vs {_md(r['b'])} | {r['run']} | {src(r['source'])} |"
                  for r in report["judge"]]
    for fig in report["figures"]:
        lines += ["", f"### Figure {fig['id']}", "", "| Method | Value | y | Run | File |", "|---|---:|---:|---|---|"]
        for s in fig["series"]:
            for p in s["points"]:
                size = f" ({human_count(p['parameters'])}, {src(p['x_source'])})" if p.get("x_source") else ""
                lines.append(f"| {_md(s['label'])} | {_md(p['label'])}{size} | {_num(p['y'])} | {p['run']} | "
                             f"{src(p['source'])} |")
        for b in fig["baselines"]:
            lines.append(f"| {_md(b['label'])} | default | {_num(b['value'])} | {b['run']} | {src(b['source'])} |")
    for div in report["diversity"]:
        lines += ["", f"### Diversity {div['task']}/{div['run']}", "",
                  "| Model | Temperature | Metric | Diversity | File |", "|---|---:|---:|---:|---|"]
        lines += [f"| {_md(p['model'])} | {_fmt_value(p['temperature'])} | {_num(_number(p['value']))} | "
                  f"{_num(_number(p['diversity']))} | {src(p['source']) if p['source'] else MISSING} |"
                  for p in div["points"]]
    return "\n".join(lines) + "\n"


def _remove_stale_figures(out_dir: Path, keep: set[str]) -> None:
    """Figures a previous report in this directory wrote that this one does not (a sweep that is gone)."""
    previous = out_dir / FILES["json"]
    if not previous.is_file():
        return
    try:
        old = read_json(previous)
    except XKDError:
        return
    figures_dir = (out_dir / FIGURES_DIR).resolve()
    for fig in old.get("figures") or []:
        for fmt in ("png", "svg"):
            rel = fig.get(fmt) if isinstance(fig, dict) else None
            if not isinstance(rel, str) or rel in keep:
                continue
            path = (out_dir / rel).resolve()
            if path.parent == figures_dir and path.suffix == f".{fmt}" and path.is_file():
                path.unlink()


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


def default_output(root: Path, task: str | None) -> Path:
    return root / (f"report-{task}" if task else "report")


def build_report(root: Path, task: str | None = None, output: Path | None = None) -> dict[str, Any]:
    """Collect, draw and write the report; returns what report.json holds."""
    root = Path(root)
    if task is not None:
        from xkd_cli.data.tasks import get_task

        get_task(task)  # an unknown name lists the valid ones
    available = task_dirs(root)
    if not available:
        raise XKDError(f"no runs in {root}: run an experiment first (e.g. `xkd pipeline recipes/pipeline/offline-quick.yaml`) "
                       "or pass --runs-dir (env XKD_RUNS_DIR) pointing at one.")
    if task is not None and task not in available:
        raise XKDError(f"no runs for task '{task}' in {root} (tasks with runs: {', '.join(available)}). "
                       "Pass one of those to --task, or leave --task out to report them all.")
    tasks = [task] if task else available
    runs = {t: collect_runs(root, t) for t in tasks}
    out_dir = Path(output) if output is not None else default_output(root, task)

    missing: list[dict[str, Any]] = []
    table1 = build_table1(root, tasks, runs, missing)
    judge_rows = build_judge(root, tasks, runs, missing)
    figures = build_figures(root, tasks, runs, table1, missing)
    diversity = build_diversity(root, out_dir, tasks, runs)
    evaluated = any(cell for row in table1["rows"] for cell in row["cells"].values()) or figures
    if not evaluated:
        names = sorted({m["run"] for m in missing})
        hint = (f"evaluate them first, e.g. `xkd eval --model {names[0]} --task {missing[0]['task']}`" if names
                else "train and evaluate a student first (`xkd pipeline recipes/pipeline/offline-quick.yaml`)")
        raise XKDError(f"no evaluated runs in {root}{' for task ' + task if task else ''} "
                       f"(no <run>/eval/<split>-greedy/metrics.json): {hint}.")

    if out_dir.exists() and not out_dir.is_dir():
        raise XKDError(f"--output {out_dir} is a file, not a directory: pass a directory for the report.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for figure in figures:
        draw_figure(figure, out_dir)
        del figure["_spec"]
    _remove_stale_figures(out_dir, {f[fmt] for f in figures for fmt in ("png", "svg")})
    report = {"xkd": __version__, "runs_dir": str(root.resolve()), "output": str(out_dir.resolve()),
              "tasks": tasks, "table1": table1, "judge": judge_rows, "figures": figures, "diversity": diversity,
              "missing": missing,
              "files": {key: str(out_dir / name) for key, name in FILES.items()}}
    write_csvs(report, out_dir)
    _write_text(out_dir / FILES["md"], render_markdown(report, out_dir, root))
    write_json(out_dir / FILES["json"], report)
    return report


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

EPILOG = ("Examples:\n\n  xkd report\n\n  xkd report --task synth-mt --output ./report-mt\n\n"
          "  xkd report --runs-dir ./lambda-runs --json")


def report(
    task: Task = None, runs_dir: RunsDir = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Directory for report.md, report.json, "
                                                   "the CSV tables and figures/ (default: <runs-dir>/report, or "
                                                   "<runs-dir>/report-<task> with --task).")] = None,
    json: Json = False,
) -> None:
    """Tables (Table 1: metric per method and task; Table 2: judge win rates) and sweep figures (data
    fraction, λ, τ′, model size) from the runs directory, as Markdown, JSON, CSV, PNG and SVG, with the
    metrics.json file behind every number."""
    result = build_report(runs_root(runs_dir), task, output)
    emit(result, as_json=json, render=render)


def render(report: dict[str, Any]) -> None:
    t1 = report["table1"]
    rows = []
    for row in t1["rows"]:
        rows.append((row["label"], *table1_cells(t1, row, "[bold]{} *[/]")))
    out.print(table("Table 1 · headline metric, greedy decoding (* best distilled method)",
                    ["model", *table1_header(t1)], rows))
    if report["judge"]:
        out.print(table("Table 2 · LLM judge", ["task", "A vs B", "win", "tie", "lose", "orders disagree", "judged",
                                                "judge"],
                        [(r["task"], f"{r['a']} vs {r['b']}", _num(r["win_rate"], "%"), _num(r["tie_rate"], "%"),
                          _num(r["lose_rate"], "%"), _num(r["inconsistency_rate"], "%"), r["judged"],
                          r["judge_model"]) for r in report["judge"]]))
    out_dir = Path(report["output"])
    for fig in report["figures"]:
        out.print(f"figure ({fig['paper_figure']}): {out_dir / fig['png']} (and .svg)")
    for div in report["diversity"]:
        if div["png_path"]:
            out.print(f"diversity figure: {Path(report['runs_dir']) / div['png_path']}")
    for m in report["missing"]:
        console.print(f"[yellow]not in the report:[/] {m['where']} ({m['task']}/{m['run']}): {m['reason']} — {m['fix']}")
    out.print(f"report: {report['files']['md']} (and report.json, table1.csv, judge.csv, sweeps.csv)")


def register(app: typer.Typer) -> None:
    app.command(name="report", epilog=EPILOG)(report)
