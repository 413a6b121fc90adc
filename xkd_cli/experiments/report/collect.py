"""Reading the runs directory: the tasks with runs, their completed runs, and each run's greedy evaluation."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_cli.core.workspace import RUN_RECORD, find_runs, read_json
from xkd_cli.data.tasks import TASKS


@dataclass
class RunInfo:
    task: str
    name: str
    path: Path
    record: dict[str, Any]

    @property
    def kind(self) -> str | None:
        return self.record.get("kind")


def relative(path: Path, root: Path) -> str:
    """A path as written in the report: relative to the runs directory where possible."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def link(path: Path, out_dir: Path) -> str:
    """A path as linked from a report file in ``out_dir``."""
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def _task_order(name: str) -> tuple[int, str]:
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
    return TASKS.get(task).eval_split if task in TASKS else None


def task_headline(task: str) -> str | None:
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
                    "examples": data.get("examples"), "source": relative(path, root)}
    return None
