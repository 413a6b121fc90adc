"""Figures for people: one metric against one quantity, a curve per series, written as PNG and SVG.

No display is needed and no global state is touched: figures are built with ``matplotlib.figure.Figure``
on the Agg canvas (never ``pyplot``), so plotting is safe inside tests, notebooks and threads.

The one entry point, :func:`plot_curves`, serves every sweep figure the toolkit draws::

    plot_curves([Series("gkd", x=[20.1, 35.4], y=[31.0, 29.8], annotations=["T=0.1", "T=1"])],
                xlabel="Diversity (100 − SelfBLEU)", ylabel=metric_label("bleu"),
                baselines=[Baseline("teacher", 33.5)], stem=run_dir / "diversity")
    # -> {"png": run_dir/"diversity.png", "svg": run_dir/"diversity.svg"}

Text stays text in the SVG (``svg.fonttype: none``), so axis labels and legend entries are searchable,
and the same numbers give byte-identical SVG files (no date, fixed id salt).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from xkd_cli.core.errors import XKDError

FORMATS = ("png", "svg")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
_METRIC_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
                  "bleu": "BLEU", "accuracy": "Accuracy", "self_bleu": "SelfBLEU",
                  "diversity": "Diversity (100 − SelfBLEU)"}


def metric_label(key: str) -> str:
    """How a metric key from ``score()`` is written on an axis: 'rouge2' → 'ROUGE-2', 'bleu' → 'BLEU'."""
    return _METRIC_LABELS.get(key, key.replace("_", " ").capitalize() if key.islower() else key)


@dataclass(frozen=True)
class Series:
    """One curve: points joined in the order given (``sort_x=True`` in :func:`plot_curves` sorts them).

    ``annotations`` (optional) labels each point, e.g. the temperature or λ that produced it. A point
    whose x or y is None or NaN is left out (with its annotation)."""
    label: str
    x: Sequence[float | None]
    y: Sequence[float | None]
    annotations: Sequence[str] | None = None
    style: dict = field(default_factory=dict)  # extra matplotlib ``plot`` keywords (color, linestyle, marker …)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise XKDError(f"series {self.label!r} has {len(self.x)} x values but {len(self.y)} y values")
        if self.annotations is not None and len(self.annotations) != len(self.x):
            raise XKDError(f"series {self.label!r} has {len(self.x)} points but {len(self.annotations)} annotations")

    def points(self) -> list[tuple[float, float, str | None]]:
        notes = list(self.annotations) if self.annotations is not None else [None] * len(self.x)
        return [(float(x), float(y), note) for x, y, note in zip(self.x, self.y, notes) if _finite(x) and _finite(y)]


@dataclass(frozen=True)
class Baseline:
    """A dashed reference line across the plot (a teacher's score, the SFT student's …), in the legend.

    ``axis="y"`` draws a horizontal line at y = value; ``axis="x"`` a vertical one at x = value."""
    label: str
    value: float
    axis: str = "y"
    color: str | None = None

    def __post_init__(self) -> None:
        if self.axis not in ("x", "y"):
            raise XKDError(f"baseline {self.label!r}: axis must be 'x' or 'y', got {self.axis!r}")


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(float(value))


def output_paths(stem: str | Path, formats: Sequence[str] = FORMATS) -> dict[str, Path]:
    """``run/diversity`` → {"png": run/diversity.png, "svg": run/diversity.svg} (a dotted stem is kept whole)."""
    stem = Path(stem)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise XKDError(f"figure formats must be among {', '.join(FORMATS)}, got {', '.join(formats) or 'none'}")
    return {fmt: stem.parent / f"{stem.name}.{fmt}" for fmt in formats}


def plot_curves(series: Sequence[Series], *, xlabel: str, ylabel: str, stem: str | Path, title: str | None = None,
                baselines: Sequence[Baseline] = (), formats: Sequence[str] = FORMATS, sort_x: bool = False,
                xscale: str = "linear", xticks: Sequence[float] | None = None,
                xticklabels: Sequence[str] | None = None, xlim: tuple[float, float] | None = None,
                ylim: tuple[float, float] | None = None, legend_title: str | None = None,
                size: tuple[float, float] = (6.4, 4.4), dpi: int = 150) -> dict[str, Path]:
    """Draw ``ylabel`` against ``xlabel``, one curve per series with its own colour and marker, point
    annotations, and dashed baseline lines; write ``<stem>.png`` and ``<stem>.svg`` (or ``formats``).

    ``xscale`` is any matplotlib scale ("linear", "log", "symlog" for sweeps that include 0, e.g. λ).
    ``xticks`` / ``xticklabels`` pin the ticks to the swept values. Returns the written paths by format.
    """
    import matplotlib  # here and below: matplotlib is slow to import; only drawing needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: see above
    from matplotlib.figure import Figure  # here: see above

    if not series and not baselines:
        raise XKDError("nothing to plot: give at least one series or baseline")
    paths = output_paths(stem, formats)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "xkd", "font.size": 10, "axes.titlesize": 11}):
        fig = Figure(figsize=size, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        notes: list[tuple[float, float, str, str]] = []
        colors = matplotlib.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
        for i, s in enumerate(series):
            points = s.points()
            if sort_x:
                points.sort(key=lambda p: p[0])
            style = {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)], "linewidth": 1.6,
                     "markersize": 6, **s.style}
            ax.plot([p[0] for p in points], [p[1] for p in points], label=s.label, zorder=2 + i / 100, **style)
            notes += [(x, y, note, style["color"]) for x, y, note in points if note]
        gray = ("0.35", "0.6", "tab:gray", "k")
        for j, b in enumerate(baselines):
            line = ax.axhline if b.axis == "y" else ax.axvline
            line(b.value, linestyle="--", linewidth=1.2, color=b.color or gray[j % len(gray)], label=b.label)
        ax.set_xscale(xscale)
        if xticks is not None:
            ax.set_xticks(list(xticks), labels=list(xticklabels) if xticklabels is not None else None)
        ax.margins(0.1)
        if xlim is not None:
            ax.set_xlim(*xlim)
        if ylim is not None:
            ax.set_ylim(*ylim)
        _annotate(ax, notes, dpi)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title, loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(title=legend_title, fontsize=9, loc="best", framealpha=0.85)
        for fmt, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            # No timestamps in the files: the same numbers give the same SVG.
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}
            fig.savefig(path, format=fmt, metadata=metadata)
    return paths


def _annotate(ax, notes: list[tuple[float, float, str, str]], dpi: int) -> None:
    """Write each point's note beside it; notes of points that (nearly) coincide are stacked, not overprinted."""
    ax.get_xlim(), ax.get_ylim()  # settles autoscaling, so data → pixel positions are final enough
    near = 10 * dpi / 72  # 10 points, in pixels
    placed: list[tuple[float, float]] = []
    for x, y, note, color in notes:
        px, py = ax.transData.transform((x, y))
        stack = sum(1 for qx, qy in placed if abs(qx - px) < 3 * near and abs(qy - py) < near)
        placed.append((px, py))
        ax.annotate(note, (x, y), textcoords="offset points", xytext=(5, 4 + 10 * stack), fontsize=8, color=color,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75},
                    zorder=5)


def plot_intervals(labels: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float], *,
                   xlabel: str, stem: str | Path, title: str | None = None, formats: Sequence[str] = FORMATS,
                   dpi: int = 150) -> dict[str, Path]:
    """One row per label: the value as a dot and its interval as a bar, with a dashed line at 0 (a paired
    difference and its confidence interval).  Written as ``<stem>.png`` / ``.svg`` like :func:`plot_curves`."""
    import matplotlib  # here and below: matplotlib is slow to import; only drawing needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: see above
    from matplotlib.figure import Figure  # here: see above

    if not labels:
        raise XKDError("nothing to plot: give at least one interval")
    paths = output_paths(stem, formats)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "xkd", "font.size": 10, "axes.titlesize": 11}):
        fig = Figure(figsize=(6.4, 1.2 + 0.5 * len(labels)), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        rows = list(range(len(labels)))[::-1]  # the first label on top
        ax.errorbar(list(values), rows, xerr=[[v - lo for v, lo in zip(values, lows)],
                                              [hi - v for v, hi in zip(values, highs)]],
                    fmt="o", color="C0", capsize=4, linewidth=1.6)
        ax.axvline(0.0, linestyle="--", linewidth=1.2, color="0.35")
        ax.set_yticks(rows, labels=list(labels))
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_xlabel(xlabel)
        if title:
            ax.set_title(title, loc="left")
        ax.grid(True, axis="x", alpha=0.3)
        for fmt, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            metadata = {"Date": None} if fmt == "svg" else {"Software": None}  # same numbers, same SVG
            fig.savefig(path, format=fmt, metadata=metadata)
    return paths
