"""What a response token costs to train with AVA and its baselines, against an ``xkd sft`` step on the same model.

    python bench/ava_cost.py                # tiny-t5-small and tiny-gpt-small, 3 repeats: bench/results/ava_cost.*
    python bench/ava_cost.py --quick        # one model, one repeat, a few steps

Each run is the real command in a fresh subprocess on the bundled preference task synth-sum-pref, at the same batch
size, learning rate and lengths: ``xkd sft`` (on the chosen responses), ``xkd reward-model`` (bt, ava-p, ava-d) and
``xkd align`` (dpo, ava-p, ava-d). A preference batch of B pairs is 2B responses, so B pairs are compared with 2B
demonstrations. The cost of a token is the training loop's own time (``elapsed_s`` of the step log, written every
step) from the end of the warm-up steps to the last step, over the response tokens those steps trained on (the log's
``tokens``: counted target positions, both sides of a pair). Methods run interleaved within each repeat, so load from
other processes hits all alike; the figure is the median over repeats and the ratio is to sft's median. DPO's
reference log-probabilities are computed once before the loop (the issue allows it); their one-off time is reported
apart, as the process wall time less the loop's.

Writes ``ava_cost.json`` and ``ava_cost.md`` to ``--out``.
"""

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

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
TASK = "synth-sum-pref"
RUNS = [("sft", None), ("reward-model", "bt"), ("reward-model", "ava-p"), ("reward-model", "ava-d"),
        ("align", "dpo"), ("align", "ava-p"), ("align", "ava-d")]


def run(command: str, method: str | None, model: str, *, steps: int, warmup: int, batch: int, runs: Path,
        device: str) -> dict:
    name = f"{command}-{method or 'nll'}-{model}"
    args = [sys.executable, "-m", "xkd_cli", command, "--model", model, "--task", TASK, "--name", name,
            "--max-steps", str(steps), "--log-every", "1", "--batch-size", str(batch), "--lr", "1e-4",
            "--warmup-steps", "0", "--train-fraction", "0.1", "--device", device, "--overwrite", "--json",
            *(["--method", method] if method else []), *(["--eval-pairs", "1"] if command == "reward-model" else [])]
    env = {**os.environ, "XKD_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(args[2:])} failed:\n{done.stderr[-2000:]}")
    log = [json.loads(line) for line in (runs / TASK / name / "train_log.jsonl").open()]
    timed = log[warmup:]
    seconds = timed[-1]["elapsed_s"] - log[warmup - 1]["elapsed_s"]
    tokens = sum(row["tokens"] for row in timed)
    loop = log[-1]["elapsed_s"]
    return {"seconds_per_token": seconds / tokens, "tokens_per_step": tokens / len(timed), "steps": len(timed),
            "loop_seconds": loop, "wall_seconds": wall}


def markdown(report: dict) -> str:
    lines = ["# The cost of a response token: AVA and its baselines against sft", "",
             f"{report['date']} · {report['machine']} · torch threads: {report['threads']} · "
             f"{report['repeats']} repeat(s) of {report['steps']} steps ({report['warmup']} warm-up) at batch "
             f"{report['batch']} on {TASK}", "",
             "| Model | Command | Method | µs / token (median) | × sft | tokens / step | process wall s (median) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for model, rows in report["models"].items():
        for row in rows:
            lines.append(f"| {model} | {row['command']} | {row['method'] or 'nll'} | {row['us_per_token']:.1f} | "
                         f"{row['ratio']:.2f} | {row['tokens_per_step']:.0f} | {row['wall_seconds']:.1f} |")
    lines += ["", "µs / token: the training loop's time after the warm-up steps over the response tokens trained on "
                  "(both sides of a pair). The process wall time adds start-up, loading and, for dpo, the reference "
                  "log-probabilities of the training pairs, computed once before the loop.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-t5-small", "tiny-gpt-small"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step; sft takes as many demonstrations")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.steps, args.warmup = args.models[:1], 1, 6, 2
    found: dict[str, dict[tuple[str, str | None], list[dict]]] = {m: {} for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for model in args.models:
                for command, method in RUNS:
                    batch = args.batch if command != "sft" and method != "ava-d" else 2 * args.batch
                    result = run(command, method, model, steps=args.steps, warmup=args.warmup, batch=batch,
                                 runs=Path(tmp), device=args.device)
                    found[model].setdefault((command, method), []).append(result)
                    print(f"repeat {repeat + 1} {model} {command} {method or 'nll'}: "
                          f"{1e6 * result['seconds_per_token']:.1f} µs/token", flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs", "device": args.device,
              "threads": os.environ.get("OMP_NUM_THREADS", "default"), "repeats": args.repeats, "steps": args.steps,
              "warmup": args.warmup, "batch": args.batch, "models": {}}
    for model, by_run in found.items():
        base = statistics.median(r["seconds_per_token"] for r in by_run[("sft", None)])
        report["models"][model] = [
            {"command": command, "method": method,
             "us_per_token": 1e6 * statistics.median(r["seconds_per_token"] for r in results),
             "ratio": statistics.median(r["seconds_per_token"] for r in results) / base,
             "tokens_per_step": statistics.median(r["tokens_per_step"] for r in results),
             "wall_seconds": statistics.median(r["wall_seconds"] for r in results), "runs": results}
            for (command, method), results in by_run.items()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ava_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "ava_cost.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
