"""One writer per run: a lock held while a process trains a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from xkd_cli.core.errors import XKDError

try:
    import fcntl
except ImportError:  # not POSIX: runs go unlocked
    fcntl = None

LOCK_FILE = ".training.lock"


def refuse_if_training(run_dir: Path) -> None:
    """Refuse to touch a run that a live process is training (its lock is held)."""
    path = Path(run_dir) / LOCK_FILE
    if path.is_file():
        with RunLock(run_dir, create=False):
            pass


class RunLock:
    """An advisory lock held while a process trains a run, so a second command (a re-run that would now
    resume) cannot train or overwrite the same run at the same time. The kernel drops it when the
    process dies, SIGKILL included, so a killed run is resumable at once."""

    def __init__(self, run_dir: Path, create: bool = True):
        self.path = Path(run_dir) / LOCK_FILE
        self.create = create
        self.fh = None

    def __enter__(self) -> "RunLock":
        if fcntl is None:
            return self
        self.fh = open(self.path, "a+" if self.create else "r", encoding="utf-8")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise XKDError(f"run {self.path.parent} is being trained right now by {holder}. Wait for it to end "
                           "(or stop it: it checkpoints on SIGTERM), or pick another --name.") from None
        if self.create:
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.write(f"process {os.getpid()}")
            self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            if self.create:  # removed while still held, so no other process can have locked this file meanwhile
                self.path.unlink(missing_ok=True)
            self.fh.close()  # closing releases the lock
            self.fh = None
