#!/usr/bin/env python3
"""Reproduce a Table-1 style comparison on the bundled tasks with the real `xkd` commands.

For each task: SFT a teacher (tiny-t5-large) and a student (tiny-t5-small) with the shipped recipes,
sample the teacher once per training prompt (`gen-teacher`), distil with all seven methods from the
SFT'd pair with the default hyperparameters, evaluate every model, and print a Markdown table
(rows: SFT student, the methods, the teacher; columns: tasks; each cell: headline metric and the
run's wall time). Finished steps are skipped, so an interrupted run picks up where it stopped.

    .venv/bin/python scripts/table1.py [--tasks synth-sum,synth-mt,synth-gsm] [--runs-dir runs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["seqkd", "seqxkd", "skd", "sxkd", "gkd", "gxkd", "minillm"]
XKD = str(Path(sys.executable).with_name("xkd"))


def xkd(*args: str) -> dict:
    started = time.time()
    cmd = [XKD, *args, "--json"]
    print("+ xkd " + " ".join(args), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    result = json.loads(out)
    result["_wall_s"] = round(time.time() - started, 1)
    return result


def done(root: Path, task: str, name: str) -> bool:
    record = root / task / name / "run.json"
    return record.is_file() and json.loads(record.read_text()).get("status") == "completed"


def wall(root: Path, task: str, name: str) -> float:
    return json.loads((root / task / name / "run.json").read_text()).get("duration_s", float("nan"))


def evaluate(root: Path, task: str, name: str) -> tuple[float, str]:
    metrics_files = sorted((root / task / name / "eval").glob("*-greedy/metrics.json"))
    if not metrics_files:
        xkd("eval", "--model", name, "--task", task)
        metrics_files = sorted((root / task / name / "eval").glob("*-greedy/metrics.json"))
    result = json.loads(metrics_files[0].read_text())
    return result["metrics"][result["headline"]], result["headline"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="synth-sum,synth-mt,synth-gsm")
    parser.add_argument("--runs-dir", default=os.environ.get("XKD_RUNS_DIR", "runs"))
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    root = Path(args.runs_dir)
    os.environ["XKD_RUNS_DIR"] = str(root)
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    cells: dict[tuple[str, str], str] = {}
    headlines = {}
    for task in tasks:
        for model, role in (("tiny-t5-large", "teacher"), ("tiny-t5-small", "student")):
            if not done(root, task, role):
                xkd("sft", "--recipe", f"recipes/sft/{model}-{task}.yaml", "--name", role, "--overwrite")
        if any(m.startswith("seq") for m in methods) and not done(root, task, "teacher-samples"):
            xkd("gen-teacher", "--task", task, "--teacher", "teacher", "--num-samples", "1")
        for method in methods:
            if not done(root, task, method):
                xkd("distill", "--task", task, "--method", method, "--name", method, "--overwrite")
        for name in ["student", *methods, "teacher"]:
            score, headlines[task] = evaluate(root, task, name)
            cells[(name, task)] = f"{score:.2f} ({wall(root, task, name):.0f} s)"
    header = "| model | " + " | ".join(f"{t} ({headlines[t]})" for t in tasks) + " |"
    lines = [header, "|" + "---|" * (len(tasks) + 1)]
    labels = {"student": "SFT student (tiny-t5-small)", "teacher": "teacher (tiny-t5-large)"}
    for name in ["student", *methods, "teacher"]:
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells[(name, t)] for t in tasks) + " |")
    table = "\n".join(lines)
    (root / "table1.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
