"""``xkd pipeline`` (a whole experiment from one recipe) and ``xkd report`` (its tables and figures): thin
commands over ``xkd_cli.experiments``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xkd_cli.cli.options import SWITCH, Json, Overwrite, RunsDir, Task
from xkd_cli.core.ui import console, emit, out, table
from xkd_cli.core.workspace import runs_root

PIPELINE_EPILOG = ("Examples:\n\n  xkd pipeline recipes/pipeline/offline-quick.yaml\n\n"
                   "  xkd pipeline recipes/pipeline/paper-table1-large-small.yaml --dry-run\n\n"
                   "  xkd pipeline recipes/pipeline/offline-ablation-lambda.yaml --runs-dir ./lambda-runs")


def pipeline(
    recipe: Annotated[Path, typer.Argument(help="Pipeline recipe (YAML): tasks, teacher, student, methods, sweeps.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar=SWITCH, help="Validate the recipe and print the plan; no compute.")] = False,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Run a whole experiment (SFT → gen-teacher → distill → eval → diversity → judge), skipping done steps."""
    from xkd_cli.experiments.pipeline import run_pipeline  # the planner and the report load numpy: not for --help

    result = run_pipeline(recipe, runs_root=runs_root(runs_dir), dry_run=dry_run, overwrite=overwrite)
    emit(result, as_json=json, render=render_pipeline)


def render_pipeline(result: dict) -> None:
    rows = [(s["step"], s["kind"], f"{s['task']}/{s['name']}", s.get("note", ""),
             "dry run: " + s["state"] if result.get("dry_run") else
             ("skipped" + (f" ({s['reason']})" if s.get("reason") else "") if s.get("skipped")
              else f"{s.get('seconds', 0):.0f} s"))
            for s in result["steps"]]
    out.print(table(f"pipeline {result['recipe']}", ["#", "step", "run", "note", "status"], rows))
    if not result.get("dry_run"):
        render_report(result["report"])
        out.print(f"pipeline total: {result['seconds']:.0f} s")


REPORT_EPILOG = ("Examples:\n\n  xkd report\n\n  xkd report --task synth-mt --output ./report-mt\n\n"
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
    from xkd_cli.experiments.report.build import build_report  # loads numpy: not for --help or a refusal

    result = build_report(runs_root(runs_dir), task, output)
    emit(result, as_json=json, render=render_report)


def render_report(report: dict[str, Any]) -> None:
    from xkd_cli.experiments.report.formatting import cell_text, metric_text  # the report's modules load numpy
    from xkd_cli.experiments.report.tables import table1_cells, table1_header  # the report's modules load numpy
    from xkd_cli.experiments.report.write import (ALIGNMENT_HEADER, alignment_cells, interval_text,  # numpy
                                                  reward_model_cells, reward_model_header, reward_model_kinds)

    t1 = report["table1"]
    rows = []
    for row in t1["rows"]:
        rows.append((row["label"], *table1_cells(t1, row, "[bold]{} *[/]")))
    out.print(table("Table 1 · headline metric, greedy decoding (* best distilled method; a ± sd (n seeds))",
                           ["model", *table1_header(t1)], rows))
    if report["judge"]:
        out.print(table("Table 2 · LLM judge", ["task", "A vs B", "win", "tie", "lose", "orders disagree", "judged",
                                                       "judge"],
                               [(r["task"], f"{r['a']} vs {r['b']}",
                                 cell_text(r["win_rate"], "%") + interval_text(r.get("win_ci")),
                                 cell_text(r["tie_rate"], "%"),
                                 cell_text(r["lose_rate"], "%") + interval_text(r.get("lose_ci")),
                                 cell_text(r["inconsistency_rate"], "%"), r["judged"], r["judge_model"])
                                for r in report["judge"]]))
    if report["differences"]:
        out.print(table("Paired differences · X-variant − baseline, 95% paired bootstrap over examples and seeds",
                        ["task", "difference", "metric", "Δ", "95% interval", "seeds", "examples"],
                        [(r["task"], r["label"], metric_text(r["metric"]), f"{r['diff']:+.2f}", f"[{r['low']:+.2f}, {r['high']:+.2f}]",
                          r["seeds"], r["examples"]) for r in report["differences"]]))
    if report["reward_models"]:
        kinds = reward_model_kinds(report)
        out.print(table("Reward models · preference accuracy on the held-out pairs (a ± sd (n seeds); pooled with its "
                        "95% Wilson interval)", reward_model_header(kinds),
                        [reward_model_cells(r, kinds) for r in report["reward_models"]]))
    if report["alignment"]:
        out.print(table("Alignment · the aligned policies (Δ: against the baseline, 95% paired bootstrap)",
                        ALIGNMENT_HEADER, [alignment_cells(r) for r in report["alignment"]]))
    out_dir = Path(report["output"])
    for fig in report.get("difference_figures") or []:
        out.print(f"figure (paired differences): {out_dir / fig['png']} (and .svg)")
    for fig in report["figures"]:
        out.print(f"figure ({fig['paper_figure']}): {out_dir / fig['png']} (and .svg)")
    for div in report["diversity"]:
        if div["png_path"]:
            out.print(f"diversity figure: {Path(report['runs_dir']) / div['png_path']}")
    for m in report["missing"]:
        console.print(f"[yellow]not in the report:[/] {m['where']} ({m['task']}/{m['run']}): {m['reason']} — "
                      f"{m['fix']}", soft_wrap=True)  # one line: its path and command stay whole
    others = ", ".join(Path(path).name for key, path in report["files"].items() if key != "md")
    out.print(f"report: {report['files']['md']} (and {others})")
