"""Sweep figures: one per task and swept parameter of the distill runs the pipeline marked with ``sweep``
(one curve per method), and the diversity figures ``xkd diversity`` drew, linked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_cli.core.workspace import RUN_RECORD, read_json
from xkd_cli.evaluation.plots import Baseline, Series, plot_curves
from xkd_cli.experiments.report.collect import RunInfo, greedy_eval, link, relative
from xkd_cli.experiments.report.stats import mean_sd
from xkd_cli.experiments.report.formatting import as_number, human_count, metric_text, value_text
from xkd_cli.config.methods import METHODS

FIGURES_DIR = "figures"


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


def counterpart(method: str) -> str | None:
    """The non-experiential method an X method extends (same data source and loss): gxkd → gkd."""
    spec = METHODS.get(method)
    if not spec.experiential:
        return None
    for name in METHODS.names():
        other = METHODS.get(name)
        if not other.experiential and (other.source, other.loss) == (spec.source, spec.loss):
            return name
    return None


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
                return count, relative(path, root)
    return None, None


def _spread_scale(values: list[float], zero_ok: bool):
    """Linear unless the (non-zero) values span a decade or more: then log, or symlog when 0 is among them
    (its linear part reaches the smallest non-zero value, so 0 and that value sit one decade apart).

    A scale object rather than a name, because ``plot_curves`` passes it on to matplotlib unchanged and a
    name cannot carry symlog's ``linthresh``."""
    from matplotlib.scale import LogScale, SymmetricalLogScale  # here: slow to import; only sweep figures need it

    nonzero = sorted(abs(v) for v in values if v != 0)
    if len(nonzero) < 2 or nonzero[-1] / nonzero[0] < 10:
        return "linear"
    if zero_ok and len(nonzero) < len(values):
        return SymmetricalLogScale(None, linthresh=nonzero[0], linscale=1.0)
    # explicit minor subs: minor ticks stay unlabelled, so only the pinned (swept) values are written
    return LogScale(None, subs=tuple(range(2, 10))) if all(v > 0 for v in values) else "linear"


def _scale_name(scale: Any) -> str:
    return scale if isinstance(scale, str) else getattr(scale, "name", "linear")


def build_figures(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                  table1: dict[str, Any], missing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group each task's sweep runs by parameter; one figure (data + drawing spec) per group."""
    figures = []
    for task in tasks:
        groups: dict[str, dict[str, dict[str, dict[Any, tuple[Any, RunInfo]]]]] = {}
        for run in runs[task]:
            sweep = run.record.get("sweep")
            if run.kind != "distill" or not isinstance(sweep, dict) or sweep.get("param") not in SWEEP_AXES:
                continue
            method = sweep.get("method") or run.record.get("method")
            if method not in METHODS:
                continue
            key = value_text(sweep.get("value"))
            curve = (method, fixed_text(sweep.get("set")))  # a sweep with fixed options is a curve of its own
            by_seed = groups.setdefault(sweep["param"], {}).setdefault(curve, {}).setdefault(key, {})
            by_seed[run.record.get("seed")] = (sweep.get("value"), run)  # newest wins, per seed
        for param in SWEEP_AXES:
            if param in groups:
                figure = _sweep_figure(root, task, param, groups[param], table1, missing)
                if figure is not None:
                    figures.append(figure)
    return figures


def fixed_pairs(fixed: Any) -> str:
    """'reward_position=current' for a sweep's fixed options (its ``set``), '' for none."""
    return ", ".join(f"{k}={value_text(v)}" for k, v in fixed.items()) if isinstance(fixed, dict) else ""


def fixed_text(fixed: Any) -> str:
    """' (reward_position=current)' for a sweep's fixed options, '' for none: a curve's label suffix."""
    pairs = fixed_pairs(fixed)
    return f" ({pairs})" if pairs else ""


def _sweep_figure(root: Path, task: str, param: str,
                  by_curve: dict[tuple[str, str], dict[str, dict[Any, tuple[Any, RunInfo]]]],
                  table1: dict[str, Any], missing: list[dict[str, Any]]) -> dict[str, Any] | None:
    axis = SWEEP_AXES[param]
    series = []
    for method, fixed in sorted(by_curve, key=lambda curve: (METHODS.names().index(curve[0]), curve[1])):
        points = []
        for label, by_seed in by_curve[method, fixed].items():
            cells = []
            for value, run in by_seed.values():
                cell = greedy_eval(run, root)
                if cell is None:
                    missing.append({"task": task, "where": f"{axis.figure} sweep · {METHODS.get(method).paper_name} "
                                                           f"{axis.short}={label}", "run": run.name,
                                    "reason": "no greedy evaluation", "fix": f"xkd eval --model {run.name} --task {task}"})
                else:
                    cells.append((value, run, cell))
            if not cells:
                continue
            value, run, cell = cells[0]
            point = {"value": value, "label": label, "y": cell["value"], "metric": cell["metric"], "run": run.name,
                     "split": cell["split"], "examples": cell["examples"], "source": cell["source"]}
            if len(cells) > 1:  # a point run once per seed: the mean over its seeds, each run and file kept
                y, sd = mean_sd([c["value"] for _, _, c in cells])
                point.update(y=y, sd=sd, seeds=len(cells), run=", ".join(r.name for _, r, _ in cells),
                             sources=[c["source"] for _, _, c in cells])
            if param in ("teacher", "student"):
                point["parameters"], point["x_source"] = _model_size(root, run, param)
            else:
                config_path = run.path / "config.json"
                configured = read_json(config_path).get(param) if config_path.is_file() else None
                number = as_number(configured if configured is not None else value)
                if number is None:
                    missing.append({"task": task, "where": f"{axis.figure} sweep", "run": run.name,
                                    "reason": f"{param} value {value!r} is not a number", "fix": "check its run.json"})
                    continue
                point["value"] = number
                point["x"] = number * 100 if param == "train_fraction" else number
            points.append(point)
        if points:
            series.append({"method": method, "key": method + fixed, "label": METHODS.get(method).paper_name + fixed,
                           "points": points})
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
                baselines.append({"method": base, "for": s["key"],
                                  "label": f"{METHODS.get(base).paper_name} (baseline of {s['label']})",
                                  "value": cell["value"], "run": cell["run"], "source": cell["source"]})
    metric = points[0]["metric"]
    return {"id": f"{task}-{param}", "task": task, "param": param, "paper_figure": axis.figure, "metric": metric,
            "title": f"{task}: {metric_text(metric)} vs {axis.short} (cf. {axis.figure})",
            "xlabel": spec["xlabel"], "ylabel": metric_text(metric), "xscale": _scale_name(spec["xscale"]),
            "series": series, "baselines": baselines, "_spec": spec}


def draw_figure(figure: dict[str, Any], out_dir: Path) -> None:
    """Write the figure's PNG and SVG under ``out_dir/figures`` and record their paths (relative to out_dir)."""
    import matplotlib  # here: slow to import; only sweep figures need it

    colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    color_of = {s["key"]: colors[i % len(colors)] for i, s in enumerate(figure["series"])}
    series = [Series(s["label"], x=[p["x"] for p in s["points"]], y=[p["y"] for p in s["points"]],
                     style={"color": color_of[s["key"]]}) for s in figure["series"]]
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
                     "source": relative(summary_path, root), "points": []}
            for fmt in ("png", "svg"):
                path = run.path / f"diversity.{fmt}"
                entry[fmt] = link(path, out_dir) if path.is_file() else None
                entry[f"{fmt}_path"] = relative(path, root) if path.is_file() else None
            for row in summary.get("rows") or []:
                entry["points"].append({"model": row.get("model"), "temperature": row.get("temperature"),
                                        "value": row.get("value"), "diversity": row.get("diversity"),
                                        "self_bleu": row.get("self_bleu"),
                                        "source": f"{row['eval_dir']}/metrics.json" if row.get("eval_dir") else None})
            found.append(entry)
    return found
