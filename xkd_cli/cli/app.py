"""The ``xkd`` command line: thin commands that parse flags, build a config and call the engine."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from xkd_cli import __version__
from xkd_cli.config.core import build_config
from xkd_cli.core.errors import XKDError, debug_enabled
from xkd_cli.config.defaults import distill_defaults, eval_defaults, sft_defaults
from xkd_cli.core.ui import emit, out, table
from xkd_cli.cli.options import (BatchSize, Data, Device, Dropout, Dtype, EvalEvery, EvalLimit, GradAccum, Json, LogEvery, Lr,
                      MaxGradNorm, MaxInputLen, MaxOutputLen, MaxSteps, Model, Name, Overwrite, Recipe, RunsDir,
                      Seed, Task, TrainFraction, WarmupSteps, WeightDecay, config_flags, recipe_value)
from xkd_cli.cli.options import LoadIn4bit, LoadIn8bit, LoraAlpha, LoraDropout, LoraR, LoraTargets, MergeLora
from xkd_cli.cli.options import MixedPrecision, TrustRemoteCode
from xkd_cli.cli.options import KeepLast, Processes, Resume, SaveEvery
from xkd_cli.core.workspace import default_task, runs_root

app = typer.Typer(
    name="xkd",
    help="Experiential knowledge distillation (X-KD) for language models: fine-tune, distil, evaluate.\n\n"
         "Every command takes --recipe FILE.yaml (values merge as defaults → recipe → flags) and --json.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool) -> None:
    if value:
        print(f"xkd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    pass


@app.command(epilog="Examples:\n\n  xkd sft --model tiny-t5-large --task synth-sum --role teacher\n\n"
                    "  xkd sft --model t5-large --task xsum\n\n"
                    "  xkd sft --model tiny-gpt-small --task xsum --data ./xsum.jsonl --max-steps 100\n\n"
                    "  xkd sft --recipe recipes/sft-t5-large-xsum.yaml --max-steps 10 --json\n\n"
                    "  xkd sft --model t5-xl --task xsum --role teacher --lora-r 64 --load-in-8bit --merge-lora")
def sft(
    model: Model = None, task: Task = None, name: Name = None, data: Data = None, recipe: Recipe = None,
    role: Annotated[Optional[str], typer.Option(help="Record the run as the task's 'teacher' or 'student' (distill picks them up).")] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = None,
    lr: Lr = None,
    warmup_steps: WarmupSteps = None,
    weight_decay: WeightDecay = None,
    max_grad_norm: MaxGradNorm = None,
    max_input_len: MaxInputLen = None,
    max_output_len: MaxOutputLen = None,
    seed: Seed = None,
    train_fraction: TrainFraction = None,
    eval_every: EvalEvery = None,
    eval_limit: EvalLimit = None,
    log_every: LogEvery = None,
    dropout: Dropout = None,
    save_every: SaveEvery = None, keep_last: KeepLast = None, resume: Resume = False, processes: Processes = None,
    dtype: Dtype = None, mixed_precision: MixedPrecision = None, device: Device = None,
    trust_remote_code: TrustRemoteCode = None,
    lora_r: LoraR = None, lora_alpha: LoraAlpha = None, lora_dropout: LoraDropout = None,
    lora_targets: LoraTargets = None, merge_lora: MergeLora = None,
    load_in_8bit: LoadIn8bit = None, load_in_4bit: LoadIn4bit = None,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Fine-tune a model on a task (the teacher and student starting points)."""
    flags = config_flags(locals())  # first: before any other local exists
    from xkd_cli.training.sft import SFTConfig, run_sft
    task_name = recipe_value(recipe, "task", task)
    defaults = sft_defaults(task_name, recipe_value(recipe, "model", model)) if task_name else {}
    cfg = build_config(SFTConfig, defaults=defaults, recipe=recipe, flags=flags)
    _launch_processes(processes, cfg)
    result = run_sft(cfg, runs_root=runs_root(runs_dir), overwrite=overwrite, resume=resume)
    emit(result, as_json=json, render=_render_training)


@app.command(epilog="Examples:\n\n  xkd distill --method gxkd --lam 0.001\n\n"
                    "  xkd distill --task synth-sum --method gkd --alpha 0.5 --beta 0.5\n\n"
                    "  xkd distill --task synth-mt --method seqxkd --teacher-data teacher-samples\n\n"
                    "  xkd distill --task xsum --method sxkd --teacher my-t5-large --student my-t5-small --divergence fkl\n\n"
                    "  xkd distill --method gxkd --teacher-load-in-4bit --lora-r 8")
def distill(
    method: Annotated[Optional[str], typer.Option(help="seqkd, seqxkd, skd, sxkd, gkd, gxkd or minillm (default gxkd).")] = None,
    task: Task = None,
    teacher: Annotated[Optional[str], typer.Option(help="Teacher model (default: the task's SFT run with --role teacher).")] = None,
    student: Annotated[Optional[str], typer.Option(help="Student model (default: the task's SFT run with --role student).")] = None,
    teacher_data: Annotated[Optional[str], typer.Option(help="gen-teacher run or samples JSONL for seqkd/seqxkd (default: latest).")] = None,
    name: Name = None, data: Data = None, recipe: Recipe = None,
    lam: Annotated[Optional[float], typer.Option(help="Experiential weight λ (default 0.001; 0 = the baseline).")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="TD discount γ (default 1.0).")] = None,
    tau: Annotated[Optional[float], typer.Option(help="τ′ of the Q-value decoder, Eq. 28 (default 1.0).")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="On-policy (student sample) probability α for gkd/gxkd (default 0.5).")] = None,
    beta: Annotated[Optional[float], typer.Option(help="β of the generalized JSD / β-mix (default 0.5).")] = None,
    divergence: Annotated[Optional[str], typer.Option(help="jsd, fkl, rkl, mix or tvd (default: fkl for skd/sxkd, jsd for gkd/gxkd).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Student sampling temperature (default 1.0).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Student sampling top-p (default 0.95).")] = None,
    reward_position: Annotated[Optional[str], typer.Option(help="Reward head input: 'current' (h_t) or 'next' (h_t+1).")] = None,
    mix: Annotated[Optional[float], typer.Option(help="MiniLLM teacher-mixed sampling weight (default 0.2).")] = None,
    teacher_dtype: Annotated[Optional[str], typer.Option(help="Teacher dtype (default: --dtype).")] = None,
    teacher_device: Annotated[Optional[str], typer.Option(help="Teacher device (default: --device).")] = None,
    teacher_cache: Annotated[Optional[str], typer.Option(help="Keep the teacher's view of ground-truth batches on disk and reuse it across epochs and runs: off (default), full (exact) or topk (top-k + tail, small).")] = None,
    teacher_cache_k: Annotated[Optional[int], typer.Option(help="Tokens per position kept by --teacher-cache topk (default 64).")] = None,
    max_steps: MaxSteps = None,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = None,
    lr: Lr = None,
    warmup_steps: WarmupSteps = None,
    weight_decay: WeightDecay = None,
    max_grad_norm: MaxGradNorm = None,
    max_input_len: MaxInputLen = None,
    max_output_len: MaxOutputLen = None,
    seed: Seed = None,
    train_fraction: TrainFraction = None,
    eval_every: EvalEvery = None,
    eval_limit: EvalLimit = None,
    log_every: LogEvery = None,
    dropout: Dropout = None,
    save_every: SaveEvery = None, keep_last: KeepLast = None, resume: Resume = False, processes: Processes = None,
    dtype: Dtype = None, mixed_precision: MixedPrecision = None, device: Device = None,
    trust_remote_code: TrustRemoteCode = None,
    lora_r: LoraR = None, lora_alpha: LoraAlpha = None, lora_dropout: LoraDropout = None,
    lora_targets: LoraTargets = None, merge_lora: MergeLora = None,
    load_in_8bit: LoadIn8bit = None, load_in_4bit: LoadIn4bit = None,
    teacher_load_in_8bit: Annotated[Optional[bool], typer.Option("--teacher-load-in-8bit", help="Load the teacher quantized to 8 bits (bitsandbytes).")] = None,
    teacher_load_in_4bit: Annotated[Optional[bool], typer.Option("--teacher-load-in-4bit", help="Load the teacher quantized to 4 bits (bitsandbytes NF4).")] = None,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Distil a teacher into a student with one of the seven methods (X-KD and its baselines)."""
    flags = config_flags(locals())  # first: before any other local exists
    from xkd_cli.training.distill import DistillConfig, run_distill
    root = runs_root(runs_dir)
    task_name = recipe_value(recipe, "task", task) or default_task(root)
    flags["task"] = task_name
    defaults = distill_defaults(task_name, recipe_value(recipe, "student", student))
    cfg = build_config(DistillConfig, defaults=defaults, recipe=recipe, flags=flags)
    _launch_processes(processes, cfg)
    result = run_distill(cfg, runs_root=root, overwrite=overwrite, resume=resume)
    emit(result, as_json=json, render=_render_training)


def _launch_processes(processes: int | None, cfg) -> None:
    """--processes N (N > 1): run this very command again under ``accelerate launch`` with N processes and
    end with its exit code (settings that cannot run sharded are refused first, here, rather than once per
    process); inside the launch (or with N = 1) do nothing."""
    from xkd_cli.training.distributed import check_shardable, launched, relaunch

    if processes is None or processes == 1 or launched():
        return
    check_shardable(cfg)
    argv = []
    skip = False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            argv.append(arg)
    raise typer.Exit(relaunch(processes, argv))


def _render_training(result: dict) -> None:
    rows = [("run", result["path"]), ("model", result["model"]), ("steps", result["steps"]),
            ("final loss", result["final_loss"]), ("tokens/s", result["tokens_per_s"]),
            ("time (s)", result["train_seconds"])]
    if result.get("final_eval"):
        rows += [(f"eval {k}", v) for k, v in result["final_eval"].items() if k != "step"]
    out.print(table(f"{result['task']} · {result['run']}", ["", "value"], rows))


@app.command(name="eval", epilog="Examples:\n\n  xkd eval --model sft-tiny-t5-large --task synth-sum\n\n"
                                 "  xkd eval --model ./my-model --task xsum --data ./xsum --limit 100\n\n"
                                 "  xkd eval --model teacher --task synth-mt --temperature 1.0 --top-p 0.95 --num-samples 4 --json")
def eval_(
    model: Model = None, task: Task = None, name: Name = None, data: Data = None, recipe: Recipe = None,
    split: Annotated[Optional[str], typer.Option(help="train, validation or test (default: the task's eval split).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Evaluate the first N examples only.")] = None,
    batch_size: BatchSize = None,
    max_input_len: MaxInputLen = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Maximum generated tokens.")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy (default); > 0 samples.")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    num_samples: Annotated[Optional[int], typer.Option(help="Samples per input (SelfBLEU is reported when > 1).")] = None,
    use_stemmer: Annotated[Optional[bool], typer.Option("--use-stemmer/--no-stemmer", help="Porter stemming in ROUGE.")] = None,
    seed: Seed = None, dtype: Dtype = None, device: Device = None, trust_remote_code: TrustRemoteCode = None,
    load_in_8bit: LoadIn8bit = None, load_in_4bit: LoadIn4bit = None,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Generate on the task's evaluation split and score it (ROUGE, BLEU or accuracy)."""
    flags = config_flags(locals())  # first: before any other local exists
    from xkd_cli.evaluation.evaluate import EvalConfig, run_eval
    task_name = recipe_value(recipe, "task", task)
    cfg = build_config(EvalConfig, defaults=eval_defaults(task_name) if task_name else {}, recipe=recipe, flags=flags)
    result = run_eval(cfg, runs_root=runs_root(runs_dir), overwrite=overwrite)
    emit(result, as_json=json, render=_render_eval)


def _render_eval(result: dict) -> None:
    metrics = result["metrics"]
    rows = [(("* " if key == result["headline"] else "") + key, value) for key, value in metrics.items()
            if not key.endswith("signature")]
    out.print(table(f"{result['task']} · {result['run']} · {result['split']} · {result['decoding']} · "
                    f"{result['examples']} examples", ["metric", "value"], rows))
    for key, value in metrics.items():
        if key.endswith("signature"):
            out.print(f"{key}: {value}")
    out.print(f"predictions: {result['predictions']}")


@app.command(epilog="Examples:\n\n  xkd pipeline recipes/offline-quick.yaml\n\n"
                    "  xkd pipeline recipes/paper-xsum-large-small.yaml --dry-run\n\n"
                    "  xkd pipeline recipes/ablation-lambda.yaml --runs-dir ./lambda-runs")
def pipeline(
    recipe: Annotated[Path, typer.Argument(help="Pipeline recipe (YAML): tasks, teacher, student, methods, sweeps.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate the recipe and print the plan; no compute.")] = False,
    runs_dir: RunsDir = None, overwrite: Overwrite = False, json: Json = False,
) -> None:
    """Run a whole experiment (SFT → gen-teacher → distill → eval → diversity → judge), skipping done steps."""
    from xkd_cli.experiments.pipeline import run_pipeline

    result = run_pipeline(recipe, runs_root=runs_root(runs_dir), dry_run=dry_run, overwrite=overwrite)
    emit(result, as_json=json, render=_render_pipeline)


def _render_pipeline(result: dict) -> None:
    rows = [(s["step"], s["kind"], f"{s['task']}/{s['name']}", s.get("note", ""),
             "dry run: " + s["state"] if result.get("dry_run") else
             ("skipped" + (f" ({s['reason']})" if s.get("reason") else "") if s.get("skipped")
              else f"{s.get('seconds', 0):.0f} s"))
            for s in result["steps"]]
    out.print(table(f"pipeline {result['recipe']}", ["#", "step", "run", "note", "status"], rows))
    if not result.get("dry_run"):
        from xkd_cli.experiments.report import render

        render(result["report"])
        out.print(f"pipeline total: {result['seconds']:.0f} s")


def _quiet_libraries() -> None:
    """transformers' own load/save progress bars and notices would drown ours."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2 (traceback with XKD_DEBUG=1)."""
    _quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except XKDError as exc:
        if debug_enabled():
            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)

# Commands that live in their own modules.
from xkd_cli.evaluation import diversity  # noqa: E402
from xkd_cli.training import gen_teacher
from xkd_cli.evaluation import judge
from xkd_cli.experiments import report

for _module in (gen_teacher, diversity, judge, report):
    _module.register(app)
