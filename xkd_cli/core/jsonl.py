"""Append-only JSONL result files that survive being killed mid-write.

Long jobs (evaluation, teacher generation, judging) append one row per finished item and flush, so a
re-run reads what is there, drops a half-written last line, and skips the finished ids.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from xkd_cli.core.errors import XKDError


def read_rows(path: Path, *, repair: bool = True) -> list[dict[str, Any]]:
    """Rows of a result file; a torn last line (no trailing newline, not valid JSON) is cut off when ``repair``."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    rows: list[dict[str, Any]] = []
    keep_bytes = 0
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not line.strip():
            keep_bytes += len(line) + (0 if last else 1)
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if last and repair:  # the write that was interrupted
                with open(path, "r+b") as fh:
                    fh.truncate(keep_bytes)
                break
            raise XKDError(f"{path} line {number} is not valid JSON. Delete the file (or that line) and re-run.") from None
        if not isinstance(row, dict):
            raise XKDError(f"{path} line {number} is not a JSON object. Delete the file (or that line) and re-run.")
        rows.append(row)
        keep_bytes += len(line) + (0 if last else 1)
    return rows


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
