"""Start-up time of refusals: how long `xkd` takes to refuse bad input (a bad flag, an existing run, a
missing file, a bad recipe), each in a fresh process, and whether torch was imported before it answered.

    .venv/bin/python bench/refusals.py [--repeats 3]

Prints one line per case (median wall seconds, exit code, torch imported?). Timings are wall clock on
whatever else the machine is doing: measure on an idle machine."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the real entry point and reports, at exit, whether torch had been imported.
PROBE = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('\\nTORCH=%s\\n' % ('torch' in sys.modules))); "
         "from xkd_cli.cli.app import main; main(sys.argv[1:])")


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    runs = tmp / "runs"
    for name, kind in (("sft-tiny-t5-small", "sft"), ("gxkd", "distill")):
        run = runs / "synth-sum" / name
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"kind": kind, "status": "completed", "task": "synth-sum",
                                                  "name": name}))
    bad = tmp / "bad.yaml"
    bad.write_text("modle: tiny-t5-small\n")
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
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XKD_RUNS_DIR": str(Path(tmp) / "runs"), "HF_HUB_OFFLINE": "1"}
        for label, argv in cases(Path(tmp)):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env)
                times.append(time.perf_counter() - start)
            torch = "TORCH=True" in proc.stderr
            error = next((line for line in proc.stderr.splitlines() if line.startswith(("error", "Error", "Usage"))), "")
            print(f"{label:26s} {statistics.median(times):5.2f} s  exit {proc.returncode}  "
                  f"torch {'imported' if torch else 'not imported'}  {error[:90]}")


if __name__ == "__main__":
    main()
