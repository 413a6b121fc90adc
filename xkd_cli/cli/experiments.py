"""``xkd pipeline``: a whole experiment from one recipe, as a thin command over ``xkd_cli.experiments``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xkd_cli.cli.options import Json, Overwrite, RunsDir
from xkd_cli.core.ui import emit, out, table
from xkd_cli.core.workspace import runs_root
from xkd_cli.experiments.pipeline import run_pipeline
from xkd_cli.experiments.report import render as render_report

PIPELINE_EPILOG = ("Examples:\n\n  xkd pipeline recipes/pipeline/offline-quick.yaml\n\n"
                   "  xkd pipeline recipes/pipeline/paper-table1-large-small.yaml --dry-run\n\n"
                   "  xkd pipeline recipes/pipeline/offline-ablation-lambda.yaml --runs-dir ./lambda-runs")


def pipeline(
    recipe: Annotated[Path, typer.Argument(help="Pipeline recipe (YAML): tasks, teacher, student, methods, sweeps.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe and print the plan; no compute.")] = False,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Run a whole experiment (SFT → gen-teacher → distill → eval → diversity → judge), skipping done steps."""
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
