"""Where a model with a reward head lives, found from what the user typed without loading anything, so a run that
has no reward head is refused before torch is imported.

A scorer is a directory holding a language model (``model/``, as every training run saves it) and a Gaussian
reward head beside it (``reward_head.safetensors``, :class:`xkd_cli.objectives.reward.RewardHead`), with the
run's ``run.json`` and ``config.json``. Today that is an X-KD distillation (sxkd, gxkd, seqxkd: the head F_ex
trains) or an AVA / Bradley–Terry reward model (``xkd reward-model``): the same pair of files, so a reward-model
run plugs in as it is (:func:`locate_scorer` asks for the files, not for the method).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import (REWARD_HEAD_FILE, RUN_RECORD, check_run_name, default_task, is_run, open_run,
                                    read_json, read_record, run_model_dir, run_path_or_none)

X_METHODS = ("sxkd", "gxkd", "seqxkd")  # the distillation methods that train a reward head (F_ex)
REWARD_MODEL_KIND = "reward-model"  # the run.json kind of `xkd reward-model`


@dataclass(frozen=True)
class ScorerFiles:
    """A model and its reward head on disk, with what their run recorded (``config``: its config.json)."""
    name: str
    task: str | None
    path: Path
    record: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    @property
    def model_dir(self) -> Path:
        return run_model_dir(self.path)

    @property
    def head(self) -> Path:
        return self.path / REWARD_HEAD_FILE

    @property
    def method(self) -> str:
        return self.record.get("method") or self.config.get("method") or self.record.get("kind") or "?"

    def describe(self) -> dict[str, Any]:
        """What a view's header says about the scorer (the method's own hyperparameters, as the run recorded)."""
        settings = {k: self.config.get(k) for k in ("lam", "gamma", "tau", "reward_position") if k in self.config}
        return {"run": self.name, "task": self.task, "path": str(self.path), "kind": self.record.get("kind"),
                "method": self.method, "paper_name": self.record.get("paper_name") or self.method, **settings}


def _path_like(ref: str) -> bool:
    return "/" in ref or ref.startswith((".", "~"))


def locate_scorer(ref: str, *, task: str | None, runs_root: Path) -> ScorerFiles:
    """The run ``ref`` names (a run name of ``task``, by default the workspace's only task, or the path of a run
    directory), checked to hold a model and a reward head; otherwise one line naming the run and what to pass."""
    if _path_like(ref):
        path = Path(ref).expanduser()
        if not path.is_dir():
            raise XKDError(f"no run directory {ref!r}: check the path, or pass a run's name (with --task)")
        if not is_run(path):
            raise XKDError(f"{path} is not an xkd run (no {RUN_RECORD}): pass an sxkd, gxkd or seqxkd run directory, or a "
                           "reward-model run's")
        name = path.name
    else:
        run = open_run(runs_root, task or default_task(runs_root), ref)
        path, name = run.path, run.name
    record = read_record(path / RUN_RECORD)
    config = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    found = ScorerFiles(name, task or record.get("task"), path, record, config)
    if not found.head.is_file():
        kind = found.method if record.get("kind") == "distill" else record.get("kind") or "unknown"
        raise XKDError(f"run {name!r} ({path}) is {_article(kind)} {kind} run and has no reward head "
                       f"({REWARD_HEAD_FILE}): pass an sxkd, gxkd or seqxkd run, whose distillation trains one, or a "
                       "reward-model run (xkd reward-model)")
    if not found.model_dir.is_dir():
        raise XKDError(f"run {name!r} ({path}) has a reward head but no model/ beside it (an unfinished run?): "
                       "finish it with the same command and --resume, or pass another run")
    return found


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" or word.startswith(("sft", "sxkd", "skd")) else "a"


def locate_reward_model(ref: str, *, task: str | None, runs_root: Path, option: str = "--reward-model") -> ScorerFiles:
    """The reward-model run (``xkd reward-model``) ``ref`` names, for scoring whole responses: the path of its
    directory, or its name, looked up under ``task`` first, then under every task of the workspace (a reward model
    trained on a preference task scores the answers of another). A run that is not a reward model (no reward head,
    or an X-KD distillation, whose head models per-token TD errors rather than a response's reward) is refused in
    one line, before torch loads."""
    path = _reward_model_dir(ref, task=task, runs_root=runs_root, option=option)
    record = read_record(path / RUN_RECORD)
    kind = record.get("kind") or "unknown"
    if kind != REWARD_MODEL_KIND or not (path / REWARD_HEAD_FILE).is_file():
        what = record.get("method") if kind == "distill" and record.get("method") else kind
        why = (f"has no reward head ({REWARD_HEAD_FILE})" if not (path / REWARD_HEAD_FILE).is_file() else
               "its reward head models per-token TD errors, not a response's reward")
        raise XKDError(f"{option} {ref}: {path} is {_article(what)} {what} run, not a reward model ({why}): pass a run "
                       "of `xkd reward-model` (e.g. xkd reward-model --model tiny-t5-small --task synth-sum-pref)")
    return locate_scorer(str(path), task=None, runs_root=runs_root)


def _reward_model_dir(ref: str, *, task: str | None, runs_root: Path, option: str) -> Path:
    if _path_like(ref):
        path = Path(ref).expanduser()
        if not is_run(path):
            raise XKDError(f"{option} {ref}: no run directory there (no {RUN_RECORD}): check the path, or pass the "
                           "reward-model run's name")
        return path
    try:
        check_run_name(ref)
    except XKDError as exc:
        raise XKDError(f"{option} {ref!r}: {str(exc).rstrip('.')}") from None
    own = run_path_or_none(runs_root, task, ref) if task else None
    if own is not None and is_run(own):
        return own
    found = sorted(p for p in runs_root.glob(f"*/{ref}") if is_run(p)) if runs_root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if found:
        raise XKDError(f"{option} {ref}: runs of that name exist under several tasks ("
                       f"{', '.join(p.parent.name for p in found)}): pass the directory of the one you mean, e.g. "
                       f"{option} {found[0]}")
    raise XKDError(f"{option} {ref}: no run of that name in {runs_root} (under any task): train one with "
                   "`xkd reward-model --task synth-sum-pref --name NAME ...`, or pass its directory")
