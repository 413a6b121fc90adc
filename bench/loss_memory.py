"""Peak memory of the distillation loss alone (forward + backward) as the vocabulary grows.

    python bench/loss_memory.py                 # V = 32k and 128k at B = 2, T = 512: bench/results/loss_memory.*
    python bench/loss_memory.py --quick         # V = 32k at T = 256, about a minute

Implementations, all on the same float32 ``B x T x V`` student logits (a leaf that needs a gradient) and
teacher logits, every position counted:
- ``xkd-gkd``   ``divergences.divergence_sum("jsd", ...)``: chunked over valid positions, each chunk
                recomputed in the backward, which writes one gradient buffer;
- ``xkd-gxkd``  the same plus the experiential term F_ex in the same chunked pass
                (``experiential.kd_experiential_sum``, as the trainer computes G-XKD);
- ``naive-gkd`` the generalized JSD over the full tensors, written as TRL's
                ``GKDTrainer.generalized_jsd_loss`` writes it (log_softmax of both, a stacked logsumexp
                for the mixture, two ``kl_div`` with ``reduction="none"``, then the valid rows);
- ``naive-gxkd`` that plus F_ex with a full-tensor softmax;
- ``trl-gkd``   TRL's own ``GKDTrainer.generalized_jsd_loss``, when trl is installed.

How memory is measured: each (implementation, V) runs in a fresh subprocess. After building the inputs and
one warm-up call on tiny inputs (so allocator and thread-pool start-up costs are paid), the worker resets
the kernel's resident-set high-water mark (``echo 5 > /proc/self/clear_refs``, Linux), runs forward and
backward once, and reads the high-water mark (``VmHWM``). The extra peak is that minus the resident memory
just before the loss, reported in MiB and in units of one ``B x T x V`` float32 tensor. The worker runs
with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor of that size
or more is a mapping of its own, returned to the system when freed, and resident memory follows the live
tensors (by default glibc raises the threshold after the first large free and keeps freed chunk-sized
blocks in its heap). This counts what the process really holds, with no instrumentation inside torch
(tracemalloc does not see torch's allocations; the CPU memory profiler lists allocations, not the peak of
live memory). The backward necessarily creates the logits' gradient, one ``B x T x V`` tensor, so an
implementation that keeps nothing else alive scores about 1.0. Where ``clear_refs`` is not available the
worker falls back to ``ru_maxrss`` (then the inputs, built first, set a floor). With ``--device cuda`` it
reads ``torch.cuda.max_memory_allocated``. Times (forward + backward, the faster of two runs) come from a
second fresh process with the usual allocator.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import workers  # bench/workers.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
IMPLEMENTATIONS = ("xkd-gkd", "xkd-gxkd", "naive-gkd", "naive-gxkd", "trl-gkd")
BETA, LAM, GAMMA, TAU = 0.5, 0.001, 1.0, 1.0


def naive_jsd_sum(student, teacher, labels, beta=BETA):
    """Generalized JSD summed over valid positions, over full tensors (TRL's formula, reduction sum)."""
    import torch
    import torch.nn.functional as F

    ls, lt = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
    b = torch.tensor(beta, dtype=ls.dtype)
    mixture = torch.logsumexp(torch.stack([ls + torch.log1p(-b), lt + torch.log(b)]), dim=0)
    jsd = beta * F.kl_div(mixture, lt, reduction="none", log_target=True) \
        + (1 - beta) * F.kl_div(mixture, ls, reduction="none", log_target=True)
    return jsd[labels != -100].sum()


def naive_experiential_sum(student, labels, mu, log_sigma, lam=LAM, gamma=GAMMA, tau=TAU):
    """F_ex (Eq. 20) with the V-wide part over the full tensor: Q = log softmax_v(τ'·P)[y]."""
    import torch

    scaled = tau * student.softmax(-1)  # B x T x V
    q = scaled.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1) - scaled.logsumexp(-1)  # B x T
    m = labels != -100
    m_td = m[:, :-1] & m[:, 1:]
    delta = q[:, :-1] - gamma * q[:, 1:]
    mu, log_sigma = mu[:, :-1], log_sigma[:, :-1]
    sigma_sq = torch.exp(2 * log_sigma)
    kl = 0.5 * (sigma_sq + mu * mu - 1) - log_sigma
    log_q = -0.5 * math.log(2 * math.pi) - log_sigma - (delta - mu) ** 2 / (2 * sigma_sq)
    return torch.where(m_td, kl - lam * log_q, 0.0).sum()


def loss_fn(name: str):
    from xkd_cli.objectives.divergences import divergence_sum, divergence_term
    from xkd_cli.objectives.experiential import kd_experiential_sum

    def xkd_gkd(s, t, labels, mu, log_sigma):
        return divergence_sum("jsd", s, t, labels, beta=BETA).total

    def xkd_gxkd(s, t, labels, mu, log_sigma):  # as the trainer does it: both terms in one pass
        term = divergence_term("jsd", t, beta=BETA)
        kd, ex = kd_experiential_sum(term, s, labels, mu, log_sigma, lam=LAM, gamma=GAMMA, tau=TAU)
        return kd.total + ex.total

    def naive_gkd(s, t, labels, mu, log_sigma):
        return naive_jsd_sum(s, t, labels)

    def naive_gxkd(s, t, labels, mu, log_sigma):
        return naive_jsd_sum(s, t, labels) + naive_experiential_sum(s, labels, mu, log_sigma)

    def trl_gkd(s, t, labels, mu, log_sigma):
        from trl.experimental.gkd import GKDTrainer

        return GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=BETA)

    return {"xkd-gkd": xkd_gkd, "xkd-gxkd": xkd_gxkd, "naive-gkd": naive_gkd, "naive-gxkd": naive_gxkd,
            "trl-gkd": trl_gkd}[name]


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inputs(batch: int, steps: int, vocab: int, device: str, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, steps, vocab, generator=generator).to(device).requires_grad_(True)
    teacher = torch.randn(batch, steps, vocab, generator=generator).to(device)
    labels = torch.randint(0, vocab, (batch, steps), generator=generator).to(device)
    mu = torch.zeros(batch, steps, device=device, requires_grad=True)
    log_sigma = torch.zeros(batch, steps, device=device, requires_grad=True)
    return student, teacher, labels, mu, log_sigma


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("chunk_elements"):
        from xkd_cli.objectives import chunked

        chunked.CHUNK_ELEMENTS = spec["chunk_elements"]  # read at every call: the chunk-size trade-off
    device = spec["device"]
    fn = loss_fn(spec["impl"])
    fn(*inputs(2, 8, 64, device)).backward()  # warm-up: first-call costs are not the loss's
    args = inputs(spec["batch"], spec["steps"], spec["vocab"], device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if spec.get("mode") == "time":  # a separate process with the usual allocator: the fastest of two runs
        times = []
        for _ in range(2):
            args[0].grad = None
            sync()
            began = time.perf_counter()
            fn(*args).backward()
            sync()
            times.append(time.perf_counter() - began)
        return {"seconds": min(times)}
    tensor_mb = spec["batch"] * spec["steps"] * spec["vocab"] * 4 / 2**20
    if device.startswith("cuda"):
        sync()
        before = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        fn(*args).backward()
        peak, method = torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    else:
        before = rss_mb()
        method = "VmHWM after clear_refs" if workers.reset_peak() else "ru_maxrss (no reset: a lower bound)"
        fn(*args).backward()
        peak = peak_mb()
    extra = peak - before
    return {**spec, "before_mb": before, "peak_mb": peak, "extra_mb": extra, "tensor_mb": tensor_mb,
            "extra_tensors": extra / tensor_mb, "method": method}


def run_worker(spec: dict, timeout: int) -> dict:
    # A fixed mmap threshold: glibc otherwise raises it (up to 32 MiB) after the first large free and then
    # serves chunk-sized tensors from its heap, which it does not give back, so resident memory would count
    # freed chunks as live. With it, every tensor of 128 KiB or more is its own mapping, unmapped when freed.
    # Times come from a run of their own with the usual allocator (a mapping per tensor is slower).
    env = {"OMP_NUM_THREADS": str(spec["threads"]), "TRL_EXPERIMENTAL_SILENCE": "1",
           "MALLOC_MMAP_THRESHOLD_": None if spec.get("mode") == "time" else "131072"}
    return workers.run_worker(__file__, spec, env=env, timeout=timeout, what=f"{spec['impl']} at V={spec['vocab']}")


def _default_chunk_elements() -> int:
    from xkd_cli.objectives.chunked import CHUNK_ELEMENTS

    return CHUNK_ELEMENTS


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Loss memory as V grows ({report['date']})", "",
             f"B = {s['batch']}, T = {s['steps']}, every position counted, float32, {s['device']}, "
             f"{s['threads']} thread(s), xkd chunks of {s['chunk_elements']} float32 entries "
             f"({s['chunk_elements'] * 4 / 2**20:g} MiB per intermediate). Extra peak = peak during forward + backward of the loss minus memory "
             "just before it; one B×T×V float32 tensor is the unit (the logits' gradient alone is 1.0).", "",
             f"Command: `{report['command']}`", "",
             "| V | implementation | one B×T×V (MiB) | extra peak (MiB) | extra peak (B×T×V tensors) | fwd+bwd (s) |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in report["results"]:
        lines.append(f"| {r['vocab']} | {r['impl']} | {r['tensor_mb']:.0f} | {r['extra_mb']:.0f} | "
                     f"{r['extra_tensors']:.2f} | {r['seconds']:.2f} |")
    lines += ["", f"Memory measured with {report['results'][0]['method'] if report['results'] else '-'}, every "
              "tensor of 128 KiB or more in its own mapping (MALLOC_MMAP_THRESHOLD_); times (the faster of two "
              "runs) in another process with the usual allocator."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for loss_memory.json / .md")
    parser.add_argument("--quick", action="store_true", help="smaller shapes (V 32768, T 256)")
    parser.add_argument("--vocab", default=None, help="comma-separated vocabulary sizes (default 32768,131072)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="T, positions per row (default 512; quick 256)")
    parser.add_argument("--impls", default=None, help=f"comma-separated subset of {','.join(IMPLEMENTATIONS)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-elements", type=int, default=None,
                        help="xkd's chunk size in float32 entries per N x V intermediate (default chunked.CHUNK_ELEMENTS)")
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    vocabs = [int(v) for v in (args.vocab or ("32768" if args.quick else "32768,131072")).split(",")]
    steps = args.steps or (256 if args.quick else 512)
    impls = args.impls.split(",") if args.impls else list(IMPLEMENTATIONS)
    unknown = [i for i in impls if i not in IMPLEMENTATIONS]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}: use some of {','.join(IMPLEMENTATIONS)}")
    if "trl-gkd" in impls and importlib.util.find_spec("trl") is None:  # no import: keep this process small
        if args.impls:
            parser.error("trl-gkd needs trl: pip install -e '.[bench]'")
        impls.remove("trl-gkd")
    results = []
    for vocab in vocabs:
        for impl in impls:
            spec = {"impl": impl, "vocab": vocab, "batch": args.batch, "steps": steps, "threads": args.threads,
                    "device": args.device, "chunk_elements": args.chunk_elements}
            r = run_worker(spec, args.timeout)
            r.update(run_worker({**spec, "mode": "time"}, args.timeout))
            results.append(r)
            print(f"V={vocab:7d} {impl:10s} extra peak {r['extra_mb']:8.0f} MiB = {r['extra_tensors']:.2f} x B*T*V "
                  f"({r['seconds']:.2f} s)", flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "settings": {"batch": args.batch, "steps": steps, "threads": args.threads, "device": args.device,
                           "chunk_elements": args.chunk_elements or _default_chunk_elements()},
              "command": " ".join(["python bench/loss_memory.py", *(argv if argv is not None else sys.argv[1:])]),
              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loss_memory.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "loss_memory.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
