"""xkd's GKD / G-XKD training step against TRL's ``GKDTrainer``, on the same work, in one invocation.

    python bench/gkd_vs_trl.py                      # full run: results in bench/results/
    python bench/gkd_vs_trl.py --quick              # smoke test (a minute or two)
    python bench/gkd_vs_trl.py --frameworks xkd     # without TRL (``pip install -e '.[bench]'`` adds it)

Every (configuration, framework, repeat) runs in a fresh Python subprocess (this file with ``--worker``),
so its peak resident memory (``ru_maxrss``) is its own; repeats interleave xkd and TRL, alternating which
goes first, so load from other processes hits both alike. Each worker trains ``--steps`` optimizer steps
and times every step; throughput is the counted target tokens (the positions the loss sums over) of the
steps after ``--warmup``, divided by their wall time; the report gives the median over ``--repeats``.

What is the same on both sides (the "same work"):
- models: the built-in tiny pair (``tiny-gpt-large`` teacher → ``tiny-gpt-small`` student, fixed-seed
  random weights, shared tokenizer);
- data: the task's train split tokenised by xkd's ``EncodedSet`` (prompt ids + target ids ending in eos)
  and drawn in xkd's order (``IndexStream``); TRL gets those ids as ``input_ids`` + ``completion_mask``
  rows, which its own collator (``DataCollatorForChatML``) pads, in that order (sequential sampler);
- the on-policy coin: xkd's ``AlphaMix`` draws it from ``random.Random(seed)``; TRL draws
  ``random.random() <= lmbda`` from the global generator, so the TRL worker replays xkd's coin by
  setting ``lmbda`` to 1 or 0 before each step (TRL's own code path is otherwise untouched) and both
  sides sample on the same steps;
- sampling: temperature 1, top-p 1 (TRL hard-codes ``top_p=1.0, top_k=0``), ``max_new_tokens`` =
  ``--max-output-len``, KV cache on;
- loss: generalized JSD with β = 0.5 at temperature 1 (TRL's ``beta`` has xkd's meaning:
  M = β·p_T + (1−β)·p_S), summed over target positions and divided by their count;
- optimizer: AdamW (torch), same learning rate, no warm-up, linear decay to 0 over ``--steps``,
  weight decay 0, gradient clipping at norm 1; batch size, threads and device alike;
- float32 and no activation checkpointing on either side: TRL's ``SFTConfig`` defaults to
  ``gradient_checkpointing=True`` and ``bf16=True``, and with checkpointing on ``GKDTrainer`` also
  samples without a KV cache (``use_cache=False``), which would make its steps far slower.

Phases: xkd reports them itself when ``xkd_cli.core.timing.PHASES`` is enabled (``phase_seconds`` in every
step's log line); the TRL worker measures the same boundaries from outside (forward hooks on student and
teacher, a hook on the student's logits gradient to split the backward, and overrides that time
``generate_on_policy_outputs`` / ``compute_loss`` / ``get_batch_samples``). ``other`` is the step time no
phase covers (clipping, scheduler, logging, the trainers' bookkeeping).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import workers  # bench/workers.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
PAIRS = {"gpt": ("tiny-gpt-large", "tiny-gpt-small"), "t5": ("tiny-t5-large", "tiny-t5-small")}
PHASE_ORDER = ("generate", "collate", "teacher_forward", "student_forward", "loss", "experiential",
               "loss_backward", "student_backward", "optimizer", "other")


@dataclass(frozen=True)
class Config:
    """One line of the benchmark: a model pair, a method and the on-policy fraction α."""
    pair: str
    method: str
    alpha: float

    @property
    def name(self) -> str:
        return f"{self.pair}-{self.method}-a{self.alpha:g}"

    @property
    def frameworks(self) -> tuple[str, ...]:
        # TRL's GKDTrainer is GKD for causal LMs only: no experiential term, no encoder-decoder models.
        return ("xkd", "trl") if self.pair == "gpt" and self.method == "gkd" else ("xkd",)


# gkd and gxkd of the same pair and α run back to back, so machine noise hits their comparison alike too.
CONFIGS = [Config(pair, method, alpha) for pair in ("gpt", "t5") for alpha in (0.0, 0.5) for method in ("gkd", "gxkd")]
LOSS_PHASES = ("loss", "experiential", "loss_backward")


@dataclass(frozen=True)
class Settings:
    """What both frameworks get; one JSON object passed to every worker."""
    task: str = "synth-sum"
    steps: int = 12
    warmup: int = 2
    batch_size: int = 8
    max_input_len: int = 128
    max_output_len: int = 48
    lr: float = 1e-4
    beta: float = 0.5
    temperature: float = 1.0
    seed: int = 0
    threads: int = 1
    train_fraction: float = 0.1
    device: str = "cpu"


QUICK = dict(steps=3, warmup=1, batch_size=4, max_input_len=64, max_output_len=16, train_fraction=0.02)


# -- measuring, inside a worker ----------------------------------------------------------------------------


def current_rss_mb() -> float:
    """Resident memory now (Linux /proc; elsewhere the peak so far, the best available)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def distill_config(settings: Settings, cfg: Config, *, name: str):
    from xkd_cli.config.training import DistillConfig

    teacher, student = PAIRS[cfg.pair]
    return DistillConfig(task=settings.task, name=name, method=cfg.method, teacher=teacher, student=student,
                         alpha=cfg.alpha, beta=settings.beta, divergence="jsd", temperature=settings.temperature,
                         top_p=1.0, max_steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                         warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_input_len=settings.max_input_len,
                         max_output_len=settings.max_output_len, seed=settings.seed,
                         train_fraction=settings.train_fraction, log_every=1, eval_every=0, device=settings.device)


def coin_flips(alpha: float, seed: int, steps: int) -> list[bool]:
    """Which steps train on student samples: the draws of xkd's ``AlphaMix`` coin, replayed."""
    coin = random.Random(seed)
    return [alpha > 0 and coin.random() < alpha for _ in range(steps)]


def run_xkd(settings: Settings, cfg: Config) -> dict:
    """``xkd distill`` in-process (``run_distill``, what the CLI calls after parsing flags) with the phase
    timers on; the step records come from the run's own ``train_log.jsonl``."""
    import torch
    from xkd_cli.training.distill import run_distill
    from xkd_cli.core.timing import PHASES

    torch.set_num_threads(settings.threads)
    baseline = current_rss_mb()
    PHASES.enable()
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        result = run_distill(distill_config(settings, cfg, name="bench"), runs_root=Path(runs))
        total = time.perf_counter() - started
        lines = [json.loads(line) for line in (Path(result["path"]) / "train_log.jsonl").read_text().splitlines()]
    steps, previous, samples = [], 0.0, 0
    for line in lines:
        steps.append({"seconds": line["elapsed_s"] - previous, "tokens": line["tokens"], "loss": line["loss"],
                      "on_policy": line["student_samples"] > samples, "phases": line["phase_seconds"]})
        previous, samples = line["elapsed_s"], line["student_samples"]
    return {"steps": steps, "rss_baseline_mb": baseline, "wall_seconds": total}


def now() -> float:
    """``perf_counter`` after the GPU (if in use) has finished its queued work, as xkd's ``PHASES`` does."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


class TRLClock:
    """Phase times of one TRL step, measured at the same boundaries as xkd's ``PHASES``."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self.generating = False
        self.forward_started = 0.0
        self.inside_loss = 0.0  # forward seconds spent inside the current compute_loss
        self.grad_reached: float | None = None
        self.tokens = 0
        self.loss = 0.0

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def take(self) -> tuple[dict[str, float], int, float]:
        taken, tokens, loss = self.phases, self.tokens, self.loss
        self.phases, self.tokens, self.loss = {}, 0, 0.0
        return {k: round(v, 4) for k, v in taken.items()}, tokens, loss


def run_trl(settings: Settings, cfg: Config) -> dict:
    """TRL's ``GKDTrainer`` on the same models, data order, coin, sampling and optimizer."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer
    from xkd_cli.models.zoo import build_tiny_model
    from xkd_cli.training.lifecycle import load_split
    from xkd_cli.training.sources import EncodedSet
    from xkd_cli.data.taskfile import get_task
    from xkd_cli.core.runtime import seed_everything
    from xkd_cli.training.sources import IndexStream

    torch.set_num_threads(settings.threads)
    baseline = current_rss_mb()
    started = time.perf_counter()
    xkd_cfg = distill_config(settings, cfg, name="bench")
    task = get_task(settings.task)
    teacher_name, student_name = PAIRS[cfg.pair]
    student, teacher = build_tiny_model(student_name), build_tiny_model(teacher_name)
    examples = load_split(task, "train", xkd_cfg, train_fraction=settings.train_fraction)
    data = EncodedSet(examples, student, max_input_len=settings.max_input_len,
                      max_output_len=settings.max_output_len, keep_end=task.keep_prompt_end)
    stream = IndexStream(len(data), settings.seed)
    order = [i for _ in range(settings.steps) for i in stream.take(settings.batch_size)]
    dataset = Dataset.from_list([{"prompt": examples[i].prompt,  # the collator wants it; the ids below win
                                  "input_ids": data.prompts[i] + data.targets[i],
                                  "completion_mask": [0] * len(data.prompts[i]) + [1] * len(data.targets[i])}
                                 for i in order])
    flips = coin_flips(cfg.alpha, settings.seed, settings.steps)
    clock = TRLClock()
    marks: list[float] = []  # perf_counter at the start of training and at the end of every step
    records: list[tuple[dict, int, float]] = []  # (phases, tokens, loss) of every step

    class TimedGKDTrainer(GKDTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            # Replay xkd's coin: TRL samples when random.random() <= lmbda.
            self.lmbda = 1.0 if flips[self.state.global_step] else 0.0
            return super().training_step(model, inputs, num_items_in_batch)

        def generate_on_policy_outputs(self, model, inputs, generation_config):
            clock.generating = True
            began = now()
            try:
                return GKDTrainer.generate_on_policy_outputs(model, inputs, generation_config)
            finally:
                clock.add("generate", now() - began)
                clock.generating = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            clock.tokens += int((inputs["labels"][:, 1:] != -100).sum())  # the positions its loss counts
            clock.inside_loss = 0.0
            began = now()
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            clock.add("loss", now() - began - clock.inside_loss)
            clock.loss += float((out[0] if isinstance(out, tuple) else out).detach())
            return out

        def get_batch_samples(self, *args, **kwargs):
            began = now()
            try:
                return super().get_batch_samples(*args, **kwargs)
            finally:
                clock.add("collate", now() - began)

    def timed_forward(model, phase: str, watch: bool) -> None:
        def before(module, args, kwargs):
            if not clock.generating:
                clock.forward_started = now()

        def after(module, args, kwargs, output):
            if clock.generating:
                return
            seconds = now() - clock.forward_started
            clock.add(phase, seconds)
            clock.inside_loss += seconds
            if watch and output.logits.requires_grad:
                output.logits.register_hook(lambda grad: setattr(clock, "grad_reached", now()))

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)

    class StepTimes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            marks.append(now())

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            self.optimizer_began = now()

        def on_optimizer_step(self, args, state, control, **kwargs):
            clock.add("optimizer", now() - self.optimizer_began)

        def on_step_end(self, args, state, control, **kwargs):
            marks.append(now())
            records.append(clock.take())

    seed_everything(settings.seed)
    with tempfile.TemporaryDirectory() as out_dir:
        args = GKDConfig(
            output_dir=out_dir, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            gradient_accumulation_steps=1, learning_rate=settings.lr, lr_scheduler_type="linear", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", lmbda=cfg.alpha, beta=settings.beta,
            temperature=settings.temperature, max_new_tokens=settings.max_output_len, seq_kd=False,
            max_length=settings.max_input_len + settings.max_output_len, train_sampling_strategy="sequential",
            dataloader_num_workers=0, seed=settings.seed, report_to="none", save_strategy="no",
            logging_steps=settings.steps, disable_tqdm=True, use_cpu=settings.device == "cpu",
            bf16=False, fp16=False, gradient_checkpointing=False)
        trainer = TimedGKDTrainer(model=student.model, teacher_model=teacher.model, args=args,
                                  train_dataset=dataset, processing_class=student.tokenizer, callbacks=[StepTimes()])
        if trainer.model.is_gradient_checkpointing:  # xkd never recomputes the student's activations
            raise RuntimeError("TRL turned activation checkpointing on: the comparison would not be like for like")
        timed_forward(trainer.model, "student_forward", watch=True)
        timed_forward(trainer.teacher_model, "teacher_forward", watch=False)
        backward = trainer.accelerator.backward

        def timed_backward(loss, **kwargs):
            clock.grad_reached = None
            began = now()
            backward(loss, **kwargs)
            ended = now()
            reached = clock.grad_reached or began
            clock.add("loss_backward", reached - began)
            clock.add("student_backward", ended - reached)

        trainer.accelerator.backward = timed_backward
        trainer.train()
    total = time.perf_counter() - started
    steps = [{"seconds": marks[i + 1] - marks[i], "tokens": tokens, "loss": loss, "on_policy": flips[i],
              "phases": phases} for i, (phases, tokens, loss) in enumerate(records)]
    return {"steps": steps, "rss_baseline_mb": baseline, "wall_seconds": total}


def worker(spec: dict) -> dict:
    settings, cfg = Settings(**spec["settings"]), Config(**spec["config"])
    result = (run_xkd if spec["framework"] == "xkd" else run_trl)(settings, cfg)
    result["rss_peak_mb"] = peak_rss_mb()
    return result


# -- orchestrating and reporting ---------------------------------------------------------------------------


def run_worker(framework: str, cfg: Config, settings: Settings, timeout: int) -> dict:
    spec = {"framework": framework, "config": asdict(cfg), "settings": asdict(settings)}
    threads = str(settings.threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    return workers.run_worker(__file__, spec, env=env, timeout=timeout, what=f"{framework} worker for {cfg.name}")


def summarize_run(run: dict, warmup: int) -> dict:
    """Throughput, step time and mean phase seconds per step over the steps after the warm-up."""
    measured = run["steps"][warmup:]
    seconds = sum(s["seconds"] for s in measured)
    phases: dict[str, float] = {}
    for step in measured:
        for name, value in step["phases"].items():
            phases[name] = phases.get(name, 0.0) + value
    per_step = {name: value / len(measured) for name, value in phases.items()}
    per_step["other"] = max(0.0, seconds / len(measured) - sum(per_step.values()))
    return {"tokens_per_s": sum(s["tokens"] for s in measured) / seconds, "step_s": seconds / len(measured),
            "tokens": sum(s["tokens"] for s in measured), "on_policy_steps": sum(s["on_policy"] for s in measured),
            "phase_s": per_step, "rss_peak_mb": run["rss_peak_mb"],
            "rss_training_mb": run["rss_peak_mb"] - run["rss_baseline_mb"], "steps": run["steps"]}


def aggregate(runs: list[dict]) -> dict:
    """Medians over repeats (and the spread of throughput)."""
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    names = sorted({n for r in runs for n in r["phase_s"]}, key=lambda n: PHASE_ORDER.index(n)
                   if n in PHASE_ORDER else len(PHASE_ORDER))
    return {"repeats": len(runs), "tokens_per_s": med("tokens_per_s"),
            "tokens_per_s_range": [min(r["tokens_per_s"] for r in runs), max(r["tokens_per_s"] for r in runs)],
            "step_s": med("step_s"), "tokens": med("tokens"), "on_policy_steps": med("on_policy_steps"),
            "rss_peak_mb": med("rss_peak_mb"), "rss_training_mb": med("rss_training_mb"),
            "phase_s": {n: statistics.median(r["phase_s"].get(n, 0.0) for r in runs) for n in names}}


def same_work(xkd_steps: list[dict], trl_steps: list[dict]) -> dict:
    """Evidence that both sides did the same work: the same steps on-policy, the same counted tokens on every
    off-policy step (same data), and the same loss on the steps before the first on-policy one (same
    weights, same batch: any gap is float rounding; afterwards the students saw different samples)."""
    leading = []
    for x, t in zip(xkd_steps, trl_steps):
        if x["on_policy"]:
            break
        leading.append(abs(x["loss"] - t["loss"]) / max(abs(t["loss"]), 1e-12))
    return {"same_on_policy_steps": [s["on_policy"] for s in xkd_steps] == [s["on_policy"] for s in trl_steps],
            "same_off_policy_tokens": all(x["tokens"] == t["tokens"] for x, t in zip(xkd_steps, trl_steps)
                                          if not x["on_policy"]),
            "loss_steps_compared": len(leading), "loss_max_rel_diff": max(leading, default=None)}


def comparisons(results: dict, runs: dict) -> dict:
    """xkd / TRL for each configuration both ran, and gxkd / gkd time per step for each pair and α."""
    vs_trl, gxkd_vs_gkd = {}, {}
    for name, by in results.items():
        if "xkd" in by and "trl" in by:
            x, t = by["xkd"], by["trl"]
            vs_trl[name] = {"tokens_per_s": x["tokens_per_s"] / t["tokens_per_s"], "step_s": x["step_s"] / t["step_s"],
                            "rss_peak_mb": x["rss_peak_mb"] / t["rss_peak_mb"],
                            "rss_training_mb": x["rss_training_mb"] / t["rss_training_mb"],
                            **same_work(runs[name]["xkd"][0]["steps"], runs[name]["trl"][0]["steps"])}
    for cfg in CONFIGS:
        base = results.get(Config(cfg.pair, "gkd", cfg.alpha).name, {}).get("xkd")
        if cfg.method == "gxkd" and base and cfg.name in results:
            x = results[cfg.name]["xkd"]
            # The loss phases' growth is the experiential term's own cost, free of the step-to-step noise.
            extra = sum(x["phase_s"].get(n, 0.0) - base["phase_s"].get(n, 0.0) for n in LOSS_PHASES)
            gxkd_vs_gkd[cfg.name] = {"step_s": x["step_s"] / base["step_s"],
                                     "tokens_per_s": x["tokens_per_s"] / base["tokens_per_s"],
                                     "loss_phases_extra_s": extra, "loss_phases_extra_share": extra / base["step_s"]}
    return {"xkd_vs_trl": vs_trl, "gxkd_vs_gkd": gxkd_vs_gkd}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# xkd vs TRL GKDTrainer ({report['date']})", "",
             f"{report['machine']}; torch {report['versions'].get('torch')}, transformers "
             f"{report['versions'].get('transformers')}, trl {report['versions'].get('trl', 'not installed')}.",
             f"Task {s['task']}, batch {s['batch_size']}, max input {s['max_input_len']}, max output / new tokens "
             f"{s['max_output_len']}, {s['steps']} steps ({s['warmup']} warm-up), {s['threads']} thread(s) on "
             f"{s['device']}, β = {s['beta']}, temperature {s['temperature']}, top-p 1, AdamW lr {s['lr']}. "
             f"Medians of {report['repeats']} repeat(s).", "",
             f"Command: `{report['command']}`", "",
             "| configuration | framework | tokens/s | step (s) | peak RSS (MB) | training RSS (MB) | on-policy steps |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, by in report["results"].items():
        for framework, r in by.items():
            lo, hi = r["tokens_per_s_range"]
            lines.append(f"| {name} | {framework} | {r['tokens_per_s']:.0f} ({lo:.0f}–{hi:.0f}) | {r['step_s']:.3f} | "
                         f"{r['rss_peak_mb']:.0f} | {r['rss_training_mb']:.0f} | {r['on_policy_steps']:g} |")
    lines += ["", "Time per step by phase, ms (share of the step):", "",
              "| configuration | framework | " + " | ".join(PHASE_ORDER) + " |",
              "|---|---|" + "---:|" * len(PHASE_ORDER)]
    for name, by in report["results"].items():
        for framework, r in by.items():
            cells = []
            for phase in PHASE_ORDER:
                value = r["phase_s"].get(phase)
                cells.append("–" if value is None else f"{value * 1000:.0f} ({value / r['step_s']:.0%})")
            lines.append(f"| {name} | {framework} | " + " | ".join(cells) + " |")
    comp = report["comparisons"]
    if comp["xkd_vs_trl"]:
        lines += ["", "| configuration | xkd / TRL tokens/s | xkd / TRL peak RSS | xkd / TRL training RSS | "
                  "same work (on-policy steps, tokens; loss rel. diff before sampling) |", "|---|---:|---:|---:|---|"]
        for name, c in comp["xkd_vs_trl"].items():
            diff = c["loss_max_rel_diff"]
            work = (f"{'yes' if c['same_on_policy_steps'] else 'NO'}, {'yes' if c['same_off_policy_tokens'] else 'NO'}; "
                    + (f"{diff:.1e} over {c['loss_steps_compared']} step(s)" if diff is not None else "no step"))
            lines.append(f"| {name} | {c['tokens_per_s']:.2f} | {c['rss_peak_mb']:.2f} | {c['rss_training_mb']:.2f} | "
                         f"{work} |")
    if comp["gxkd_vs_gkd"]:
        lines += ["", "| configuration | gxkd / gkd time per step | loss phases' growth (share of a gkd step) |",
                  "|---|---:|---:|"]
        for name, c in comp["gxkd_vs_gkd"].items():
            lines.append(f"| {name} | {c['step_s']:.3f} | {c['loss_phases_extra_s'] * 1000:.0f} ms "
                         f"({c['loss_phases_extra_share']:.1%}) |")
    lines += ["", "tokens/s: counted target tokens per second of whole optimizer steps (student sampling included); "
              "peak RSS: `ru_maxrss` of the worker process (each run in a fresh one); training RSS: peak minus the "
              "resident memory after imports (the like-for-like figure: TRL's worker also imports trl and datasets)."]
    return "\n".join(lines) + "\n"



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for gkd_vs_trl.json / .md")
    parser.add_argument("--quick", action="store_true", help="a smoke test: few short steps, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="fresh runs per configuration (default 3; quick 1)")
    parser.add_argument("--frameworks", default="xkd,trl", help="comma-separated subset of xkd,trl")
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated subset of {','.join(c.name for c in CONFIGS)} (default all)")
    workers.add_settings_options(parser, Settings)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one worker may take")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    settings = workers.settings_from(args, Settings, QUICK if args.quick else None)
    if settings.steps <= settings.warmup:
        parser.error(f"--steps ({settings.steps}) must exceed --warmup ({settings.warmup})")
    repeats = args.repeats or (1 if args.quick else 3)
    frameworks = [f for f in args.frameworks.split(",") if f]
    unknown = set(frameworks) - {"xkd", "trl"}
    if unknown:
        parser.error(f"unknown framework(s) {sorted(unknown)}: use xkd and/or trl")
    # find_spec, not import: this process must stay small, since Linux starts a child's ru_maxrss at the
    # parent's resident size (exec keeps the high-water mark of the forked copy).
    if "trl" in frameworks and importlib.util.find_spec("trl") is None:
        parser.error("trl is not installed: pip install -e '.[bench]', or pass --frameworks xkd")
    by_name = {c.name: c for c in CONFIGS}
    wanted = args.configs.split(",") if args.configs else list(by_name)
    missing = [name for name in wanted if name not in by_name]
    if missing:
        parser.error(f"unknown configuration(s) {missing}: use some of {','.join(by_name)}")
    configs = [by_name[name] for name in wanted]

    runs: dict[str, dict[str, list[dict]]] = {}
    for repeat in range(repeats):
        for cfg in configs:
            order = [f for f in cfg.frameworks if f in frameworks]
            for framework in (order if repeat % 2 == 0 else order[::-1]):  # alternate who goes first
                began = time.perf_counter()
                run = run_worker(framework, cfg, settings, args.timeout)
                summary = summarize_run(run, settings.warmup)
                runs.setdefault(cfg.name, {}).setdefault(framework, []).append(summary)
                print(f"[{repeat + 1}/{repeats}] {cfg.name:16s} {framework:3s} {summary['tokens_per_s']:8.0f} tokens/s "
                      f"{summary['step_s']:.3f} s/step peak {summary['rss_peak_mb']:.0f} MB "
                      f"({time.perf_counter() - began:.0f} s)", flush=True)

    results = {name: {fw: aggregate(r) for fw, r in by.items()} for name, by in runs.items()}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "settings": asdict(settings), "repeats": repeats,
              "machine": f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end",
              "versions": workers.versions("torch", "transformers", "trl", "xkd"),
              "command": " ".join(["python bench/gkd_vs_trl.py", *(argv or sys.argv[1:])]),
              "results": results, "comparisons": comparisons(results, runs), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gkd_vs_trl.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gkd_vs_trl.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'gkd_vs_trl.json'} and {args.out / 'gkd_vs_trl.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
