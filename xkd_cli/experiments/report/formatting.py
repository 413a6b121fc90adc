"""How the report writes values: table cells, swept values, parameter counts and metric names."""

from __future__ import annotations

import math
from typing import Any

from xkd_cli.evaluation.plots import metric_label

MISSING = "—"


def as_number(value: Any) -> float | None:
    """A finite float, or None for anything else."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def value_text(value: Any) -> str:
    """A swept value as labels write it: a number in short form, a name as it is."""
    number = as_number(value)
    return f"{number:g}" if number is not None and not isinstance(value, str) else str(value)


def cell_text(value: float | None, suffix: str = "") -> str:
    return MISSING if value is None else f"{value:.2f}{suffix}"


def human_count(n: float) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def metric_text(key: str | None) -> str:
    return metric_label(key) if key else "metric"
