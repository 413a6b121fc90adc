"""Job configs: frozen dataclasses merged as defaults → YAML recipe → command-line flags.

Each option is declared once, as a config field made with :func:`option`: its name, type, default and help.
The command line is generated from those fields (``xkd_cli.cli.options``), recipes use the same names, and
per-task defaults are merged in one place (``xkd_cli.config.defaults.make_config``).

A flag is "set" when it is not ``None``; that is why every generated CLI option defaults to ``None`` and why a
``False`` or ``0`` typed on the command line still overrides the recipe.
"""

from __future__ import annotations

import dataclasses
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
MIXED_PRECISION = ("no", "bf16", "fp16")


def option(default: Any, help: str, *, flags: tuple[str, ...] = (), cli: bool = True, cli_type: Any = None,
           argument: bool = False) -> Any:
    """A config field that is also a command-line option (``--name`` from the field name unless ``flags``
    names the option), with its help text. ``cli=False`` keeps a field out of the command line (recipes
    only); ``cli_type`` is the type the command line parses when it differs from the field's (a tuple
    field typed as one comma-separated string); ``argument=True`` makes it a positional argument (``xkd
    reward RUN``), optional on the command line so a recipe may give it."""
    metadata = {"help": help, "flags": flags, "cli": cli, "cli_type": cli_type, "argument": argument}
    return dataclasses.field(default=default, metadata=metadata)


class Recipe(dict):
    """A recipe's values (keys spelled with underscores), the file they were read from (``None``: no file) and,
    for messages, where they stand (default "recipe <path>"; a pipeline section says which)."""

    def __init__(self, values: dict[str, Any] | None = None, path: str | Path | None = None,
                 where: str | None = None) -> None:
        super().__init__(values or {})
        self.path = path
        self.where = where or f"recipe {path}"


def load_recipe(path: str | Path | None, *, given_as: str = "--recipe") -> Recipe:
    """Read a recipe: a YAML mapping of config keys (dashes or underscores) to values. ``given_as`` names where
    the path came from, for the not-found hint."""
    if path is None:
        return Recipe()
    given = path
    path = Path(path).expanduser()
    if not path.is_file():
        raise XKDError(f"recipe file not found: {path}. Check the path passed to {given_as}.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise XKDError(f"recipe {path} is not valid YAML{line}. Fix the syntax and retry.") from None
    except UnicodeDecodeError as exc:
        raise XKDError(f"recipe {path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8 and retry.") from None
    if data is None:
        return Recipe(path=given)
    if not isinstance(data, dict):
        raise XKDError(f"recipe {path} must be a YAML mapping of option names to values, got {type(data).__name__}.")
    return Recipe({str(k).replace("-", "_"): v for k, v in data.items()}, given)


# One option, two spellings: the longest target / sample in tokens is max_output_len in training and in task
# files, max_new_tokens where a command only generates (as transformers names it). A config has one of them as
# its field, recorded under that name in every run's config.json (so existing runs keep matching); the other
# spelling is accepted for it on the command line, in recipes and in pipeline sections.
SPELLINGS: tuple[tuple[str, ...], ...] = (("max_output_len", "max_new_tokens"),)


def other_spellings(name: str) -> tuple[str, ...]:
    """The other spellings of option ``name`` (none for most options)."""
    for group in SPELLINGS:
        if name in group:
            return tuple(other for other in group if other != name)
    return ()


def respell(values: dict[str, Any], fields: Any, where: str) -> dict[str, Any]:
    """``values`` with every key spelled as ``fields`` spells it (keys ``fields`` lacks stay as they are); one
    option given in two spellings is an error."""
    spelled: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name = key if key in fields else next((other for other in other_spellings(key) if other in fields), key)
        if name in spelled:
            raise XKDError(f"{where}: both '{given_as[name]}' and '{key}' are given, two spellings of one option: "
                           "keep one.")
        spelled[name], given_as[name] = value, key
    return spelled


_TYPE_WORDS = {float: "number", int: "whole number", str: "string", bool: "true/false value"}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _coerce(key: str, value: Any, hint: Any, example: Any = None) -> Any:
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
            if not isinstance(value, str):
                return tuple(_coerce(key, item, inner) for item in value)
            items = []
            for part in value.split(","):
                try:
                    items.append(_coerce(key, part.strip() if inner is not str else part, inner))
                except XKDError:
                    sample = f", e.g. {','.join(map(str, example))}" if example else ""
                    raise XKDError(f"--{key.replace('_', '-')} takes values separated by commas{sample}; "
                                   f"{part.strip()!r} in {value!r} is not a {_TYPE_WORDS.get(inner, inner.__name__)}."
                                   ) from None
            return tuple(items)
    except (TypeError, ValueError):
        raise XKDError(f"option '{key}' has the wrong type: got {value!r}, expected {getattr(hint, '__name__', hint)}.") from None
    return value


def known_values(recipe: Recipe, fields: Any) -> dict[str, Any]:
    """The recipe's values, each key spelled as ``fields`` (the valid keys, in order) spells it; an unknown key is
    an error that names the closest valid one."""
    values = respell(recipe, fields, recipe.where)
    unknown = [k for k in values if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise XKDError(f"unknown key '{key}' in {recipe.where}.{hint} Valid keys: {', '.join(fields)}.")
    return values


def build_config(cls: type[C], *, defaults: dict[str, Any] | None = None, recipe: str | Path | Recipe | None = None,
                 flags: dict[str, Any] | None = None) -> C:
    """Merge defaults → recipe (a path, or a :class:`Recipe` read already) → flags (flags that are ``None`` were
    not given) into ``cls``."""
    fields = _field_types(cls)
    recipe_values = known_values(recipe if isinstance(recipe, Recipe) else load_recipe(recipe), fields)
    examples = {f.name: f.default for f in dataclasses.fields(cls) if isinstance(f.default, tuple)}
    merged: dict[str, Any] = {}
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    for layer in (respell(defaults or {}, fields, "defaults"), recipe_values, respell(given, fields, "flags")):
        for key, value in layer.items():
            if key not in fields:
                raise KeyError(f"{cls.__name__} has no field {key!r}")  # a programming error, not a user one
            merged[key] = _coerce(key, value, fields[key], examples.get(key))
    return cls(**merged)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as recorded in a run's config.json: every option that takes effect (a config may name the
    ones its job does not read in ``unread_options()``, e.g. ``lam`` of a plain SKD run)."""
    unread = set(cfg.unread_options()) if hasattr(cfg, "unread_options") else set()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items() if k not in unread}


def config_hash(cfg: Any, ignore: tuple[str, ...] = ()) -> str:
    """A stable hash of the settings that change a job's result."""
    values = {k: v for k, v in to_dict(cfg).items() if k not in ignore}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
