"""The runs directory: one directory per run, ``<runs_dir>/<task>/<name>/``.

A run holds ``config.json`` (the resolved config), ``run.json`` (what was run: versions, seed, git
commit, timings, status), logs, and for training runs ``model/`` (loadable by plain transformers).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from xkd_cli import __version__
from xkd_cli.core.errors import XKDError
from xkd_cli.core import threads

RUNS_ENV = "XKD_RUNS_DIR"
RUN_RECORD = "run.json"
MODEL_DIR = "model"  # a training run's model, loadable by plain transformers
REWARD_HEAD_FILE = "reward_head.safetensors"  # an X-KD run's reward head, beside its model (not part of it)
CONTINUES = ("gen-teacher", "diversity", "judge")  # kinds whose re-run continues where a stopped one ended
_created: list["Run"] = []  # the runs this process made, for the note a Ctrl-C prints
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def runs_root(option: str | Path | None = None) -> Path:
    return Path(option or os.environ.get(RUNS_ENV) or "runs").expanduser()


def check_run_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise XKDError(f"invalid run name {name!r}: use letters, digits, '.', '_', '+' or '-', starting with a letter or digit.")
    return name


def slug(text: str) -> str:
    """A run-name-safe version of a model reference such as 'google-t5/t5-small' or './out/model'."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "model"


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """One of the JSON objects xkd writes (records, configs, metrics); anything else is a one-line error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise XKDError(f"{path} is not valid JSON (corrupt?). Delete it or re-create the run with --overwrite.") from None
    except OSError as exc:
        raise XKDError(f"{path} cannot be read ({exc.strerror}). Check the path and its permissions.") from None
    if not isinstance(data, dict):
        raise XKDError(f"{path} holds a JSON {type(data).__name__}, not the object xkd writes (corrupt?). "
                       "Delete it or re-create the run with --overwrite.")
    return data


def read_record(path: Path) -> dict[str, Any]:
    """A run record (run.json): a JSON object, or a one-line error that says how to recover."""
    return read_json(path)


def public_url(url: str) -> str:
    """``url`` without user:password or query string, safe to record in a run."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _public_arg(arg: str) -> str:
    """A command-line word safe to record: a URL loses user:password and query string (keys travel there)."""
    if "://" not in arg:
        return arg
    return public_url(arg)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    import torch  # heavy: the CLI reads this module before any option is checked
    import transformers  # heavy: the CLI reads this module before any option is checked

    return {
        "xkd": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "openmp_wait": threads.wait_settings(),  # how torch's threads wait (xkd_cli.core.threads); times depend on it
        "cores_busy_elsewhere": threads.measured_elsewhere,  # what that choice was made from (None: not measured)
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Run:
    path: Path
    task: str
    name: str

    @property
    def model_dir(self) -> Path:
        return run_model_dir(self.path)

    @property
    def record_path(self) -> Path:
        return self.path / RUN_RECORD

    def record(self) -> dict[str, Any]:
        return read_record(self.record_path) if self.record_path.is_file() else {}

    def update_record(self, **values: Any) -> None:
        data = self.record()
        data.update(values)
        write_json(self.record_path, data)

    def finish(self, started: float, **values: Any) -> None:
        self.update_record(status="completed", finished=now(), duration_s=round(time.time() - started, 3), **values)

    def log(self, message: str) -> None:
        with open(self.path / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(f"{now()} {message}\n")


def run_path(root: Path, task: str, name: str) -> Path:
    return root / task / check_run_name(name)


def run_path_or_none(root: Path, task: str, ref: str) -> Path | None:
    """Where a run called ``ref`` would be (it need not exist), or None when ``ref`` cannot be a run's name
    (a file path, a model id)."""
    try:
        return run_path(root, task, ref)
    except XKDError:
        return None


def run_model_dir(run_dir: Path) -> Path:
    """Where a training run keeps its model."""
    return run_dir / MODEL_DIR


def is_run(path: Path) -> bool:
    """Whether ``path`` is an xkd run: a directory holding a run record."""
    return (path / RUN_RECORD).is_file()


def open_run(root: Path, task: str, name: str) -> Run:
    """An existing run; a directory without run.json is refused so we never treat foreign data as ours."""
    path = run_path(root, task, name)
    if not path.is_dir():
        raise XKDError(f"no run '{name}' for task '{task}' in {root}. List runs with `ls {root / task}`.")
    if not is_run(path):
        raise XKDError(f"{path} is not an xkd run (no {RUN_RECORD}). Pick another name or --runs-dir.")
    return Run(path, task, name)


def check_new_run(root: Path, task: str, name: str, overwrite: bool) -> None:
    """Fail before any compute when the run exists and ``--overwrite`` was not given."""
    path = run_path(root, task, name)
    if path.exists() and not is_run(path) and (path.is_file() or any(path.iterdir())):
        raise XKDError(f"{path} exists and is not an xkd run (no {RUN_RECORD}); refusing to touch it. Pick another --name.")
    if path.exists() and not overwrite:
        raise XKDError(f"run '{name}' already exists at {path}. Pick another --name or pass --overwrite to replace it.")


def resumable_run(root: Path, task: str, name: str, *, kind: str, settings: dict[str, Any], overwrite: bool,
                  what: str, hint: str = "") -> Run | None:
    """The run to resume (same kind, same ``settings`` in its config.json), or None when a fresh one is to
    be made; a run of another kind or made with other settings is refused, naming the differing keys."""
    path = run_path(root, task, name)
    if overwrite or not path.exists():
        return None
    run = open_run(root, task, name)
    record = run.record()
    if record.get("kind") != kind:
        raise XKDError(f"run '{name}' at {path} is a {record.get('kind')} run, not a {kind} run. "
                       "Pick another --name or pass --overwrite to replace it.")
    previous = read_json(run.path / "config.json") if (run.path / "config.json").is_file() else {}
    changed = sorted(k for k in settings if previous.get(k) != settings[k])
    if changed:
        raise XKDError(f"run '{name}' at {path} holds {what} made with other settings ({', '.join(changed)}). "
                       f"Pass --overwrite to replace them{hint}, or --name to write elsewhere.")
    return run


def create_run(root: Path, task: str, name: str, *, kind: str, config: dict[str, Any], seed: int | None,
               overwrite: bool = False, extra: dict[str, Any] | None = None) -> Run:
    """Make a fresh run directory. An existing run is refused unless ``overwrite``; call this only after
    every input was validated, so a bad command leaves the disk untouched."""
    check_new_run(root, task, name, overwrite)
    path = run_path(root, task, name)
    if path.exists():
        try:
            old_kind = read_record(path / RUN_RECORD).get("kind") if is_run(path) else kind
        except XKDError:  # a corrupt record: --overwrite is the documented way out
            old_kind = kind
        if old_kind != kind:  # --overwrite replaces a run of the same kind, never e.g. a trained model
            raise XKDError(f"run '{name}' at {path} is a {old_kind} run; --overwrite only replaces a {kind} run. "
                           "Pick another --name.")
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    path.mkdir(parents=True)
    run = Run(path, task, name)
    _created.append(run)
    write_json(path / "config.json", config)
    write_json(run.record_path, {
        "kind": kind, "task": task, "name": name, "status": "running", "seed": seed,
        "command": [_public_arg(a) for a in sys.argv], "started": now(), "environment": environment(), **(extra or {}),
    })
    return run


def stop_note() -> str:
    """One line for a Ctrl-C outside the training loop: what was kept and how to go on. The unfinished run, if
    any, is marked interrupted."""
    finished, unfinished = [], []
    for run in _created:
        try:
            record = run.record()
        except (OSError, XKDError):  # removed or damaged meanwhile: nothing to say about it
            continue
        (finished if record.get("status") == "completed" else unfinished).append((run, record.get("kind")))
    kept = f" {len(finished)} finished run(s) are kept." if finished else ""
    if not unfinished:
        return f"Ctrl-C: stopped before the result was written.{kept} Run the same command again to start over."
    run, kind = unfinished[-1]
    with contextlib.suppress(OSError, XKDError):  # a full disk must not hide the note
        run.update_record(status="interrupted")
    if kind in CONTINUES:
        return f"Ctrl-C: stopped;{kept} {run.path} keeps what was done. Run the same command again to continue."
    return (f"Ctrl-C: stopped;{kept} {run.path} is unfinished (marked interrupted). Run the same command with "
            "--overwrite to redo it.")


def find_runs(root: Path, task: str, **match: Any) -> list[Run]:
    """Completed runs of a task whose record matches ``match``, oldest first."""
    base = root / task
    if not base.is_dir():
        return []
    found = []
    for path in base.iterdir():
        record_path = path / RUN_RECORD
        if not record_path.is_file():
            continue
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("status") == "completed" and all(record.get(k) == v for k, v in match.items()):
            found.append((record.get("finished", ""), Run(path, task, path.name)))
    return [run for _, run in sorted(found, key=lambda item: item[0])]


def default_task(root: Path) -> str:
    """The task when --task is not given: the only task that has runs in the workspace."""
    tasks = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob(f"*/{RUN_RECORD}"))) \
        if root.is_dir() else []  # only folders holding runs: not report/ or a judge cache
    if len(tasks) == 1:
        return tasks[0]
    where = f"the workspace {root} holds runs for {', '.join(tasks)}" if tasks else f"the workspace {root} is empty"
    raise XKDError(f"--task is required: {where}. Pass --task NAME.")
