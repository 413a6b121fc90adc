"""Terminal output: progress bars and messages on stderr, results on stdout (a table, or JSON with ``--json``)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table

console = Console(stderr=True)  # progress, notes, errors
# Results. soft_wrap: a printed line is never broken at the console's width (80 columns when piped), so a path in
# it can be copied and parsed; tables still fit the width, and the paths go on lines of their own after them.
out = Console(soft_wrap=True)


def note(text: str) -> None:
    """One line on stderr as written: never wrapped (a path in it stays whole), no rich markup (``[`` in a path)."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def paths(**named: Any) -> None:
    """``name: path`` lines on stdout, one each, never wrapped, without markup (``None`` values are left out)."""
    for name, path in named.items():
        if path is not None:
            out.print(f"{name}: {path}", markup=False, highlight=False)


def progress() -> Progress:
    """A progress bar with count, elapsed time and ETA; ``task.fields['info']`` shows live numbers."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False, disable=not console.is_terminal and not _force_progress(),
    )


def _force_progress() -> bool:
    return os.environ.get("XKD_PROGRESS", "") == "1"


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    out = Table(title=title, title_justify="left", min_width=len(title))  # a title wider than the columns stays one line
    for column in columns:
        out.add_column(str(column), overflow="fold")
    for row in rows:
        out.add_row(*[fmt(v) for v in row])
    return out


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return "" if value is None else str(value)


def emit(result: dict[str, Any], *, as_json: bool, render) -> None:
    """Print ``result`` as JSON on stdout, or let ``render`` draw it for people (the main process only, when
    a launcher runs several)."""
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
        sys.stdout.flush()
    else:
        render(result)
