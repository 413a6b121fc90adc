"""Start-up time of refusals: how long `xkd` takes to refuse bad input (a bad flag, an existing run, a
missing file, a bad recipe, a task or model typo, a broken task file or data row, distill with nothing to distil),
each in a fresh process, and whether torch was imported before it answered.

    .venv/bin/python bench/refusals.py [--repeats 3] [--out bench/results]

Prints one line per case (median wall seconds, exit code, torch imported?) and writes refusals.json and
refusals.md under --out, with the machine's 1-minute load average before and after. Timings are wall clock on
whatever else the machine is doing: measure on an idle machine. Offline (HF_HUB_OFFLINE=1, an empty hub cache)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the real entry point and reports, at exit, whether torch had been imported.
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules))); "
         "from xkd_cli.cli.app import main; main(sys.argv[1:])")


def _children_cpu() -> float:
    """User + system seconds of the finished child processes so far."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    runs = tmp / "runs"
    for name, kind in (("sft-tiny-t5-small", "sft"), ("gxkd", "distill")):
        run = runs / "synth-sum" / name
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"kind": kind, "status": "completed", "task": "synth-sum",
                                                  "name": name}))
    bad = tmp / "bad.yaml"
    bad.write_text("modle: tiny-t5-small\n")
    (tmp / "bad-section.yaml").write_text("tasks: [synth-sum]\nteacher: {model: tiny-t5-large, max_step: 3}\n")
    (tmp / "bad-task.yaml").write_text("name: bad\ndata: [\n")
    (tmp / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n')
    (tmp / "broken-task.yaml").write_text("data: ./broken.jsonl\nmetric: exact\n")
    return [
        ("bad flag", ["sft", "--modle", "tiny-t5-small"]),
        ("bad value", ["sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--lr", "-1"]),
        ("existing sft run", ["sft", "--model", "tiny-t5-small", "--task", "synth-sum"]),
        ("existing distill run", ["distill", "--task", "synth-sum", "--method", "gxkd"]),
        ("missing --data file", ["sft", "--model", "tiny-t5-small", "--task", "xsum", "--data", str(tmp / "no.jsonl")]),
        ("bad recipe key", ["sft", "--recipe", str(bad)]),
        ("missing recipe", ["sft", "--recipe", str(tmp / "no.yaml")]),
        ("pipeline: missing recipe", ["pipeline", str(tmp / "no.yaml")]),
        ("pipeline: bad recipe key", ["pipeline", str(bad)]),
        ("pipeline: bad section key", ["pipeline", str(tmp / "bad-section.yaml")]),
        ("task name typo", ["sft", "--model", "tiny-t5-small", "--task", "synth-summ"]),
        ("eval: task name typo", ["eval", "--model", "tiny-t5-small", "--task", "synth-summ"]),
        ("model name typo", ["sft", "--model", "tiny-t5-smal", "--task", "synth-mt"]),
        ("missing model path", ["sft", "--model", "./no-such-model", "--task", "synth-mt"]),
        ("unknown hub id, offline", ["sft", "--model", "nobody/no-such-model", "--task", "synth-mt"]),
        ("malformed task YAML", ["sft", "--model", "tiny-t5-small", "--task", str(tmp / "bad-task.yaml")]),
        ("broken JSONL line", ["sft", "--model", "tiny-t5-small", "--task", str(tmp / "broken-task.yaml")]),
        ("distill, empty runs dir", ["distill", "--task", "synth-mt", "--method", "gxkd"]),
        ("gen-teacher, no teacher", ["gen-teacher", "--task", "synth-mt"]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XKD_RUNS_DIR": str(Path(tmp) / "runs"), "HF_HUB_OFFLINE": "1",
               "HF_HUB_CACHE": str(Path(tmp) / "hf-cache")}
        for label, argv in cases(Path(tmp)):
            times, cpu = [], []
            for _ in range(args.repeats):
                start, used = time.perf_counter(), _children_cpu()
                proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
                times.append(time.perf_counter() - start)
                cpu.append(_children_cpu() - used)
            torch = "TORCH=True" in proc.stderr
            error = next((line for line in proc.stderr.splitlines() if line.startswith(("error", "Error", "Usage"))), "")
            command = "xkd " + " ".join(a.replace(tmp, "TMP") for a in argv)
            rows.append(dict(case=label, command=command, seconds=round(statistics.median(times), 3),
                             cpu_seconds=round(statistics.median(cpu), 3),
                             exit=proc.returncode, torch=torch, error=error.replace(tmp, "TMP")[:160]))
            print(f"{label:26s} {statistics.median(times):5.2f} s  cpu {statistics.median(cpu):5.2f} s  exit {proc.returncode}  "
                  f"torch {'imported' if torch else 'not imported'}  {error[:90]}")
    meta = dict(date=time.strftime("%Y-%m-%d"), repeats=args.repeats, load_before=round(load_before, 2),
                load_after=round(os.getloadavg()[0], 2), cpus=os.cpu_count(), python=sys.version.split()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refusals.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [f"Refusals: median wall seconds of {args.repeats} fresh processes each, {meta['date']}, {meta['cpus']} "
             f"CPUs, 1-minute load average {meta['load_before']} before and {meta['load_after']} after "
             "(other jobs on the machine slow every case alike). CPU s: the process's own user + system time, "
             "which other jobs inflate far less than wall time; on an idle machine the wall time is about that.", "",
             "| case | wall s | CPU s | exit | torch imported | command |", "|---|---:|---:|---:|---|---|"]
    lines += [f"| {r['case']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['exit']} | "
              f"{'yes' if r['torch'] else 'no'} | `{r['command']}` |" for r in rows]
    (args.out / "refusals.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
