"""The teacher cache (``xkd distill --teacher-cache``) on a 3-epoch run: speed-up and effect on the loss.

    python bench/teacher_cache.py                 # default: T5 pair, skd on synth-mt, 3 repeats
    python bench/teacher_cache.py --quick         # smoke test (a few minutes on 2 CPU cores)
    OMP_NUM_THREADS=4 python bench/teacher_cache.py --device cpu --repeats 5

What it does, in one invocation:
1. fine-tunes the teacher (``tiny-t5-large``) briefly with ``xkd sft`` (``--teacher-sft-steps``), once, so
   that its next-token distributions are peaked like a real teacher's (a random tiny model is nearly
   uniform: the worst case for top-k);
2. distils it into ``tiny-t5-small`` with ``--method skd`` (forward KL on the ground truth: every batch
   is off-policy, so every one can be served by the cache) for exactly 3 epochs of the first
   ``--examples`` training examples;
3. in each repeat, interleaved so that load from other processes hits all alike: no cache; ``full``
   cold (empty cache: epoch 1 fills it, epochs 2–3 read it) and warm (a second run that finds it
   full); ``topk`` (k = ``--k``) cold and warm;
4. once more for each k in ``--k-values``, the top-k loss error.

Every run is a fresh ``python -m xkd_cli distill`` subprocess; the time reported is the training loop's
own (``train_seconds``: teacher and student passes, cache reads and writes, optimizer), the median over
repeats, also split into the median step time of epoch 1 and of epochs 2–3 (robust to a busy
machine); and separately the process wall time (which adds start-up, model loading and the one-off
hash of the teacher's weights for the cache key). Loss effect: per-step losses and final weights
against the run without cache (full mode: expected identical, or float noise when batch layouts
differ between epochs); step-1 relative loss error for each k (same student, so it isolates the
approximation), with the mean teacher tail mass p_T(outside top-k) read back from the stored entries.

Writes ``teacher_cache.json`` and ``teacher_cache.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
TASK = "synth-mt"
TRAIN_EXAMPLES = 2000  # synth-mt's train split


def xkd(*args: str, runs: Path, device: str) -> tuple[dict, float]:
    env = {**os.environ, "XKD_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xkd_cli", *args, "--device", device, "--json"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"xkd {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout), wall


def step_log(runs: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (runs / TASK / name / "train_log.jsonl").read_text().splitlines()]


def step_losses(runs: Path, name: str) -> list[float]:
    return [row["loss"] for row in step_log(runs, name)]


def step_seconds(runs: Path, name: str) -> list[float]:
    """Wall time of each optimizer step (the log's cumulative ``elapsed_s``, differenced)."""
    elapsed = [row["elapsed_s"] for row in step_log(runs, name)]
    return [b - a for a, b in zip([0.0, *elapsed], elapsed)]


def max_weight_diff(runs: Path, a: str, b: str) -> float:
    from safetensors.torch import load_file

    wa = load_file(runs / TASK / a / "model" / "model.safetensors")
    wb = load_file(runs / TASK / b / "model" / "model.safetensors")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def mean_tail_mass(cache_dir: Path) -> float:
    import torch
    from safetensors.torch import load_file

    tails = [load_file(str(p))["tail"] for p in cache_dir.rglob("*.safetensors")]
    return float(torch.cat(tails).exp().mean()) if tails else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=None, help="workspace (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=96, help="training examples (3 epochs of them)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-input-len", type=int, default=48)
    parser.add_argument("--max-output-len", type=int, default=64)
    parser.add_argument("--teacher", default="tiny-t5-large")
    parser.add_argument("--student", default="tiny-t5-small")
    parser.add_argument("--teacher-sft-steps", type=int, default=150)
    parser.add_argument("--k", type=int, default=64, help="k of the timed top-k runs")
    parser.add_argument("--k-values", default="1,8,64,256,2048", help="k values of the loss-error runs")
    parser.add_argument("--quick", action="store_true", help="1 repeat, 32 examples, 30 SFT steps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.examples, args.teacher_sft_steps = 1, 32, 30

    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="xkd-bench-cache-"))
    fraction = args.examples / TRAIN_EXAMPLES
    per_epoch = math.ceil(args.examples / args.batch_size)
    steps = 3 * per_epoch
    lengths = ["--max-input-len", str(args.max_input_len), "--max-output-len", str(args.max_output_len)]

    print(f"workspace {runs}; teacher SFT ({args.teacher_sft_steps} steps)...", flush=True)
    teacher = f"sft-{args.teacher}"
    if not (runs / TASK / teacher / "model").is_dir():
        xkd("sft", "--model", args.teacher, "--task", TASK, "--name", teacher, "--max-steps", str(args.teacher_sft_steps),
            "--batch-size", "16", "--lr", "1e-3", *lengths, "--overwrite", runs=runs, device=args.device)

    base = ["distill", "--method", "skd", "--task", TASK, "--teacher", teacher, "--student", args.student,
            "--train-fraction", repr(fraction), "--batch-size", str(args.batch_size), "--max-steps", str(steps),
            "--warmup-steps", "0", "--log-every", "1", *lengths, "--overwrite"]
    cache_root = runs / TASK / ".teacher-cache"
    variants = {  # name -> (extra flags, empty the cache first)
        "off": ([], False),
        "full-cold": (["--teacher-cache", "full"], True),
        "full-warm": (["--teacher-cache", "full"], False),
        "topk-cold": (["--teacher-cache", "topk", "--teacher-cache-k", str(args.k)], True),
        "topk-warm": (["--teacher-cache", "topk", "--teacher-cache-k", str(args.k)], False),
    }
    timings: dict[str, list[dict]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, (flags, cold) in variants.items():
            if cold:
                shutil.rmtree(cache_root, ignore_errors=True)
            result, wall = xkd(*base, *flags, "--name", name, runs=runs, device=args.device)
            cache = result.get("teacher_cache") or {}
            per_step = step_seconds(runs, name)
            timings[name].append({"train_s": result["train_seconds"], "wall_s": round(wall, 2),
                                  "epoch1_step_s": statistics.median(per_step[:per_epoch]),
                                  "later_step_s": statistics.median(per_step[per_epoch:]),
                                  "hits": cache.get("hits"), "misses": cache.get("misses"),
                                  "stored_bytes": cache.get("stored_bytes")})
            print(f"repeat {repeat + 1}/{args.repeats} {name:10s} train {result['train_seconds']:7.2f} s  "
                  f"wall {wall:6.1f} s  hits {cache.get('hits')} misses {cache.get('misses')}", flush=True)

    reference = step_losses(runs, "off")
    summary = {}
    for name, rows in timings.items():
        losses = step_losses(runs, name)
        summary[name] = {
            "train_s_median": statistics.median(r["train_s"] for r in rows),
            "epoch1_step_s": statistics.median(r["epoch1_step_s"] for r in rows),
            "later_step_s": statistics.median(r["later_step_s"] for r in rows),
            "wall_s_median": statistics.median(r["wall_s"] for r in rows),
            "train_s": [r["train_s"] for r in rows], "hits": rows[-1]["hits"], "misses": rows[-1]["misses"],
            "max_rel_loss_diff": max(abs(a - b) / abs(b) for a, b in zip(losses, reference)),
            "max_abs_weight_diff": max_weight_diff(runs, name, "off"),
        }
    base_train = summary["off"]["train_s_median"]
    for row in summary.values():
        row["speedup_train"] = base_train / row["train_s_median"]
        row["speedup_later_steps"] = summary["off"]["later_step_s"] / row["later_step_s"]
        row["speedup_wall"] = summary["off"]["wall_s_median"] / row["wall_s_median"]

    # Top-k loss error: one step (same student, so only the approximation differs) for each k.
    one_step = [*base[:base.index("--max-steps")], "--max-steps", "1", *base[base.index("--max-steps") + 2:]]
    xkd(*one_step, "--name", "err-exact", runs=runs, device=args.device)
    exact = step_losses(runs, "err-exact")[0]
    errors = []
    for k in [int(v) for v in args.k_values.split(",")]:
        shutil.rmtree(cache_root, ignore_errors=True)
        result, _ = xkd(*one_step, "--name", f"err-k{k}", "--teacher-cache", "topk", "--teacher-cache-k", str(k),
                        runs=runs, device=args.device)
        loss = step_losses(runs, f"err-k{k}")[0]
        errors.append({"k": k, "loss": loss, "exact": exact, "rel_error": (loss - exact) / exact,
                       "mean_tail_mass": mean_tail_mass(Path(result["teacher_cache"]["dir"])),
                       "bytes_per_sequence": result["teacher_cache"]["stored_bytes"] / max(1, result["teacher_cache"]["misses"])})
    shutil.rmtree(cache_root, ignore_errors=True)
    full, _ = xkd(*one_step, "--name", "err-full", "--teacher-cache", "full", runs=runs, device=args.device)
    full_bytes = full["teacher_cache"]["stored_bytes"] / max(1, full["teacher_cache"]["misses"])

    import torch

    setup = {"task": TASK, "method": "skd (fkl)", "teacher": f"{args.teacher} after {args.teacher_sft_steps} SFT steps",
             "student": args.student, "examples": args.examples, "batch_size": args.batch_size, "steps": steps,
             "epochs": 3, "max_input_len": args.max_input_len, "max_output_len": args.max_output_len,
             "repeats": args.repeats, "device": args.device, "torch_threads": torch.get_num_threads(),
             "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
             "command": " ".join([Path(sys.executable).name, *sys.argv])}
    report = {"setup": setup, "timing": summary, "topk_error": errors, "full_bytes_per_sequence": full_bytes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "teacher_cache.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "teacher_cache.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = [f"Teacher cache, {s['task']} {s['method']}, {s['teacher']} → {s['student']}, {s['examples']} examples × "
             f"{s['epochs']} epochs = {s['steps']} steps of batch {s['batch_size']}; median of {s['repeats']}; "
             f"device {s['device']}, {s['torch_threads']} threads, load average {s['load_average'][0]:.1f} "
             f"({s['date']}).", "",
             "| run | 3-epoch train s | speed-up | s/step epoch 1 | s/step epochs 2–3 | speed-up epochs 2–3 | wall s | "
             "hits / misses | max rel. loss diff | max weight diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["timing"].items():
        hits = "–" if r["hits"] is None else f"{r['hits']} / {r['misses']}"
        lines.append(f"| {name} | {r['train_s_median']:.2f} | {r['speedup_train']:.2f}× | {r['epoch1_step_s']:.3f} | "
                     f"{r['later_step_s']:.3f} | {r['speedup_later_steps']:.2f}× | {r['wall_s_median']:.1f} | "
                     f"{hits} | {r['max_rel_loss_diff']:.1e} | {r['max_abs_weight_diff']:.1e} |")
    lines += ["", f"Top-k loss error at step 1 (full mode stores {report['full_bytes_per_sequence'] / 1024:.0f} KiB "
                  "per sequence):", "", "| k | rel. loss error | mean teacher tail mass | KiB / sequence |",
              "|---|---|---|---|"]
    for e in report["topk_error"]:
        lines.append(f"| {e['k']} | {e['rel_error']:+.2e} | {e['mean_tail_mass']:.2e} | {e['bytes_per_sequence'] / 1024:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
