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


def recipe_value(recipe: Path | None, key: str, flag: Any) -> Any:
    """A value needed before the config is built (e.g. the task, to pick defaults): flag, else recipe."""
    return flag if flag is not None else load_recipe(recipe).get(key)
