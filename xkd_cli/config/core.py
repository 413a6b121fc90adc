"""Job configs: frozen dataclasses merged as defaults → YAML recipe → command-line flags.

A flag is "set" when it is not ``None``; that is why every CLI option defaults to ``None`` and why a
``False`` or ``0`` typed on the command line still overrides the recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from xkd_cli.core.errors import XKDError

C = TypeVar("C")

DTYPES = ("float32", "bfloat16", "float16", "auto")


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    """Read a recipe: a YAML mapping of config keys (dashes or underscores) to values."""
    if path is None:
        return {}
    path = Path(path).expanduser()
    if not path.is_file():
        raise XKDError(f"recipe file not found: {path}. Check the path passed to --recipe.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise XKDError(f"recipe {path} is not valid YAML{line}. Fix the syntax and retry.") from None
    except UnicodeDecodeError as exc:
        raise XKDError(f"recipe {path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 and retry.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise XKDError(f"recipe {path} must be a YAML mapping of option names to values, got {type(data).__name__}.")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a YAML/CLI value to the field's type, or explain which key has the wrong type."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin is tuple:
            (inner,) = set(typing.get_args(hint)) - {Ellipsis}
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_coerce(key, item, inner) for item in items)
    except (TypeError, ValueError):
        raise XKDError(f"option '{key}' has the wrong type: got {value!r}, expected {getattr(hint, '__name__', hint)}.") from None
    return value


def build_config(cls: type[C], *, defaults: dict[str, Any] | None = None, recipe: str | Path | None = None,
                 flags: dict[str, Any] | None = None) -> C:
    """Merge defaults → recipe → flags (flags that are ``None`` were not given) into ``cls``."""
    fields = _field_types(cls)
    recipe_values = load_recipe(recipe)
    unknown = [k for k in recipe_values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise XKDError(f"unknown key '{key}' in recipe {recipe}.{hint} Valid keys: {', '.join(fields)}.")
    merged: dict[str, Any] = {}
    for layer in (defaults or {}, recipe_values, {k: v for k, v in (flags or {}).items() if v is not None}):
        for key, value in layer.items():
            if key not in fields:
                raise KeyError(f"{cls.__name__} has no field {key!r}")  # a programming error, not a user one
            merged[key] = _coerce(key, value, fields[key])
    return cls(**merged)


def check(problems: list[str]) -> None:
    """Raise one error that lists every problem found, so the user fixes them all in one go."""
    if problems:
        raise XKDError("; ".join(problems) + ".")


def in_range(problems: list[str], name: str, value: float | None, lo: float | None = None, hi: float | None = None,
             *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Append a message to ``problems`` when ``value`` lies outside [lo, hi] (open ends where asked)."""
    if value is None:
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        problems.append(f"--{name.replace('_', '-')} must be in {span}, got {value}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def config_hash(cfg: Any, ignore: tuple[str, ...] = ()) -> str:
    """A stable hash of the settings that change a job's result."""
    values = {k: v for k, v in to_dict(cfg).items() if k not in ignore}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainingConfig:
    """Options every training command shares (sft, and distill on top of it)."""
    task: str = ""
    name: str | None = None
    data: str | None = None
    max_steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_input_len: int = 512
    max_output_len: int = 64
    seed: int = 42
    train_fraction: float = 1.0
    eval_every: int = 0
    eval_limit: int = 64
    log_every: int = 10
    dtype: str = "float32"
    mixed_precision: str = "no"  # no | bf16 | fp16: autocast the forward passes, weights stay in --dtype
    device: str = "auto"
    dropout: float | None = None
    trust_remote_code: bool = False  # run a model's own Python code (auto_map) only when the user asks
    save_every: int = 0  # checkpoint every N steps (0 = only on SIGTERM/SIGINT); see checkpoint.py
    keep_last: int = 2   # complete checkpoints kept
    # LoRA / QLoRA of the trained model (see lora.py): r = 0 trains every weight.
    lora_r: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] | None = None  # None: the architecture's default (T5 q,v; Llama q_proj,v_proj)
    load_in_8bit: bool = False
    load_in_4bit: bool = False
    merge_lora: bool = False

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.task:
            found.append("--task is required")
        for name in ("max_steps", "batch_size", "grad_accum", "max_input_len", "max_output_len", "log_every"):
            in_range(found, name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "eval_limit", "save_every"):
            in_range(found, name, getattr(self, name), 0)
        in_range(found, "keep_last", self.keep_last, 1)
        in_range(found, "lr", self.lr, 0, lo_open=True)
        in_range(found, "weight_decay", self.weight_decay, 0)
        in_range(found, "max_grad_norm", self.max_grad_norm, 0)
        in_range(found, "train_fraction", self.train_fraction, 0, 1, lo_open=True)
        in_range(found, "dropout", self.dropout, 0, 1, hi_open=True)
        if self.dtype not in DTYPES:
            found.append(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            found.append(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if not (self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda")):
            found.append(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        from xkd_cli.models.lora import lora_problems

        found += lora_problems(self)
        return found

    def __post_init__(self) -> None:
        check(self.problems())
