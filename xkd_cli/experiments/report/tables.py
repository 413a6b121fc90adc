"""Table 1 (the headline metric of each method's default run, the SFT student and the teacher, per task)
and Table 2 (the LLM-judge runs)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from xkd_cli.core.workspace import read_json
from xkd_cli.experiments.report.collect import RunInfo, greedy_eval, relative, task_headline
from xkd_cli.experiments.report.formatting import cell_text, metric_text
from xkd_cli.experiments.report.stats import mean_sd, wilson
from xkd_cli.config.methods import METHODS

ROLE_LABELS = {"student": "SFT student", "teacher": "Teacher"}


def default_runs(runs: list[RunInfo]) -> dict[str, RunInfo]:
    """The default run of each method: a distill run without ``sweep``; the one named after the method
    if there is one, else the newest."""
    chosen: dict[str, RunInfo] = {}
    for method in METHODS.names():
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


def seed_group(runs: list[RunInfo], group: str) -> dict[int, RunInfo]:
    """The runs the pipeline made once per seed for ``group`` (a method, or "student"): seed -> run, the
    newest per seed; sweep runs never belong to one."""
    found: dict[int, RunInfo] = {}
    for run in runs:
        seed = run.record.get("seed")
        if run.record.get("seed_group") == group and isinstance(seed, int) and not run.record.get("sweep"):
            found[seed] = run
    return dict(sorted(found.items()))


def seeded_cell(root: Path, group: dict[int, RunInfo], task: str, label: str,
                missing: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A Table-1 cell over seeds: mean ± sample sd of the runs' greedy metrics, each run's cell kept in
    ``members`` (with its seed) so every number still names its file."""
    members = []
    for seed, run in group.items():
        cell = greedy_eval(run, root)
        if cell is None:
            missing.append({"task": task, "where": f"Table 1 · {label} seed {seed}", "run": run.name,
                            "reason": "no greedy evaluation", "fix": f"xkd eval --model {run.name} --task {task}"})
            continue
        members.append({**cell, "seed": seed})
    if not members:
        return None
    mean, sd = mean_sd([m["value"] for m in members])
    return {"value": mean, "sd": sd, "n": len(members), "seeds": [m["seed"] for m in members],
            "metric": members[0]["metric"], "run": ", ".join(m["run"] for m in members),
            "split": members[0]["split"], "examples": members[0]["examples"],
            "source": members[0]["source"], "members": members}


def build_table1(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                 missing: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{"key": "student", "label": ROLE_LABELS["student"], "method": None, "cells": {}}]
    rows += [{"key": m, "label": METHODS.get(m).paper_name, "method": m, "cells": {}} for m in METHODS.names()]
    rows.append({"key": "teacher", "label": ROLE_LABELS["teacher"], "method": None, "cells": {}})
    metrics: dict[str, str | None] = {}
    best: dict[str, list[str]] = {}
    ran: set[str] = set()  # methods with a run in some task: the others were not part of the experiment
    for task in tasks:
        defaults = default_runs(runs[task])
        picked = {**defaults, "student": role_run(runs[task], "student", defaults),
                  "teacher": role_run(runs[task], "teacher", defaults)}
        for row in rows:
            group = seed_group(runs[task], row["method"] or row["key"]) if row["key"] != "teacher" else {}
            if group:
                ran.add(row["key"])
                row["cells"][task] = seeded_cell(root, group, task, row["label"], missing)
                continue
            run = picked.get(row["key"])
            if run is not None:
                ran.add(row["key"])
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
            or task_headline(task)
    rows = [row for row in rows if not row["method"] or row["key"] in ran]
    return {"columns": tasks, "metrics": metrics, "rows": rows, "best": best}


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
            judged = data.get("judged") if isinstance(data.get("judged"), int) else 0
            intervals = {f"{k}_ci": wilson(data[f"{k}_rate"] * judged / 100.0, judged)
                         if isinstance(data.get(f"{k}_rate"), (int, float)) else None for k in ("win", "lose")}
            rows.append({"task": task, "a": data.get("a", run.record.get("a")), "b": data.get("b", run.record.get("b")),
                         **{k: data.get(k) for k in ("win_rate", "tie_rate", "lose_rate", "inconsistency_rate",
                                                     "judged", "unparsed")},
                         **intervals,
                         "judge_model": (data.get("judge") or {}).get("model"), "split": data.get("split"),
                         "run": run.name, "source": relative(path, root)})
    return rows


def table1_cells(t1: dict[str, Any], row: dict[str, Any], best: str) -> list[str]:
    """A Table-1 row's cells as text, the best distilled method of each task marked with ``best``."""
    cells = []
    for task in t1["columns"]:
        cell = row["cells"][task]
        text = cell_text(cell["value"] if cell else None)
        if cell and "members" in cell:
            text += f" ± {cell_text(cell['sd'])} ({cell['n']})" if cell["sd"] is not None else f" ({cell['n']})"
        cells.append(best.format(text) if row["key"] in t1["best"][task] else text)
    return cells


def table1_header(table1: dict[str, Any]) -> list[str]:
    return [f"{task} ({metric_text(table1['metrics'][task])})" for task in table1["columns"]]
