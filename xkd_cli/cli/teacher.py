"""``xkd gen-teacher``: a thin command over teacher sampling; its options come from
``xkd_cli.config.generation``."""

from __future__ import annotations

from typing import Any

from xkd_cli.cli.options import config_command
from xkd_cli.config.defaults import make_config
from xkd_cli.config.generation import GenTeacherConfig
from xkd_cli.core.ui import emit, out, paths, table
from xkd_cli.core.workspace import runs_root
from xkd_cli.training.preflight import check_models, check_task, default_model_run

EPILOG = ("Examples:\n\n  xkd gen-teacher --task synth-sum --num-samples 2\n\n"
          "  xkd gen-teacher --teacher sft-t5-large --task xsum --limit 1000 --num-samples 10\n\n"
          "  OPENAI_API_KEY=... xkd gen-teacher --task xsum --api-base http://localhost:8000/v1 "
          "--api-model meta-llama/Llama-2-7b-chat-hf --limit 1000 --num-samples 10 --concurrency 16")


@config_command(GenTeacherConfig, "recipe", "runs_dir", "overwrite", "json", first=("task", "teacher", "name", "data"))
def gen_teacher(flags: dict[str, Any], *, recipe, runs_dir, overwrite, json) -> None:
    """Sample teacher responses on the training prompts (the dataset for seqkd / seqxkd); resumable."""
    root = runs_root(runs_dir)
    cfg = make_config(GenTeacherConfig, flags, recipe=recipe, runs_root=root)
    task = check_task(cfg).name
    if not cfg.black_box:
        check_models([cfg.teacher or default_model_run(root, task, "teacher", "--teacher")], task, root)
    from xkd_cli.training.gen_teacher import run_gen_teacher  # torch and transformers load only once the options are valid

    emit(run_gen_teacher(cfg, runs_root=root, overwrite=overwrite), as_json=json, render=render_gen_teacher)


def render_gen_teacher(result: dict[str, Any]) -> None:
    d = result["decoding"]
    rows = [("mode", result["mode"]), ("teacher", result["teacher"]),
            ("prompts", result["prompts"]), ("samples per prompt", result["num_samples"]), ("rows", result["rows"]),
            ("new rows", result["new_rows"]),
            ("decoding", f"temperature {d['temperature']:g}, top-p {d['top_p']:g}, max {d['max_new_tokens']} tokens")]
    if "requests" in result:
        rows += [("API requests", result["requests"]), ("retries", result["retries"])]
    rows.append(("time (s)", result["seconds"]))
    out.print(table(f"{result['task']} · gen-teacher · {result['run']}", ["", "value"], rows))
    paths(run=result["path"], samples=result["samples"])
