"""Range and consistency checks shared by the job configs: each returns one-line problems, so a config can
report every problem at once (``check``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import in_range

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
OPENAI_BASE = "https://api.openai.com/v1"


def check(problems: list[str]) -> None:
    """Raise one error that lists every problem found, so the user fixes them all in one go."""
    if problems:
        raise XKDError("; ".join(problems) + ".")


def choice(problems: list[str], name: str, value: str | None, choices: tuple[str, ...]) -> None:
    """Append a message to ``problems`` when ``value`` is set and not one of ``choices``."""
    if value is not None and value not in choices:
        problems.append(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")


DATA_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# The metrics (xkd_cli.data.metrics) a task of one's own may name, each with its headline key (``none``: the
# reference loss).
CUSTOM_METRICS = {"rouge": "rouge2", "bleu": "bleu", "chrf": "chrf", "exact": "exact_match", "number": "accuracy",
                  "none": "loss"}


def task_problems(found: list[str], task: str, data: str | None, metric: str | None = None,
                  chat_template: str | None = None) -> None:
    """--task (or a bare --data file standing for the task), --metric and --chat-template."""
    from_data = bool(data) and Path(data).suffix.lower() in DATA_FILE_SUFFIXES
    if not task and not from_data:
        found.append("--task is required (a built-in task, a task file, or leave it out and pass --data FILE.jsonl "
                     "in prompt-completion, messages or preference format)")
    if metric is not None and (task or not from_data):
        found.append("--metric applies to a bare --data file without --task; put 'metric:' in the task file instead")
    choice(found, "metric", metric, tuple(CUSTOM_METRICS))
    if chat_template not in (None, "auto", "none") and not Path(chat_template).expanduser().is_file():
        found.append(f"--chat-template must be auto, none or a .jinja file; {chat_template!r} is no file")


def quantization_of(load_in_8bit: bool, load_in_4bit: bool) -> str | None:
    """The ``load_model`` quantization a pair of ``--load-in-*`` flags asks for (both: checked elsewhere)."""
    return "4bit" if load_in_4bit else "8bit" if load_in_8bit else None


def quantization_problems(load_in_8bit: bool, load_in_4bit: bool, prefix: str = "") -> list[str]:
    if load_in_8bit and load_in_4bit:
        return [f"--{prefix}load-in-8bit and --{prefix}load-in-4bit exclude each other: pass one"]
    return []


def lora_problems(cfg: Any) -> list[str]:
    """One-line problems of a training config's LoRA/quantization options (see TrainingConfig)."""
    found: list[str] = quantization_problems(cfg.load_in_8bit, cfg.load_in_4bit)
    in_range(found, "lora_r", cfg.lora_r, 0)
    in_range(found, "lora_alpha", cfg.lora_alpha, 0, lo_open=True)
    in_range(found, "lora_dropout", cfg.lora_dropout, 0, 1, hi_open=True)
    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    if quantization and not cfg.lora_r:
        found.append(f"--load-in-{quantization} cannot train the quantized weights themselves: add --lora-r 8 "
                     f"(QLoRA: the quantized model stays frozen, LoRA adapters train), or drop --load-in-{quantization}")
    if cfg.lora_targets is not None:
        if not cfg.lora_r:
            found.append("--lora-targets needs --lora-r > 0 (LoRA is off at --lora-r 0)")
        if not cfg.lora_targets or any(not t.strip() for t in cfg.lora_targets):
            found.append(f"--lora-targets must be comma-separated module names such as q,v or q_proj,v_proj, "
                         f"got {','.join(cfg.lora_targets)!r}")
    if cfg.merge_lora and not cfg.lora_r:
        found.append("--merge-lora needs --lora-r > 0 (without LoRA the saved model is already a full model)")
    return found


def key_env_problem(name: str) -> str | None:
    """Why ``name`` cannot name the variable holding the key, or None. The value is never echoed: a user who
    typed the key itself there would see it printed (and logged) otherwise."""
    if name and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return None
    return ("--api-key-env takes the NAME of the environment variable that holds the key (e.g. OPENAI_API_KEY), "
            "not the key itself")


def url_problem(url: str | None, flag: str) -> str | None:
    """Why ``url`` is not an http(s) endpoint, or None (the value is not echoed: it may carry credentials)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return f"{flag} must be an http(s) URL such as http://localhost:8000/v1 (got a value without http:// or https:// and a host)"
