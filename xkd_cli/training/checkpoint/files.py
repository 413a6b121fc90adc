"""Checkpoint files on disk: every file fsync'd as it is written, and a damaged one read back as an error
that says how to recover."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from xkd_cli.core.errors import XKDError

DELAY_ENV = "XKD_TEST_CHECKPOINT_DELAY"


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    delay_for_tests()


def write_json_file(path: Path, value: Any) -> None:
    write_file(path, (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8"))


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise XKDError(f"cannot read {path} ({type(exc).__name__}). The checkpoint is damaged: delete its "
                       "directory to resume from the one before, or pass --overwrite to start again.") from None


def delay_for_tests() -> None:
    """``XKD_TEST_CHECKPOINT_DELAY`` seconds, so a test can kill the process while a checkpoint is half written."""
    delay = os.environ.get(DELAY_ENV)
    if delay:
        time.sleep(float(delay))
