"""Each X-variant against its baseline (SeqXKD − SeqKD, S-XKD − SKD, G-XKD − GKD): the paired difference
of the headline metric with a 95% paired-bootstrap interval over evaluation examples and seeds
(:mod:`.stats`), and one figure per task of those differences.

The per-example statistics come from each run's ``eval/<split>-greedy/scores.jsonl`` (written by
``xkd eval``), next to the ``metrics.json`` Table 1 reads.  The two methods are paired by seed (the runs
the pipeline made with ``seeds``; the default runs count as one seed when neither has seeds) and by
example id (the ids every paired run evaluated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from xkd_cli.core.jsonl import read_rows
from xkd_cli.evaluation.plots import metric_label, plot_intervals
from xkd_cli.experiments.report.collect import RunInfo, greedy_eval, relative
from xkd_cli.experiments.report.figures import FIGURES_DIR, counterpart, fixed_pairs
from xkd_cli.experiments.report.stats import paired_bootstrap
from xkd_cli.experiments.report.tables import default_runs, seed_group
from xkd_cli.config.methods import METHODS

SCORES = "scores.jsonl"


def _paired_runs(runs: list[RunInfo], x: str, b: str) -> dict[int | None, tuple[RunInfo, RunInfo]]:
    gx, gb = seed_group(runs, x), seed_group(runs, b)
    if gx or gb:
        return {seed: (gx[seed], gb[seed]) for seed in gx if seed in gb}
    defaults = default_runs(runs)
    return {None: (defaults[x], defaults[b])} if x in defaults and b in defaults else {}


def _sweep_groups(runs: list[RunInfo]) -> dict[str, tuple[dict, dict[int, RunInfo]]]:
    """Seeded sweep points of the pipeline (``seed_group`` "<method>-<param>-<value>"): group -> (its
    sweep record, seed -> run)."""
    groups: dict[str, tuple[dict, dict[int, RunInfo]]] = {}
    for run in runs:
        sweep, seed, group = run.record.get("sweep"), run.record.get("seed"), run.record.get("seed_group")
        if run.kind == "distill" and isinstance(sweep, dict) and isinstance(seed, int) and isinstance(group, str):
            groups.setdefault(group, (sweep, {}))[1][seed] = run
    return groups


def _scores(run: RunInfo, root: Path, task: str, missing: list[dict[str, Any]]) -> tuple[dict[str, list], str] | None:
    cell = greedy_eval(run, root)
    path = (root / cell["source"]).parent / SCORES if cell else None
    if path is None or not path.is_file():
        missing.append({"task": task, "where": "paired differences", "run": run.name,
                        "reason": "no per-example scores (scores.jsonl)",
                        "fix": f"xkd eval --model {run.name} --task {task}"})
        return None
    return {row["id"]: row["stats"] for row in read_rows(path, repair=False)}, relative(path, root)


def paired_difference(root: Path, task: str, pairs: dict[Any, tuple[RunInfo, RunInfo]],
                      missing: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The headline metric's difference X − B over ``pairs`` (seed → (run X, run B)) with its 95% paired-bootstrap
    interval, on the example ids every pair evaluated; None when no pair has per-example scores."""
    loaded = []
    for seed, (run_x, run_b) in pairs.items():
        sx, sb = _scores(run_x, root, task, missing), _scores(run_b, root, task, missing)
        if sx and sb:
            loaded.append((seed, run_x, run_b, sx, sb))
    if not loaded:
        return None
    ids = [i for i in loaded[0][3][0] if all(i in l[3][0] and i in l[4][0] for l in loaded)]
    if not ids:
        return None
    headline = greedy_eval(loaded[0][1], root)["metric"]
    xs = np.array([[l[3][0][i] for i in ids] for l in loaded])
    bs = np.array([[l[4][0][i] for i in ids] for l in loaded])
    return {"metric": headline, **paired_bootstrap(xs, bs, headline), "seed_values": [l[0] for l in loaded],
            "runs": [[l[1].name, l[2].name] for l in loaded], "sources": [[l[3][1], l[4][1]] for l in loaded]}


def build_differences(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                      missing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        candidates = []
        for x in METHODS.names():
            b = counterpart(x)
            if b:
                candidates.append((x, b, "", _paired_runs(runs[task], x, b)))
        for group, (sweep, by_seed) in sorted(_sweep_groups(runs[task]).items()):
            x = sweep.get("method")
            b = counterpart(x) if x in METHODS else None
            baseline = seed_group(runs[task], b) if b else {}
            pairs = {seed: (by_seed[seed], baseline[seed]) for seed in sorted(by_seed) if seed in baseline}
            if pairs:
                point = ", ".join(filter(None, [f"{sweep.get('param')}={sweep.get('value')}", fixed_pairs(sweep.get("set"))]))
                candidates.append((x, b, f" ({point})", pairs))
        for x, b, point, pairs in candidates:
            found = paired_difference(root, task, pairs, missing)
            if found is not None:
                rows.append({"task": task, "method": x, "baseline": b,
                             "label": f"{METHODS.get(x).paper_name}{point} − {METHODS.get(b).paper_name}",
                             "point": point.strip(" ()") or None, **found})
    return rows


def draw_differences(rows: list[dict[str, Any]], out_dir: Path) -> list[dict[str, Any]]:
    """One figure per task: each pair's difference and interval.  Returns the figures (paths relative to
    ``out_dir``)."""
    figures = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        stem = Path(FIGURES_DIR) / f"{task}-differences"
        seeds = sorted({r["seeds"] for r in mine})
        plot_intervals([r["label"] for r in mine], [r["diff"] for r in mine], [r["low"] for r in mine],
                       [r["high"] for r in mine], xlabel=f"Difference in {metric_label(mine[0]['metric'])} "
                       f"(95% paired bootstrap)", stem=out_dir / stem,
                       title=f"{task}: X-variant − baseline, {'/'.join(map(str, seeds))} seed(s)")
        figures.append({"task": task, "png": f"{stem}.png", "svg": f"{stem}.svg"})
    return figures
