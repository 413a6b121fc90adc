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

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xkd_cli.cli.options import Json, RunsDir, Task
from xkd_cli.core.ui import console, emit, out, table
from xkd_cli.core.workspace import runs_root
from xkd_cli.experiments.report.build import build_report
from xkd_cli.experiments.report.formatting import cell_text
from xkd_cli.experiments.report.tables import table1_cells, table1_header

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
                        [(r["task"], f"{r['a']} vs {r['b']}", cell_text(r["win_rate"], "%"),
                          cell_text(r["tie_rate"], "%"), cell_text(r["lose_rate"], "%"),
                          cell_text(r["inconsistency_rate"], "%"), r["judged"], r["judge_model"])
                         for r in report["judge"]]))
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
