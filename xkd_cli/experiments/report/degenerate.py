"""Runs whose samples degenerated: a distilled student that repeats itself (MiniLLM at an unsuitable learning
rate once answered every prompt with one word repeated). Two signs are read from what the runs left on disk:

- the step log (``train_log.jsonl``) of a run that samples logs ``sample_distinct``, its samples' mean
  distinct-token share: a run whose last logged share fell below :data:`FALL` times its first is flagged;
- the greedy evaluation (``eval/<split>-greedy/predictions.jsonl``): predictions whose mean distinct-word
  share is below :data:`FALL` times the references' is flagged.

A flag is a warning next to Table 1, never a change to its numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xkd_cli.core.jsonl import read_rows
from xkd_cli.experiments.report.collect import RunInfo, relative

# A share that fell below this fraction of where it started (or of the references') marks degeneration: normal
# samples of the bundled tasks keep 0.7-0.9 of their tokens distinct, one word repeated keeps 1/length.
FALL = 0.5


def distinct_share(text: str) -> float | None:
    """Distinct words / words of a text (None for an empty one)."""
    words = text.split()
    return len(set(words)) / len(words) if words else None


def _mean(values: list[float | None]) -> float:
    """The mean, an empty text counting as 0 (an empty answer is degenerate too)."""
    return sum(v or 0.0 for v in values) / len(values) if values else 0.0


def log_signal(run: RunInfo) -> tuple[float, float] | None:
    """(first, last) logged ``sample_distinct`` of a run, or None if it logs none."""
    path = run.path / "train_log.jsonl"
    if not path.is_file():
        return None
    shares = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line).get("sample_distinct")
        except (json.JSONDecodeError, AttributeError):
            continue  # a torn line of an interrupted run
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shares.append(float(value))
    return (shares[0], shares[-1]) if shares else None


def eval_signal(run: RunInfo) -> tuple[float, float, Path] | None:
    """(predictions' mean distinct-word share, references', file) of the run's first greedy evaluation."""
    for path in sorted((run.path / "eval").glob("*-greedy/predictions.jsonl")):
        rows = [r for r in read_rows(path, repair=False) if isinstance(r.get("prediction"), str)]
        if rows:
            return (_mean([distinct_share(r["prediction"]) for r in rows]),
                    _mean([distinct_share(str(r.get("reference", ""))) for r in rows]), path)
    return None


def build_degenerate(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]]) -> list[dict[str, Any]]:
    """One entry per distilled run whose samples degenerated, with what shows it and the file it is read from."""
    found = []
    for task in tasks:
        for run in runs[task]:
            if run.kind != "distill":
                continue
            reasons, sources = [], []
            logged = log_signal(run)
            if logged is not None and logged[1] < FALL * logged[0]:
                reasons.append(f"its training samples' distinct-token share fell from {logged[0]:.2f} to "
                               f"{logged[1]:.2f}")
                sources.append(relative(run.path / "train_log.jsonl", root))
            evaluated = eval_signal(run)
            if evaluated is not None and evaluated[0] < FALL * evaluated[1]:
                reasons.append(f"its greedy predictions keep {evaluated[0]:.2f} of their words distinct, the "
                               f"references {evaluated[1]:.2f}")
                sources.append(relative(evaluated[2], root))
            if reasons:
                found.append({"task": task, "run": run.name, "method": run.record.get("method"),
                              "reason": "; ".join(reasons), "sources": sources})
    return found
