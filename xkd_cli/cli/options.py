"""Command-line options shared by every command, declared once (``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from xkd_cli.config.core import load_recipe

Task = Annotated[Optional[str], typer.Option("--task", "-t", help="Task name: xsum, wmt, gsm8k, synth-sum, synth-mt, synth-gsm.")]
Data = Annotated[Optional[str], typer.Option(help="Local data file or directory in the task's Hugging Face schema (JSONL/JSON/CSV/Parquet).")]
Recipe = Annotated[Optional[Path], typer.Option(help="YAML file of option values (flags override it).")]
RunsDir = Annotated[Optional[Path], typer.Option(help="Runs directory (env XKD_RUNS_DIR, default ./runs).")]
Name = Annotated[Optional[str], typer.Option(help="Run name (a directory under <runs-dir>/<task>/).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run / results of the same name.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
Dtype = Annotated[Optional[str], typer.Option(help="Model dtype: float32, bfloat16, float16, auto.")]
MixedPrecision = Annotated[Optional[str], typer.Option(help="Autocast the forward passes to bf16 or fp16 (fp16 with loss scaling); weights, optimizer and losses stay float32. no (default), bf16, fp16.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Run name, local path, Hugging Face id (t5-small … t5-xl aliases) or built-in tiny model.")]
MaxInputLen = Annotated[Optional[int], typer.Option(help="Maximum prompt length in tokens.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Batch size.")]
TrustRemoteCode = Annotated[Optional[bool], typer.Option(
    "--trust-remote-code", help="Run Python code shipped with a model (auto_map) to load it. Off by default: review that code first.")]

# Training options shared by sft and distill.
MaxSteps = Annotated[Optional[int], typer.Option(help="Optimizer steps.")]
GradAccum = Annotated[Optional[int], typer.Option(help="Micro-batches per optimizer step.")]
Lr = Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).")]
WarmupSteps = Annotated[Optional[int], typer.Option(help="Linear warm-up steps, then linear decay.")]
WeightDecay = Annotated[Optional[float], typer.Option(help="AdamW weight decay.")]
MaxGradNorm = Annotated[Optional[float], typer.Option(help="Gradient clipping by global norm (0 = off).")]
MaxOutputLen = Annotated[Optional[int], typer.Option(help="Maximum target / sample length in tokens.")]
TrainFraction = Annotated[Optional[float], typer.Option(help="Keep the first fraction of the training set.")]
EvalEvery = Annotated[Optional[int], typer.Option(help="Evaluate every N steps (0 = never).")]
EvalLimit = Annotated[Optional[int], typer.Option(help="Examples per in-training evaluation.")]
LogEvery = Annotated[Optional[int], typer.Option(help="Write a log line every N steps.")]
Dropout = Annotated[Optional[float], typer.Option(help="Override the model's dropout rate.")]
SaveEvery = Annotated[Optional[int], typer.Option(help="Write a checkpoint every N steps (0 = off, default; SIGTERM/SIGINT always write one).")]
KeepLast = Annotated[Optional[int], typer.Option(help="Complete checkpoints to keep (default 2).")]
Processes = Annotated[Optional[int], typer.Option(help="Train data-parallel on N processes (one per GPU, or gloo on CPU): runs this command under `accelerate launch`. --batch-size is per process.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run from its latest complete checkpoint (re-running the same command does too; --resume fails if there is none).")]

# LoRA / quantization. --load-in-* quantize the command's own model (the one --dtype applies to: sft's and
# eval's --model, distill's --student, gen-teacher's --teacher); --teacher-load-in-* quantize distill's teacher.
LoraR = Annotated[Optional[int], typer.Option(help="LoRA rank: train rank-R adapters instead of all weights (0 = off, default).")]
LoraAlpha = Annotated[Optional[float], typer.Option(help="LoRA scaling α (update scale α/r; default 16).")]
LoraDropout = Annotated[Optional[float], typer.Option(help="Dropout on the LoRA adapters' input (default 0.05).")]
LoraTargets = Annotated[Optional[str], typer.Option(help="Comma-separated layer names to adapt (default: T5 q,v; Llama q_proj,v_proj).")]
MergeLora = Annotated[Optional[bool], typer.Option("--merge-lora", help="Also save <run>/merged: the adapter folded into the base, a plain transformers model.")]
LoadIn8bit = Annotated[Optional[bool], typer.Option("--load-in-8bit", help="Load the model quantized to 8 bits (bitsandbytes); training needs --lora-r.")]
LoadIn4bit = Annotated[Optional[bool], typer.Option("--load-in-4bit", help="Load the model quantized to 4 bits (bitsandbytes NF4); training needs --lora-r (QLoRA).")]

# Command parameters that steer the command itself rather than the job's config.
NOT_CONFIG = ("recipe", "runs_dir", "overwrite", "json", "resume", "processes")


def config_flags(params: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters (its ``locals()``) that are config values; ``None`` means "not given"."""
    return {k: v for k, v in params.items() if k not in NOT_CONFIG}


def recipe_value(recipe: Path | None, key: str, flag: Any) -> Any:
    """A value needed before the config is built (e.g. the task, to pick defaults): flag, else recipe."""
    return flag if flag is not None else load_recipe(recipe).get(key)
