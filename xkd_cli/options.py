"""Command-line options shared by every command, declared once (``Annotated`` aliases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .config import load_recipe

Task = Annotated[Optional[str], typer.Option("--task", "-t", help="Task name: xsum, wmt, gsm8k, synth-sum, synth-mt, synth-gsm.")]
Data = Annotated[Optional[str], typer.Option(help="Local data file or directory in the task's Hugging Face schema (JSONL/JSON/CSV/Parquet).")]
Recipe = Annotated[Optional[Path], typer.Option(help="YAML file of option values (flags override it).")]
RunsDir = Annotated[Optional[Path], typer.Option(help="Runs directory (env XKD_RUNS_DIR, default ./runs).")]
Name = Annotated[Optional[str], typer.Option(help="Run name (a directory under <runs-dir>/<task>/).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run / results of the same name.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Seed = Annotated[Optional[int], typer.Option(help="Random seed.")]
Dtype = Annotated[Optional[str], typer.Option(help="Model dtype: float32, bfloat16, float16, auto.")]
Device = Annotated[Optional[str], typer.Option(help="auto, cpu, cuda or cuda:N.")]
Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Run name, local path, Hugging Face id (t5-small … t5-xl aliases) or built-in tiny model.")]
MaxInputLen = Annotated[Optional[int], typer.Option(help="Maximum prompt length in tokens.")]
BatchSize = Annotated[Optional[int], typer.Option(help="Batch size.")]

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

# Command parameters that steer the command itself rather than the job's config.
NOT_CONFIG = ("recipe", "runs_dir", "overwrite", "json")


def config_flags(params: dict[str, Any]) -> dict[str, Any]:
    """A command's parameters (its ``locals()``) that are config values; ``None`` means "not given"."""
    return {k: v for k, v in params.items() if k not in NOT_CONFIG}


def recipe_value(recipe: Path | None, key: str, flag: Any) -> Any:
    """A value needed before the config is built (e.g. the task, to pick defaults): flag, else recipe."""
    return flag if flag is not None else load_recipe(recipe).get(key)
