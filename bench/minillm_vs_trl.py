"""xkd's MiniLLM against TRL's ``MiniLLMTrainer``: both students' scores, with intervals over seeds, from one run.

    python bench/minillm_vs_trl.py                          # full run: results in bench/results/
    python bench/minillm_vs_trl.py --quick                  # smoke test (a few minutes)
    python bench/minillm_vs_trl.py --trl-path /tmp/trl029   # where a trl with trl.experimental.minillm lives

TRL shipped ``MiniLLMTrainer`` in ``trl.experimental.minillm`` (0.2x; 0.29.1 has it); trl 1.16, the version the
``bench`` extra installs, has none. The TRL worker imports it from ``--trl-path`` when given (a folder made by
``pip install --target DIR 'trl==0.29.1' requests``), else from the installed trl.

One invocation does everything, in a scratch runs directory (``--runs``):
1. SFT the decoder-only pair on the task with xkd (``tiny-gpt-large`` teacher, ``tiny-gpt-small`` student;
   the main job's step counts), or reuse them when the runs directory has them;
2. for each seed, distil the SFT'd student for ``--steps`` optimizer steps of ``--batch-size`` prompts:
   ``xkd distill --method minillm`` at xkd's defaults, and ``MiniLLMTrainer`` (a fresh worker process,
   this file with ``--worker``) from the same student and teacher;
3. evaluate every student, the SFT student and the teacher with ``xkd eval`` (greedy, the same
   ``--eval-limit`` validation examples) and write the scores: mean over seeds with a 95% t-interval, and
   the paired difference xkd − TRL per seed with its interval.

What both sides share: the SFT'd models, the prompts (the TRL worker hands TRL xkd's own prompt ids, so
the tokens are the same), the number of optimizer steps, prompts per step (one sample each: TRL's
``num_generations=1``), the learning rate (xkd's preset for minillm; TRL's own default is 1e-6), sampling at
temperature 1 with ``max_new_tokens`` = the task's output length, AdamW with linear decay and gradient
clipping at 1, float32 and no activation checkpointing (TRL defaults to bf16 and checkpointing).

What is each side's own, at its defaults (the comparison is of the two readings of the paper, each as its
authors ship it): xkd samples from the teacher-mixed distribution (mix 0.2) at top-p 0.95, makes 4 PPO
epochs per batch of rollouts, whitens the advantages, adds the LM term on the ground-truth targets with
weight 1 and discounts the return by 0.95; TRL samples from the student alone at top-p 1, makes one policy
update per batch (``num_iterations=1``), takes the reverse-KL advantage per token without discount
(``gamma=0``), no LM term, GRPO's ``dapo`` loss, plus the single-step decomposition term; xkd warms up
for 20 steps, TRL for none.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import workers  # bench/workers.py: the script's own directory is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
TEACHER, STUDENT = "tiny-gpt-large", "tiny-gpt-small"
# two-sided 95% Student t quantiles by degrees of freedom (seeds − 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Settings:
    """What both frameworks get; one JSON object passed to every worker."""
    task: str = "synth-sum"
    teacher_steps: int = 200
    student_steps: int = 150
    steps: int = 40
    batch_size: int = 16
    seeds: str = "1,2,3"
    eval_limit: int = 200
    threads: int = 2


QUICK = dict(teacher_steps=20, student_steps=20, steps=4, batch_size=4, seeds="1,2", eval_limit=20)


# -- the TRL worker -----------------------------------------------------------------------------------------


def run_trl(spec: dict) -> dict:
    """TRL's MiniLLMTrainer from the SFT'd student, saved as a model folder ``xkd eval`` reads."""
    if spec.get("trl_path"):
        sys.path.insert(0, spec["trl_path"])
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import tempfile

    import torch
    from datasets import Dataset
    from trl.experimental.minillm import MiniLLMConfig, MiniLLMTrainer

    from xkd_cli.config.defaults import make_config
    from xkd_cli.config.training import DistillConfig
    from xkd_cli.core.runtime import seed_everything
    from xkd_cli.data.taskfile import get_task
    from xkd_cli.models.loading import load_model
    from xkd_cli.training.lifecycle import load_split
    from xkd_cli.training.sources import EncodedSet, IndexStream

    settings, seed, runs = Settings(**spec["settings"]), spec["seed"], Path(spec["runs"])
    torch.set_num_threads(settings.threads)
    cfg = make_config(DistillConfig, {"task": settings.task, "method": "minillm", "teacher": spec["teacher"],
                                      "student": spec["student"], "seed": seed, "max_steps": settings.steps,
                                      "batch_size": settings.batch_size}, runs_root=runs)
    task = get_task(settings.task)
    student = load_model(spec["student"], task=settings.task, runs_dir=runs)
    teacher = load_model(spec["teacher"], task=settings.task, runs_dir=runs, for_training=False)
    examples = load_split(task, "train", cfg, train_fraction=cfg.train_fraction)
    data = EncodedSet(examples, student, max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len,
                      keep_end=task.keep_prompt_end)
    stream = IndexStream(len(data), seed)  # xkd's order of prompts for this seed
    order = [i for _ in range(settings.steps) for i in stream.take(settings.batch_size)]
    keys = {f"{i}": data.prompts[i] for i in set(order)}  # TRL's prompt "text" is the key to xkd's prompt ids

    class SamePrompts(MiniLLMTrainer):
        def _tokenize_prompts(self, prompts):
            _, images, fields = super()._tokenize_prompts(prompts)
            return [list(keys[p]) for p in prompts], images, fields

    seed_everything(seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        args = MiniLLMConfig(
            output_dir=out_dir, max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
            num_generations=1, gradient_accumulation_steps=1, learning_rate=cfg.lr, lr_scheduler_type="linear",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            max_completion_length=cfg.max_output_len, temperature=1.0, shuffle_dataset=False, seed=seed,
            report_to="none", save_strategy="no", logging_steps=max(1, settings.steps // 4), disable_tqdm=True,
            use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, dataloader_num_workers=0)
        trainer = SamePrompts(model=student.model, teacher_model=teacher.model, args=args,
                              train_dataset=Dataset.from_list([{"prompt": f"{i}"} for i in order]),
                              processing_class=student.tokenizer)
        trainer.train()
    seconds = time.perf_counter() - started
    target = runs / "trl" / f"trl-minillm-s{seed}"
    target.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(target)
    student.tokenizer.save_pretrained(target)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return {"model": str(target), "train_seconds": round(seconds, 1), "lr": cfg.lr, "log": logs}


# -- the parent ------------------------------------------------------------------------------------------------


def xkd(runs: Path, *args: str, timeout: int) -> dict:
    """One xkd command with ``--json``, its parsed result."""
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "xkd_cli", *args, "--runs-dir", str(runs), "--json"],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-10:])
        raise RuntimeError(f"xkd {' '.join(args)} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(proc.stdout)


def score(runs: Path, settings: Settings, model: str, timeout: int) -> float:
    result = xkd(runs, "eval", "--model", model, "--task", settings.task, "--limit", str(settings.eval_limit),
                 "--overwrite", timeout=timeout)
    return float(result["metrics"][result["headline"]])


def interval(values: list[float]) -> dict:
    """Mean, sample sd and the 95% t-interval of the mean over seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "sd": None, "low": None, "high": None, "n": len(values)}
    sd = statistics.stdev(values)
    half = T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))
    return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half, "n": len(values)}


def fmt(cell: dict) -> str:
    if cell["low"] is None:
        return f"{cell['mean']:.2f}"
    return f"{cell['mean']:.2f} [{cell['low']:.2f}, {cell['high']:.2f}]"


def markdown(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [f"# xkd MiniLLM vs TRL MiniLLMTrainer ({report['date']})", "",
             f"`{report['command']}` · {report['machine']} · {', '.join(f'{k} {v}' for k, v in report['versions'].items())}",
             "",
             f"{s['task']}: {TEACHER} (SFT {s['teacher_steps']} steps) → {STUDENT} (SFT {s['student_steps']} steps), "
             f"then {s['steps']} optimizer steps of {s['batch_size']} prompts at LR {report['lr']:g}; "
             f"{report['metric']} on {s['eval_limit']} validation examples, greedy. Mean over seeds "
             f"{s['seeds']} with its 95% t-interval.", "",
             f"| student | {report['metric']} | per seed | train s (mean) |", "|---|---:|---|---:|",
             f"| SFT student | {r['student']:.2f} | | |"]
    for name in ("xkd", "trl"):
        if name in r:
            cell = r[name]
            lines.append(f"| {'xkd minillm' if name == 'xkd' else 'TRL MiniLLMTrainer'} | {fmt(cell)} | "
                         f"{', '.join(f'{v:.2f}' for v in cell['values'])} | {cell['train_s']:.0f} |")
    lines.append(f"| Teacher | {r['teacher']:.2f} | | |")
    if "difference" in r:
        lines += ["", f"Paired difference xkd − TRL (same seed): {fmt(r['difference'])}."]
    return "\n".join(lines) + "\n"



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for minillm_vs_trl.json / .md")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/xkd-bench-minillm"), help="scratch runs directory")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny step counts, two seeds")
    parser.add_argument("--frameworks", default="xkd,trl", help="comma-separated subset of xkd,trl")
    parser.add_argument("--trl-path", default=None, help="folder holding a trl with trl.experimental.minillm")
    workers.add_settings_options(parser, Settings)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one command may take")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_trl(json.loads(args.worker))))
        return 0

    settings = workers.settings_from(args, Settings, QUICK if args.quick else None)
    seeds = [int(s) for s in settings.seeds.split(",")]
    frameworks = [f for f in args.frameworks.split(",") if f]
    runs, t = args.runs, args.timeout
    began = time.perf_counter()
    for model, role, steps in ((TEACHER, "teacher", settings.teacher_steps), (STUDENT, "student", settings.student_steps)):
        if not (runs / settings.task / f"sft-{model}" / "model").is_dir():
            xkd(runs, "sft", "--model", model, "--task", settings.task, "--role", role, "--max-steps", str(steps),
                timeout=t)
    teacher, student = f"sft-{TEACHER}", f"sft-{STUDENT}"
    results: dict = {"student": score(runs, settings, student, t), "teacher": score(runs, settings, teacher, t)}
    per_seed: dict[str, dict[int, tuple[float, float]]] = {f: {} for f in frameworks}
    lr = None
    for seed in seeds:
        for framework in (frameworks if seed % 2 else frameworks[::-1]):  # alternate who goes first
            started = time.perf_counter()
            if framework == "xkd":
                name = f"xkd-minillm-s{seed}"
                done = xkd(runs, "distill", "--method", "minillm", "--task", settings.task, "--teacher", teacher,
                           "--student", student, "--max-steps", str(settings.steps), "--batch-size",
                           str(settings.batch_size), "--seed", str(seed), "--name", name, "--overwrite", timeout=t)
                model, seconds = name, done["train_seconds"]
                lr = json.loads((Path(done["path"]) / "config.json").read_text())["lr"]
            else:
                spec = {"settings": asdict(settings), "seed": seed, "runs": str(runs), "teacher": teacher,
                        "student": student, "trl_path": args.trl_path}
                done = workers.run_worker(__file__, spec, env={"OMP_WAIT_POLICY": "PASSIVE"}, timeout=t,
                                          what=f"TRL worker, seed {seed}")
                model, seconds, lr = done["model"], done["train_seconds"], done["lr"]
            per_seed[framework][seed] = (score(runs, settings, model, t), seconds)
            print(f"seed {seed} {framework:3s} {per_seed[framework][seed][0]:6.2f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    for framework, by_seed in per_seed.items():
        results[framework] = {**interval([v for v, _ in by_seed.values()]),
                              "values": [v for v, _ in by_seed.values()],
                              "train_s": statistics.fmean(s for _, s in by_seed.values())}
    if {"xkd", "trl"} <= set(per_seed):
        results["difference"] = interval([per_seed["xkd"][s][0] - per_seed["trl"][s][0] for s in seeds])
    trl_version = None
    if "trl" in frameworks:
        probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]) if sys.argv[1] "
                                "else None; import trl; print(trl.__version__)", args.trl_path or ""],
                               capture_output=True, text=True)
        trl_version = probe.stdout.strip() or None
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "settings": asdict(settings), "lr": lr,
              "metric": "ROUGE-2" if settings.task.startswith("synth-sum") else "headline metric",
              "machine": f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the end, "
                         f"{time.perf_counter() - began:.0f} s in all",
              "versions": {**workers.versions("torch", "transformers", "xkd"),
                           **({"trl": trl_version} if trl_version else {})},
              "command": " ".join(["python bench/minillm_vs_trl.py", *(argv if argv is not None else sys.argv[1:])]),
              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "minillm_vs_trl.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "minillm_vs_trl.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'minillm_vs_trl.json'} and {args.out / 'minillm_vs_trl.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
