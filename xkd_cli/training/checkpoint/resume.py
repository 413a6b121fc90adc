"""Which checkpoint a command continues: a run's complete checkpoints, whether the command's settings may
continue one, and the run reopened at its step."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from xkd_cli.config.core import config_hash, to_dict
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import RUN_RECORD, Run, check_new_run, now, open_run, run_path, write_json, write_text
from xkd_cli.training.checkpoint.files import read_json_file
from xkd_cli.training.checkpoint.lock import refuse_if_training

DIR_NAME = "checkpoints"
COMPLETE = "COMPLETE"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")

# Config keys that may differ between a checkpoint and the command that resumes it: they steer logging,
# evaluation (greedy, draws no randomness), checkpointing, placement or export, not the training trajectory. Every
# other key (including ones added later) must match. A different device resumes fine but is not bit-identical.
RESUME_FREE_KEYS = ("name", "log_every", "eval_every", "eval_limit", "save_every", "keep_last", "device",
                    "teacher_device", "merge_lora")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path
    step: int

    def state(self) -> dict[str, Any]:
        return read_json_file(self.path / STATE_FILE)


# -- finding checkpoints -------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / DIR_NAME


def is_complete(path: Path) -> bool:
    """``COMPLETE`` exists and every file it lists has the recorded size (a truncated file is not complete)."""
    try:
        marker = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
        return all((path / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first; anything half written is skipped."""
    base = checkpoint_dir(run_dir)
    if not base.is_dir():
        return []
    found = []
    for path in base.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and is_complete(path):
            found.append(Checkpoint(path, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


# -- deciding between a new run and a resume -------------------------------------------------------------------


def differing_keys(saved: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Training-relevant config keys whose values differ (a key missing on one side counts as its default)."""
    current = json.loads(json.dumps(dict(current), default=str))  # compare as stored: tuples → lists
    keys = (set(saved) | set(current)) - set(RESUME_FREE_KEYS)
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != current.get(k, defaults.get(k)))


def config_changes(state: Mapping[str, Any], cfg: Any) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, value now) for each training-relevant key that differs."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    saved, current = state.get("config", {}), to_dict(cfg)
    return [(k, saved.get(k, defaults.get(k)), current.get(k, defaults.get(k)))
            for k in differing_keys(saved, current, defaults)]


def resumable_checkpoint(run_dir: Path, cfg: Any) -> Checkpoint | None:
    """The latest complete checkpoint of a run if ``cfg`` may continue it (e.g. for ``xkd pipeline``)."""
    checkpoint = latest_checkpoint(run_dir)
    try:
        return checkpoint if checkpoint is not None and not config_changes(checkpoint.state(), cfg) else None
    except XKDError:  # a damaged state.json: not resumable
        return None


def training_hash(cfg: Any) -> str:
    """Hash of the config keys that must match for a resume."""
    return config_hash(cfg, ignore=RESUME_FREE_KEYS)


def find_resume(root: Path, task: str, name: str, *, kind: str, cfg: Any, overwrite: bool,
                resume: bool) -> Checkpoint | None:
    """The checkpoint to continue from, or None to start a fresh run; everything else is refused here,
    before any model is loaded (the training commands call it instead of ``check_new_run``)."""
    path = run_path(root, task, name)
    if resume and overwrite:
        raise XKDError("--resume and --overwrite contradict each other: --resume continues the run, --overwrite "
                       "starts it again. Pass one of them.")
    if resume and not path.exists():
        raise XKDError(f"nothing to resume: there is no run '{name}' for task '{task}' in {root}. "
                       "Drop --resume to start it.")
    if path.exists():
        refuse_if_training(path)
    if overwrite or not (path / RUN_RECORD).is_file():
        check_new_run(root, task, name, overwrite)  # a fresh run, or the usual refusals (a foreign directory...)
        return None
    record = open_run(root, task, name).record()
    if record.get("kind") != kind:
        raise XKDError(f"run '{name}' at {path} is a {record.get('kind')} run, not a {kind} run. "
                       "Pick another --name.")
    if record.get("status") == "completed":
        if resume:
            raise XKDError(f"run '{name}' at {path} has already finished: nothing to resume. "
                           "Pass --overwrite to train it again, or --name to start another run.")
        raise XKDError(f"run '{name}' already exists at {path}. Pick another --name or pass --overwrite to replace it.")
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise XKDError(f"run '{name}' at {path} did not finish and has no complete checkpoint to resume from "
                       "(checkpoints are written every --save-every steps and on SIGTERM/SIGINT). "
                       "Pass --overwrite to start it again, or --name to start another run.")
    state = checkpoint.state()
    if state.get("kind") != kind:
        raise XKDError(f"checkpoint {checkpoint.path} belongs to a {state.get('kind')} run, not a {kind} run. "
                       "Pass --overwrite to start the run again.")
    changed = config_changes(state, cfg)
    if changed:
        details = ", ".join(f"{k} ({then!r} → {now_!r})" for k, then, now_ in changed)
        raise XKDError(f"cannot resume run '{name}': its checkpoint (step {checkpoint.step}) was made with other "
                       f"settings: {details}. Use the checkpoint's values, pass --overwrite to start again, or "
                       "--name to start another run.")
    return checkpoint


# -- continuing a run ------------------------------------------------------------------------------------------


def reopen_run(root: Path, task: str, name: str, checkpoint: Checkpoint, config: dict[str, Any]) -> Run:
    """Mark a run as running again from ``checkpoint``: the config as given now, the training log cut back
    to the checkpoint's step (the steps after it are trained again)."""
    run = open_run(root, task, name)
    write_json(run.path / "config.json", config)
    log = run.path / "train_log.jsonl"
    if log.is_file():
        kept = [line for line in log.read_text(encoding="utf-8").splitlines()
                if line.strip() and _logged_step(line) <= checkpoint.step]
        write_text(log, "".join(line + "\n" for line in kept))
    resumes = run.record().get("resumes", [])
    run.update_record(status="running", error=None, resumes=[*resumes, {"step": checkpoint.step, "at": now()}])
    return run


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return 0



