"""Tasks of one's own: a YAML task file, an inline mapping (pipeline recipes) or a bare data file.

A task file's keys (only ``data`` is required)::

    name: debian-synopsis           # runs go to runs/<name>/ (default: the file's name)
    data: ./pkgs                    # a file, a directory with train/validation/test files, or a hub id
    config: null                    # hub config name
    format: auto                    # auto | prompt-completion | messages | preference | fields
    prompt: "Summarise: {document}" # fields only
    target: "{summary}"             # fields only
    system: null                    # optional system message for chat models
    metric: rouge                   # rouge | bleu | chrf | exact | number | none
    eval_split: validation
    max_input_len: 512
    max_output_len: 64

Rows in TRL's preference format (``prompt``, ``chosen``, ``rejected``) make a preference task: ``load_pairs``
gives its pairs, and ``load`` the chosen responses as targets. A relative ``data`` path is relative to the task
file. ``--data`` on a command overrides it.
:func:`get_task` resolves every ``--task`` value: a built-in name, a ``.yaml``/``.yml`` file, or a data
file (``.jsonl``/``.json``/``.csv``/``.parquet``) in a TRL format, named after the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from xkd_cli.config.checks import CUSTOM_METRICS
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import slug
from xkd_cli.data import formats
from xkd_cli.data.tasks import (FILE_FORMATS, SPLITS, TASKS, Example, PreferencePair, Task, numbered_rows,
                                 split_file, read_rows)

KEYS = ("name", "data", "config", "format", "prompt", "target", "system", "metric", "eval_split",
        "max_input_len", "max_output_len")
TASK_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class FileTask(Task):
    """A task over one's own rows (see the module docstring); family ``custom``."""
    data: str | None = None          # the task's own data (a path or a hub id); --data overrides it
    format: str = "auto"
    prompt_template: str | None = None
    target_template: str | None = None
    system: str | None = None
    max_input_len: int | None = None
    max_output_len: int | None = None
    origin: str = ""                 # the file (or "recipe") that defined the task, for messages

    def _rows(self, split: str, data: str | Path | None) -> tuple[list[dict], str]:
        data = data if data is not None else self.data
        if data is None:
            raise XKDError(f"task {self.name} ({self.origin}) has no data: add 'data: PATH' to it or pass --data")
        if Path(data).exists() or self.hf_id is None:
            path = split_file(Path(data), split)
            return read_rows(path), str(path)
        return self._hub_rows(split), f"{self.hf_id} [{split}]"

    def _examples(self, rows: list[dict], origin: str) -> list[Example]:
        examples = []
        for index, row, where in numbered_rows(rows, origin):
            turns = formats.parse_row(row, self.format, where, prompt=self.prompt_template,
                                      target=self.target_template, system=self.system)
            examples.append(Example(str(index), turns.text, turns.target, turns.text, turns.messages))
        return examples

    def _pairs(self, rows: list[dict], origin: str) -> list[PreferencePair]:
        if self.format not in ("auto", "preference"):
            raise XKDError(f"task {self.name} ({self.origin}) has 'format: {self.format}', which holds no preference "
                           "pairs; give it rows with prompt, chosen and rejected and 'format: preference' (or auto)")
        pairs = []
        for index, row, where in numbered_rows(rows, origin):
            turns = formats.parse_preference(row, where, system=self.system)
            example = Example(str(index), turns.text, turns.chosen, turns.text, turns.messages)
            pairs.append(PreferencePair(example, turns.rejected, formats.extra_columns(row)))
        return pairs


def _plain_text(text: str) -> str:
    return text


def _checked(spec: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = [k for k in spec if k not in KEYS]
    if unknown:
        raise XKDError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(KEYS)}")
    if spec.get("format", "auto") not in formats.FORMATS:
        raise XKDError(f"{where}: format {spec['format']!r} is not one of {', '.join(formats.FORMATS)}")
    if spec.get("metric", "rouge") not in CUSTOM_METRICS:
        raise XKDError(f"{where}: unknown metric {spec['metric']!r}; use one of {', '.join(CUSTOM_METRICS)}")
    if spec.get("eval_split", "validation") not in SPLITS:
        raise XKDError(f"{where}: eval_split {spec['eval_split']!r} is not one of {', '.join(SPLITS)}")
    if spec.get("format") == "fields":
        for key in ("prompt", "target"):
            if not isinstance(spec.get(key), str):
                raise XKDError(f"{where}: 'format: fields' needs a '{key}:' template over your columns, "
                               "e.g. prompt: \"Summarise: {document}\"")
            formats.template_columns(spec[key], where)
    for key in ("max_input_len", "max_output_len"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise XKDError(f"{where}: {key} must be a positive whole number of tokens, got {value!r}")
    for key in ("name", "data", "config", "prompt", "target", "system"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise XKDError(f"{where}: {key} must be text, got {type(spec[key]).__name__}")
    return spec


def task_from_mapping(spec: Any, *, where: str, base: Path | None = None, default_name: str = "custom") -> FileTask:
    """A :class:`FileTask` from a task file's mapping (``base``: the directory relative paths start from)."""
    if not isinstance(spec, dict):
        raise XKDError(f"{where}: a task must be a mapping of {', '.join(KEYS)}, got {type(spec).__name__}")
    spec = _checked(spec, where)
    name = spec.get("name") or default_name
    if slug(name) != name:
        raise XKDError(f"{where}: task name {name!r} must be a plain directory name; try {slug(name)!r}")
    if name in TASKS:
        raise XKDError(f"{where}: task name {name!r} is a built-in task; pick another name")
    data = spec.get("data")
    hub = None
    if data is not None:
        local = Path(data).expanduser()
        if not local.is_absolute() and base is not None:
            local = base / local
        if local.exists():
            data = str(local)
        elif local.suffix.lower() in FILE_FORMATS or data.startswith((".", "/", "~")):
            raise XKDError(f"{where}: data {data!r} does not exist (looked for {local}); fix the path")
        else:
            hub = data  # neither a file nor a directory here: a Hugging Face dataset id
    metric = spec.get("metric", "rouge")
    return FileTask(name=name, family="custom", metric=metric, headline=CUSTOM_METRICS[metric],
                    eval_split=spec.get("eval_split", "validation"), hf_id=hub, hf_config=spec.get("config"),
                    bundled=False, make_prompt=_plain_text, description=f"own data ({where})", data=data,
                    preference=spec.get("format") == "preference",
                    format=spec.get("format", "auto"), prompt_template=spec.get("prompt"),
                    target_template=spec.get("target"), system=spec.get("system"),
                    max_input_len=spec.get("max_input_len"), max_output_len=spec.get("max_output_len"), origin=where)


def load_task_file(path: Path) -> FileTask:
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise XKDError(f"{path}: cannot read the task file ({exc}); check the path") from None
    except yaml.YAMLError as exc:
        raise XKDError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the task file") from None
    return task_from_mapping(spec, where=str(path), base=path.parent, default_name=slug(path.stem))


def task_from_data(path: Path, metric: str | None = None) -> FileTask:
    """The quick path: a prompt-completion, messages or preference file used as a task, named after the file."""
    return task_from_mapping({"data": str(path), "metric": metric or "rouge"}, where=str(path),
                             default_name=slug(path.stem))


def is_task_path(spec: str) -> bool:
    return Path(spec).suffix.lower() in TASK_FILE_SUFFIXES + FILE_FORMATS


def task_of(cfg: Any) -> Task:
    """A command config's task: ``--task``, or a bare ``--data`` file standing for it (with ``--metric``)."""
    return get_task(cfg.task or cfg.data, metric=getattr(cfg, "metric", None))


def get_task(spec: str, metric: str | None = None) -> Task:
    """The task ``--task`` names: built-in, task file, or data file (``metric`` applies to a data file only)."""
    if spec in TASKS or not is_task_path(spec):
        return TASKS.get(spec)  # an unknown name lists the valid ones
    path = Path(spec).expanduser()
    if not path.is_file():
        raise XKDError(f"task file {path} does not exist: pass a built-in task name ({', '.join(TASKS.names())}) "
                       "or the path of a task file")
    if path.suffix.lower() in TASK_FILE_SUFFIXES:
        return load_task_file(path)
    return task_from_data(path, metric)
