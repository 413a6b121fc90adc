"""Cost per step of distilling across tokenizers (``--cross-tokenizer uld|shared``) against the same method with
one tokenizer.

    python bench/cross_tokenizer.py                # skd and gkd, 30 steps each, 3 repeats, on synth-sum
    python bench/cross_tokenizer.py --steps 10 --repeats 1     # smoke test

Teacher ``tiny-gpt-large`` (byte-level BPE) in every run; the student is ``tiny-gpt-small`` (the same BPE
tokenizer: the ordinary loss) or ``tiny-gpt-uni`` (a Unigram tokenizer: ``--cross-tokenizer uld`` or
``shared``). The two students have the same layers and width, so the difference is the re-tokenisation,
the alignment and the loss. The models are the untrained built-in ones: cost per step does not depend on
what they learned, except through the length of gkd's samples, which the summary states (``sample_tokens``).

Every run is a fresh ``python -m xkd_cli distill`` subprocess. The time per step is the training loop's own
clock (``elapsed_s`` in ``train_log.jsonl``) from step 5 to the last step, so start-up, model loading and the
first steps' warm-up are left out; the median over repeats, which run interleaved so that other load on the
machine hits every configuration alike. Writes ``cross_tokenizer.json`` and ``cross_tokenizer.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
TEACHER = "tiny-gpt-large"
CONFIGS = [  # (label, method, student, cross-tokenizer flag)
    ("skd, one tokenizer", "skd", "tiny-gpt-small", "off"),
    ("skd, uld", "skd", "tiny-gpt-uni", "uld"),
    ("skd, shared", "skd", "tiny-gpt-uni", "shared"),
    ("gkd, one tokenizer", "gkd", "tiny-gpt-small", "off"),
    ("gkd, uld", "gkd", "tiny-gpt-uni", "uld"),
    ("gkd, shared", "gkd", "tiny-gpt-uni", "shared"),
]
SKIP = 5  # steps left out at the start (allocator and cache warm-up)


def step_seconds(run: Path) -> tuple[float, float | None]:
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    first = next(r for r in rows if r["step"] == SKIP)
    last = rows[-1]
    aligned = [r["aligned_fraction"] for r in rows if "aligned_fraction" in r]
    return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"]), (
        statistics.mean(aligned) if aligned else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    results: dict[str, list[float]] = {label: [] for label, *_ in CONFIGS}
    aligned: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XKD_RUNS_DIR": tmp, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for repeat in range(args.repeats):
            for label, method, student, flag in CONFIGS:
                name = f"{method}-{flag}-{repeat}"
                done = subprocess.run(
                    [sys.executable, "-m", "xkd_cli", "distill", "--task", "synth-sum", "--method", method,
                     "--teacher", TEACHER, "--student", student, "--cross-tokenizer", flag, "--name", name,
                     "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--log-every", "1",
                     "--device", "cpu", "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
                if done.returncode != 0:
                    sys.exit(f"{label} failed:\n{done.stderr[-2000:]}")
                seconds, fraction = step_seconds(Path(tmp) / "synth-sum" / name)
                results[label].append(seconds)
                aligned[label] = fraction
                print(f"{label:22s} repeat {repeat + 1}: {seconds:.3f} s/step", flush=True)
    rows = []
    for label, method, student, flag in CONFIGS:
        same = statistics.median(results[f"{method}, one tokenizer"])
        median = statistics.median(results[label])
        rows.append({"config": label, "method": method, "student": student, "cross_tokenizer": flag,
                     "seconds_per_step": median, "all": results[label], "relative": median / same,
                     "aligned_fraction": aligned[label]})
    record = {"when": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"), "teacher": TEACHER,
              "steps": args.steps, "skip": SKIP, "repeats": args.repeats, "batch_size": args.batch_size, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cross_tokenizer.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [f"# Cost per step across tokenizers ({record['when']}, {record['machine']})", "",
             f"Teacher {TEACHER}; batch {args.batch_size}; steps {SKIP}–{args.steps}, median of {args.repeats} "
             "interleaved repeats (`python bench/cross_tokenizer.py`).", "",
             "| configuration | student | s / step | × one tokenizer | aligned positions |", "|---|---|---:|---:|---:|"]
    for r in rows:
        share = "—" if r["aligned_fraction"] is None else f"{100 * r['aligned_fraction']:.0f}%"
        lines.append(f"| {r['config']} | {r['student']} | {r['seconds_per_step']:.3f} | {r['relative']:.2f} | {share} |")
    (args.out / "cross_tokenizer.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
