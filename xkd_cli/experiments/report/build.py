"""Building the report: collect the runs, make the tables and figures, write every file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xkd_cli import __version__
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import read_json, write_json, write_text
from xkd_cli.data.taskfile import get_task
from xkd_cli.experiments.report.alignment import build_alignment, build_reward_models
from xkd_cli.experiments.report.collect import collect_runs, task_dirs
from xkd_cli.experiments.report.differences import build_differences, draw_differences
from xkd_cli.experiments.report.figures import FIGURES_DIR, build_diversity, build_figures, draw_figure
from xkd_cli.experiments.report.tables import build_judge, build_table1
from xkd_cli.experiments.report.write import FILES, render_markdown, write_csvs


def default_output(root: Path, task: str | None) -> Path:
    return root / (f"report-{task}" if task else "report")


def build_report(root: Path, task: str | None = None, output: Path | None = None) -> dict[str, Any]:
    """Collect, draw and write the report; returns what report.json holds."""
    root = Path(root)
    available = task_dirs(root)
    if task is not None and task not in available:
        task = get_task(task).name  # a task file names its runs' folder; an unknown name lists the valid ones
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
    differences = build_differences(root, tasks, runs, missing)
    figures = build_figures(root, tasks, runs, table1, missing)
    diversity = build_diversity(root, out_dir, tasks, runs)
    reward_models = build_reward_models(root, tasks, runs, missing)
    alignment = build_alignment(root, tasks, runs, judge_rows, missing)
    evaluated = any(cell for row in table1["rows"] for cell in row["cells"].values()) or figures or reward_models
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
    difference_figures = draw_differences(differences, out_dir)
    report = {"xkd": __version__, "runs_dir": str(root.resolve()), "output": str(out_dir.resolve()),
              "tasks": tasks, "table1": table1, "judge": judge_rows, "differences": differences,
              "difference_figures": difference_figures, "figures": figures, "diversity": diversity,
              "reward_models": reward_models, "alignment": alignment,
              "missing": missing,
              "files": {key: str(out_dir / name) for key, name in FILES.items()}}
    write_csvs(report, out_dir)
    write_text(out_dir / FILES["md"], render_markdown(report, out_dir, root))
    write_json(out_dir / FILES["json"], report)
    return report


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
