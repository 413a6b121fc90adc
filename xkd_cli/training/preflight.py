"""A command's inputs checked before torch and transformers load (a second instead of five): the task (a typo in
its name, a task file that is not valid YAML, a local data file with a broken row), the models it names (a path
that does not exist, a hub id that is neither reachable nor in the local cache) and, for distill, the SFT runs it
takes its teacher and student from. Nothing here imports torch; the engine makes the same checks again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import find_runs, is_run, run_path_or_none
from xkd_cli.data.tasks import TASKS, Task, split_file
from xkd_cli.data.taskfile import task_of
from xkd_cli.models.references import check_hub_model, resolve_model


def default_model_run(root: Path, task: str, role: str, flag: str) -> str:
    """The newest SFT run recorded with ``--role`` for ``task``: distill's teacher or student when not named."""
    found = find_runs(root, task, kind="sft", role=role)
    if not found:
        raise XKDError(f"no SFT'd {role} for task '{task}' in {root}: run `xkd sft --task {task} --role {role} "
                       f"--model ...` first, or pass {flag}.")
    return found[-1].name


def check_task(cfg: Any) -> Task:
    """The config's task, with its local training rows read once: an unknown task name, a bad task file or a
    broken row is refused here. Hub datasets (a built-in task without --data) are left to the engine."""
    task = task_of(cfg)
    local = cfg.data or (None if task.name in TASKS else getattr(task, "data", None))
    if local is not None and Path(str(local)).expanduser().exists():
        split_file(Path(str(local)).expanduser(), "train")
        (task.load_pairs if getattr(cfg, "preference", False) else task.load)("train", cfg.data)
    elif cfg.data:
        split_file(Path(cfg.data).expanduser(), "train")  # says what is missing
    return task


def check_models(refs: list[str | None], task: str, root: Path, *, answers_ok: bool = False) -> None:
    """Each model named resolves (builtin, run, directory, hub id), and a hub id can be had: reachable or cached.
    ``answers_ok``: a run of the task that holds answers but no model (best-of-n) passes too (eval scores it)."""
    for ref in refs:
        if ref and not (answers_ok and (run := run_path_or_none(root, task, ref)) is not None and is_run(run)):
            source, location = resolve_model(ref, task=task, runs_dir=root)
            if source == "hub":
                check_hub_model(ref, location)


def check_distill_models(cfg: Any, task: str, root: Path) -> None:
    """The student and, where the method reads one, the teacher: named, or recorded SFT runs of the task."""
    student = cfg.student or default_model_run(root, task, "student", "--student")
    teacher = None
    if cfg.spec.needs_teacher_model:
        teacher = cfg.teacher or default_model_run(root, task, "teacher", "--teacher")
    check_models([student, teacher], task, root)
