"""Peak memory of a teacher-student pair during distillation: fp32, bf16, 8-bit and 4-bit teacher, with and
without LoRA on the student (plus QLoRA: 4-bit teacher and 4-bit student with LoRA).

    python bench/memory.py                 # ~300M-parameter T5 teacher, ~46M student: bench/results/memory.*
    python bench/memory.py --quick         # tiny models, a smoke test of the script (seconds per mode)

The models are random-initialised T5s built in code (no download) with the builtin tokenizer, the layout of
xkd's builtin tiny T5s scaled up: teacher d_model 1024, d_ff 2816, 16 heads, 12 + 12 layers (~290M
parameters); student d_model 512, d_ff 2048, 8 heads, 6 + 6 layers (~46M). They are saved once into a
temporary folder and every mode loads them from there like any local model, through xkd's own loading
code (``--load-in-8bit`` / ``--load-in-4bit`` go through bitsandbytes).

Each mode runs ``xkd distill --method gxkd --alpha 0`` (teacher forward, student forward + backward,
reward head, AdamW) for a few steps through the real engine (``run_distill``), in a fresh subprocess so
no mode inherits another's memory. The worker reports:

* ``peak RSS`` — ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the process's high-water mark over the
  whole run, loading included (what ``/usr/bin/time -v`` calls "maximum resident set size");
* ``RSS loaded`` — resident memory when both models are loaded, just before training;
* ``peak training`` — the high-water mark of the training steps alone: the kernel's mark is reset after
  loading (``echo 5 > /proc/self/clear_refs``, Linux) and ``VmHWM`` read at the end. Loading reads
  safetensors through ``mmap``, and those file pages count as resident while mapped, so the whole-run
  peak can be set by loading rather than by training;
* the weights each model holds (parameters + buffers, as stored: 8-bit weights take 1 byte per value,
  4-bit weights half a byte) and the number of trainable parameters.

The baseline runs the same job (same data, imports, steps) on xkd's builtin ``tiny-t5-base`` teacher and
``tiny-t5-small`` student (3M and 1M parameters); ``above baseline`` subtracts its peak, leaving what the
model sizes cost.

Two details keep the numbers honest. Linux folds a parent's resident high-water mark into its child's
``ru_maxrss`` across fork + exec, so the parent process never imports torch (a worker builds the models).
And the workers run with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB: otherwise glibc's dynamic threshold
rises after the first multi-MB tensor is freed, later tensors of that size come from the heap, and memory
freed after loading or quantizing a model stays resident, so RSS would report the allocator's history
rather than what the mode needs. "RSS loaded" can be below the weights: transformers maps safetensors
files lazily, and pages become resident when the first forward pass reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import workers  # bench/workers.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
MMAP_THRESHOLD = 128 * 1024  # bytes: glibc's own default, held fixed
BASELINE = "baseline (builtin tiny pair)"
DEFAULT_OUT = ROOT / "bench" / "results"

TEACHER = dict(d_model=1024, d_kv=64, num_heads=16, d_ff=2816, num_layers=12, num_decoder_layers=12)
STUDENT = dict(d_model=512, d_kv=64, num_heads=8, d_ff=2048, num_layers=6, num_decoder_layers=6)
QUICK_TEACHER = dict(d_model=256, d_kv=32, num_heads=8, d_ff=1024, num_layers=4, num_decoder_layers=4)
QUICK_STUDENT = dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=2, num_decoder_layers=2)

# name: (dtype, teacher quantization, student quantization, LoRA rank of the student)
MODES: dict[str, tuple[str, str | None, str | None, int]] = {
    "fp32": ("float32", None, None, 0),
    "fp32 + LoRA": ("float32", None, None, 8),
    "bf16": ("bfloat16", None, None, 0),
    "bf16 + LoRA": ("bfloat16", None, None, 8),
    "8-bit teacher": ("float32", "8bit", None, 0),
    "8-bit teacher + LoRA": ("float32", "8bit", None, 8),
    "4-bit teacher": ("float32", "4bit", None, 0),
    "4-bit teacher + LoRA": ("float32", "4bit", None, 8),
    "4-bit teacher + QLoRA student": ("float32", "4bit", "4bit", 8),
}


# -- measuring ----------------------------------------------------------------------------------------------


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _ru_maxrss_mib() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def _weights_mib(model) -> float:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    import bitsandbytes  # noqa: F401 - the baseline pays every import a mode pays
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from xkd_cli.training import distill
    from xkd_cli.config.core import build_config
    from xkd_cli.config.training import DistillConfig

    if spec["mode"] == "build":
        return build_models(Path(spec["folder"]), spec["quick"])
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                "bitsandbytes": bitsandbytes.__version__, "cuda": torch.cuda.is_available()}
    if spec["mode"] == BASELINE:  # the same job on xkd's builtin 3M / 1M-parameter pair: everything but model size
        spec = {**spec, "teacher": "tiny-t5-base", "student": "tiny-t5-small"}
        dtype, teacher_q, student_q, rank = "float32", None, None, 0
    else:
        dtype, teacher_q, student_q, rank = MODES[spec["mode"]]
    seen: dict = {}

    def record(role, loader):
        def load(*args, **kwargs):
            loaded = loader(*args, **kwargs)
            seen[role] = {"weights_mib": round(_weights_mib(loaded.model), 1),
                          "parameters": sum(p.numel() for p in loaded.model.parameters()),
                          "trainable": sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)}
            return loaded
        return load

    distill.load_trained_model = record("student", distill.load_trained_model)
    distill.load_model = record("teacher", distill.load_model)
    train = distill.run_training

    def run_training(*args, **kwargs):  # both models loaded: start the training high-water mark here
        seen["rss_loaded_mib"] = round(_status_mib("VmRSS") or 0.0, 1)
        seen["peak_reset"] = workers.reset_peak()
        return train(*args, **kwargs)

    distill.run_training = run_training
    flags = dict(task="synth-sum", method="gxkd", alpha=0.0, teacher=spec["teacher"], student=spec["student"],
                 name="bench", max_steps=spec["steps"], batch_size=spec["batch_size"],
                 max_input_len=spec["max_input_len"], max_output_len=spec["max_output_len"], log_every=1,
                 dtype=dtype, device="cpu", lora_r=rank, load_in_4bit=student_q == "4bit",
                 teacher_load_in_8bit=teacher_q == "8bit", teacher_load_in_4bit=teacher_q == "4bit")
    cfg = build_config(DistillConfig, flags=flags)
    with tempfile.TemporaryDirectory(prefix="xkd-bench-memory-") as runs:
        result = distill.run_distill(cfg, runs_root=Path(runs))
    training_peak = _status_mib("VmHWM") if seen.get("peak_reset") else None
    return {"mode": spec["mode"], "dtype": dtype, "teacher_quantization": teacher_q,
            "student_quantization": student_q, "lora_r": rank, "teacher": seen["teacher"], "student": seen["student"],
            "rss_loaded_mib": seen["rss_loaded_mib"],
            "peak_training_mib": None if training_peak is None else round(training_peak, 1),
            "peak_rss_mib": round(_ru_maxrss_mib(), 1), "train_seconds": result["train_seconds"],
            "final_loss": result["final_loss"], "versions": versions}


def run_worker(spec: dict, timeout: int) -> dict:
    # A fixed mmap threshold (which also turns off glibc's dynamic one): multi-MB tensors are then mmapped
    # and go back to the system when freed, so resident memory follows live tensors instead of keeping
    # whatever loading and quantizing once held in the heap.
    env = {"OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    return workers.run_worker(__file__, spec, env=env, timeout=timeout, what=f"worker {spec['mode']!r}")


# -- the models -----------------------------------------------------------------------------------------------


def build_models(folder: Path, quick: bool) -> dict[str, dict]:
    """Random-init T5 teacher and student (builtin tokenizer, builtin T5 layout), saved as local models."""
    import torch
    from transformers import T5ForConditionalGeneration

    from xkd_cli.models.loading import save_model
    from xkd_cli.models.zoo import TinyModelSpec, builtin_tokenizer

    tokenizer = builtin_tokenizer()
    info = {}
    for role, arch, seed in (("teacher", QUICK_TEACHER if quick else TEACHER, 0),
                             ("student", QUICK_STUDENT if quick else STUDENT, 1)):
        config = TinyModelSpec("t5", role, arch).make_config(tokenizer)
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        path = save_model((model, tokenizer), folder / role)
        info[role] = {"path": str(path), "parameters": sum(p.numel() for p in model.parameters()), **arch}
        del model
    return info


# -- report -----------------------------------------------------------------------------------------------------


def _m(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def markdown(report: dict) -> str:
    base = report["baseline_peak_rss_mib"]
    lines = ["| mode | teacher weights (MiB) | student weights (MiB) | trainable params | RSS loaded (MiB) | "
             "peak training (MiB) | peak RSS (MiB) | above baseline (MiB) | s/step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['mode']} | {_m(r['teacher']['weights_mib'])} | {_m(r['student']['weights_mib'])} | "
                     f"{r['student']['trainable']:,} | {_m(r['rss_loaded_mib'])} | {_m(r['peak_training_mib'])} | "
                     f"{_m(r['peak_rss_mib'])} | {_m(r['peak_rss_mib'] - base)} | "
                     f"{r['train_seconds'] / report['settings']['steps']:.1f} |")
    b = report["baseline"]
    lines.append(f"| {BASELINE} | {_m(b['teacher']['weights_mib'])} | {_m(b['student']['weights_mib'])} | "
                 f"{b['student']['trainable']:,} | {_m(b['rss_loaded_mib'])} | {_m(b['peak_training_mib'])} | "
                 f"{_m(base)} | 0 | {b['train_seconds'] / report['settings']['steps']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for memory.json / memory.md")
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke test of the script")
    parser.add_argument("--modes", default=None, help=f"comma-separated subset of: {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=3, help="distillation steps per mode (default 3)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-input-len", type=int, default=64)
    parser.add_argument("--max-output-len", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: the machine is shared)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one worker may take")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    modes = [m.strip() for m in args.modes.split(",")] if args.modes else list(MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; choose from: {', '.join(MODES)}")
    settings = {"steps": args.steps, "batch_size": args.batch_size, "max_input_len": args.max_input_len,
                "max_output_len": args.max_output_len, "threads": args.threads, "method": "gxkd",
                "alpha": 0.0, "lora_r": 8, "lora_targets": "q,v (default)", "task": "synth-sum"}
    started = time.time()
    # Linux folds a parent's resident high-water mark into a child's ru_maxrss across fork + exec, so this
    # process never imports torch or builds a model: a worker builds the models, others measure.
    parent_mib = _ru_maxrss_mib()
    with tempfile.TemporaryDirectory(prefix="xkd-bench-models-") as folder:
        models = run_worker({"mode": "build", "folder": folder, "quick": args.quick, "threads": args.threads},
                            args.timeout)
        print(f"teacher {models['teacher']['parameters'] / 1e6:.0f}M parameters, "
              f"student {models['student']['parameters'] / 1e6:.0f}M", flush=True)
        common = {**settings, "teacher": models["teacher"]["path"], "student": models["student"]["path"]}
        base = run_worker({**common, "mode": BASELINE}, args.timeout)
        baseline = base["peak_rss_mib"]
        rows = []
        for mode in modes:
            row = run_worker({**common, "mode": mode}, args.timeout)
            rows.append(row)
            print(f"{mode}: peak RSS {row['peak_rss_mib']:.0f} MiB, peak training {_m(row['peak_training_mib'])} MiB",
                  flush=True)
    report = {"settings": {**settings, "malloc_mmap_threshold": MMAP_THRESHOLD}, "quick": args.quick,
              "models": {role: {k: v for k, v in m.items() if k != "path"} for role, m in models.items()},
              "baseline_peak_rss_mib": baseline, "baseline": base, "parent_peak_rss_mib": round(parent_mib, 1), "rows": rows,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          **base["versions"]},
              "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - started, 1)}
    table = markdown(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "memory_quick" if args.quick else "memory"  # a smoke test never overwrites the measured table
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {args.out / f'{stem}.json'} and {args.out / f'{stem}.md'}")


if __name__ == "__main__":
    main()
