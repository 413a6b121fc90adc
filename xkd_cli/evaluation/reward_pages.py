"""The views of ``xkd reward`` (:mod:`xkd_cli.evaluation.reward_view`): one colour scale for μ, a self-contained
HTML page, and one PNG figure per response.

Colour is the reward head's mean μ_t on a diverging scale centred at 0 (ColorBrewer's RdBu: red below 0, white
at 0, blue above), symmetric on [−s, +s] with ``s`` the largest |μ| shown, rounded up (:func:`nice_scale`), so
every response of one view shares it. The terminal (``xkd_cli.cli.reward``), the page and the figures take their
colours from :func:`colour`, so the three agree.

Figures are drawn like :mod:`xkd_cli.evaluation.plots`: ``matplotlib.figure.Figure`` on the Agg canvas, never
``pyplot``, with mathtext off so a token such as ``$5`` stays text.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

# ColorBrewer RdBu (9 classes), low to high: a diverging scale that reads in colour-blind vision and in grey.
DIVERGING = ("#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac")
RESPONSES = {"reference": "the references", "generated": "greedy answers", "given": "as given"}
TOKENS_PER_ROW = 32  # at most, in a figure: longer responses wrap onto rows of equal length


def nice_scale(peak: float) -> float:
    """The half-width of the colour scale: ``peak`` (the largest |μ|) rounded up to 1, 2, 2.5 or 5 × 10^k; 1
    when nothing is above 0."""
    if not peak > 0 or not math.isfinite(peak):
        return 1.0
    power = 10.0 ** math.floor(math.log10(peak))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= peak * (1 - 1e-9))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def colour(value: float, scale: float) -> str:
    """``value`` on the diverging scale [−scale, +scale] (clipped), as ``#rrggbb``: linear between the anchors."""
    x = min(max(value / scale, -1.0), 1.0) if scale > 0 else 0.0
    at = (x + 1) / 2 * (len(DIVERGING) - 1)
    low = min(int(at), len(DIVERGING) - 2)
    w = at - low
    a, b = _rgb(DIVERGING[low]), _rgb(DIVERGING[low + 1])
    return "#" + "".join(f"{round(p + (q - p) * w):02x}" for p, q in zip(a, b))


def ink(background: str) -> str:
    """Text colour that reads on ``background``: white on the dark ends of the scale, near-black elsewhere."""
    r, g, b = _rgb(background)
    return "#ffffff" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 130 else "#1a1a1a"


def signed(value: float | None, digits: int = 4) -> str:
    """``+0.0123`` / ``−0.0123`` (a real minus sign), or ``–`` for no value."""
    if value is None:
        return "–"
    text = f"{value:+.{digits}f}"
    return text.replace("-", "−")


def shown(piece: str) -> str:
    """A token's text as a view shows it: a newline as ↵ (and the line break), nothing at all as ·."""
    if not piece:
        return "·"
    return piece.replace("\n", "↵\n")


def header_items(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs that say what a view shows: run, method and its λ, reward position, responses."""
    s = result["scorer"]
    items = [("run", s["run"]), ("method", s["paper_name"])]
    for key, label in (("lam", "λ"), ("gamma", "γ"), ("tau", "τ′")):
        if s.get(key) is not None:
            items.append((label, f"{s[key]:g}"))
    items.append(("reward position", s["reward_position"]))
    if result.get("task"):
        items.append(("task", result["task"] + (f" · {result['split']}" if result.get("split") else "")))
    items.append(("responses", RESPONSES[result["responses"]]))
    return items


def position_note(result: dict[str, Any]) -> str:
    if result["scorer"]["reward_position"] == "next":
        return ("reward position next: μ_t, σ_t read the state after token t, so the last token reads no state "
                "and shows the head's biases")
    return "reward position current: μ_t, σ_t read the state that predicts token t"


def _tip(token: dict[str, Any], last: bool, position: str) -> str:
    lines = [f"token {token['position']}: {token['token']!r}", f"μ = {signed(token['mu'])}",
             f"σ = {token['sigma']:.4f}",
             f"δ = {signed(token['delta'])}" if token["delta"] is not None else "δ: none (no next token)",
             f"Q = {signed(token['q'])}"]
    if last and position == "next":
        lines.append("(no next state: the head's biases)")
    return "\n".join(lines)


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;background:#fafafa;
 margin:0;padding:2rem 1rem}
main{max-width:62rem;margin:0 auto}
h1{font-size:1.35rem;margin:0 0 .5rem}
.meta{display:flex;flex-wrap:wrap;gap:.35rem .5rem;margin:0 0 .6rem;padding:0;list-style:none;font-size:.85rem}
.meta li{background:#fff;border:1px solid #e2e2e2;border-radius:999px;padding:.1rem .65rem}
.meta b{font-weight:600;color:#555;margin-right:.3em}
.note{color:#666;font-size:.82rem;margin:.2rem 0}
.legend{display:flex;align-items:center;gap:.6rem;font-size:.82rem;margin:1rem 0 1.4rem;flex-wrap:wrap}
.bar{width:18rem;height:.9rem;border-radius:3px;border:1px solid #ccc;background:linear-gradient(to right,%s)}
.sig{display:inline-block;width:2.2rem;height:.9rem;background:#eee;box-shadow:inset 0 -4px 0 rgba(0,0,0,.3);
 border-radius:2px}
section{background:#fff;border:1px solid #e2e2e2;border-radius:10px;padding:1rem 1.3rem;margin:0 0 1.2rem}
h2{font-size:1rem;margin:0 0 .3rem;display:flex;flex-wrap:wrap;gap:.3rem 1rem;align-items:baseline}
h2 small{font-weight:400;color:#666;font-size:.82rem}
.prompt{color:#555;font-size:.85rem;white-space:pre-wrap;margin:.2rem 0 .8rem;max-height:7.5em;overflow:auto;
 border-left:3px solid #e2e2e2;padding-left:.7rem}
.tokens{font:18px/2.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;white-space:pre-wrap;
 word-break:break-word}
.t{position:relative;padding:.2em 0;border-radius:3px;cursor:default}
.t+.t{margin-left:1px}
.t.sp{font-size:.78em;font-style:italic}
.t:hover{outline:2px solid #1d1d1f;z-index:2}
.t:hover::after{content:attr(data-tip);position:absolute;left:0;top:2.3em;white-space:pre;background:#1d1d1f;
 color:#fff;font:12px/1.45 ui-monospace,Menlo,Consolas,monospace;font-style:normal;padding:.45em .65em;
 border-radius:5px;z-index:3;pointer-events:none;box-shadow:0 2px 8px rgba(0,0,0,.25)}
details{margin-top:.8rem;font-size:.85rem}
summary{cursor:pointer;color:#444}
table{border-collapse:collapse;margin-top:.5rem;font-variant-numeric:tabular-nums}
th,td{padding:.15rem .7rem;text-align:right;border-bottom:1px solid #eee}
th{color:#555;font-weight:600}
th:nth-child(2){text-align:left}
td.tok{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.warn{color:#a15c00;font-size:.82rem}
"""


def _span(token: dict[str, Any], scale: float, sigma_peak: float, last: bool, position: str) -> str:
    bg = colour(token["mu"], scale)
    depth = 1 + round(3 * min(token["sigma"] / sigma_peak, 1.0)) if sigma_peak > 0 else 1  # 1–4 px
    style = f"background:{bg};color:{ink(bg)};box-shadow:inset 0 -{depth}px 0 rgba(0,0,0,.3)"
    cls = "t sp" if token["special"] else "t"
    tip = html.escape(_tip(token, last, position), quote=True)
    return f'<span class="{cls}" style="{style}" data-tip="{tip}">{html.escape(shown(token["token"]))}</span>'


def _rows(tokens: Sequence[dict[str, Any]], scale: float) -> str:
    cells = []
    for t in tokens:
        bg = colour(t["mu"], scale)
        cells.append(f'<tr><td>{t["position"]}</td><td class="tok">{html.escape(repr(t["token"]))}</td>'
                     f'<td style="background:{bg};color:{ink(bg)}">{signed(t["mu"])}</td><td>{t["sigma"]:.4f}</td>'
                     f'<td>{signed(t["delta"])}</td><td>{signed(t["q"])}</td></tr>')
    return "".join(cells)


def _example(k: int, example: dict[str, Any], result: dict[str, Any], sigma_peak: float) -> str:
    tokens, scale, position = example["tokens"], result["scale"], result["scorer"]["reward_position"]
    spans = "".join(_span(t, scale, sigma_peak, i == len(tokens) - 1, position) for i, t in enumerate(tokens))
    cut = ('<p class="warn">the response was cut at --max-output-len '
           f'{result["max_output_len"]} tokens</p>') if example["truncated"] else ""
    return (f'<section><h2>example {k} · id {html.escape(example["id"])}<small>μ at the last token '
            f'{signed(example["reward_last"])} · Σμ {signed(example["reward_sum"])} · {len(tokens)} tokens</small></h2>'
            f'<div class="prompt">{html.escape(example["prompt"])}</div><div class="tokens">{spans}</div>{cut}'
            '<details><summary>every token: μ, σ, δ, Q</summary><table><tr><th>t</th><th>token</th><th>μ</th>'
            f'<th>σ</th><th>δ</th><th>Q</th></tr>{_rows(tokens, scale)}</table></details></section>')


def _subscripted(text: str) -> str:
    """``text`` escaped for HTML, with μ_t, σ_t, δ_t, Q_t written with a real subscript."""
    return re.sub(r"([μσδQ])_t", r"\1<sub>t</sub>", html.escape(text))


def page(result: dict[str, Any]) -> str:
    """The whole page as one HTML string: inline CSS, no scripts, no external files."""
    scale = result["scale"]
    sigma_peak = max((t["sigma"] for e in result["examples"] for t in e["tokens"]), default=1.0)
    meta = "".join(f"<li><b>{html.escape(label)}</b>{html.escape(str(value))}</li>"
                   for label, value in header_items(result))
    examples = "".join(_example(k, e, result, sigma_peak) for k, e in enumerate(result["examples"], 1))
    title = f"xkd reward · {result['scorer']['run']}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<style>{_CSS % ",".join(DIVERGING)}</style></head><body><main>'
            f'<h1>Per-token reward · {html.escape(result["scorer"]["run"])}</h1><ul class="meta">{meta}</ul>'
            f'<p class="note">{_subscripted(position_note(result))}. δ<sub>t</sub> = Q<sub>t</sub> − γ·Q<sub>t+1</sub> '
            'is the TD error the head models: under F<sub>ex</sub>, δ<sub>t</sub> ~ N(μ<sub>t</sub>, σ<sub>t</sub>²). '
            'Hover a token for its numbers.</p>'
            f'<div class="legend"><span>μ<sub>t</sub></span><span>{signed(-scale, 3)}</span><span class="bar"></span>'
            f'<span>{signed(scale, 3)}</span><span style="margin-left:1.2rem" class="sig"></span>'
            f'<span>the bar under a token grows with σ<sub>t</sub> (up to {sigma_peak:.3g})</span></div>'
            f'{examples}</main></body></html>\n')


def write_page(result: dict[str, Any], path: Path) -> Path:
    path.write_text(page(result), encoding="utf-8")
    return path


def write_figures(result: dict[str, Any], out_dir: Path, dpi: int = 130) -> list[Path]:
    """``reward-<k>.png`` for each response: its tokens as cells coloured by μ, over a chart of μ_t ± σ_t with
    δ_t, a colourbar, and a title naming the run, method, λ and reward position."""
    n = len(result["examples"])
    return [_figure(result, example, f"example {k} of {n}", out_dir / f"reward-{k}.png", dpi)
            for k, example in enumerate(result["examples"], 1)]


CELL_INCHES = 0.42  # a token's cell: about six characters of 8-point text across
FLAT_CHARACTERS = 5  # longer tokens are written upright in their cell


def _strip(ax, row: Sequence[dict[str, Any]], scale: float) -> None:
    """One row of token cells coloured by μ, each with its text."""
    from matplotlib.patches import Rectangle  # here: matplotlib is slow to import; only drawing needs it

    for t in row:
        bg = colour(t["mu"], scale)
        ax.add_patch(Rectangle((t["position"] - 0.5, 0), 1, 1, facecolor=bg, edgecolor="white", lw=1.5))
        text = shown(t["token"]).replace("\n", "").strip() or "␣"
        flat = len(text) <= FLAT_CHARACTERS
        ax.text(t["position"], 0.5, text, ha="center", va="center", color=ink(bg), clip_on=True,
                fontsize=8 if flat else 7.5, rotation=0 if flat else 90, style="italic" if t["special"] else "normal")
    ax.set_ylim(0, 1)
    ax.axis("off")


def _chart(ax, row: Sequence[dict[str, Any]], ylim: tuple[float, float]) -> None:
    """μ_t as a line in its band μ_t ± σ_t, and δ_t as points: under F_ex δ_t ~ N(μ_t, σ_t²)."""
    xs = [t["position"] for t in row]
    mu = [t["mu"] for t in row]
    sigma = [t["sigma"] for t in row]
    ax.fill_between(xs, [m - s for m, s in zip(mu, sigma)], [m + s for m, s in zip(mu, sigma)], color="#4393c3",
                    alpha=0.22, lw=0, label="μ_t ± σ_t")
    ax.plot(xs, mu, color="#1d3557", lw=1.6, marker="o", ms=3, label="μ_t, the reward mean")
    td = [(t["position"], t["delta"]) for t in row if t["delta"] is not None]
    ax.plot([p for p, _ in td], [d for _, d in td], ls="none", marker="D", ms=4, color="#e76f51",
            label="δ_t = Q_t − γ·Q_(t+1), the TD error")
    ax.axhline(0.0, color="0.45", lw=0.8, ls="--")
    ax.set_ylim(*ylim)
    ax.set_ylabel("reward")
    ax.grid(True, alpha=0.25)
    ax.set_xticks(xs[::5] if len(xs) > 16 else xs)


def _figure(result: dict[str, Any], example: dict[str, Any], which: str, path: Path, dpi: int) -> Path:
    import matplotlib  # here and below: matplotlib is slow to import; only drawing needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: see above
    from matplotlib.cm import ScalarMappable  # here: see above
    from matplotlib.colors import LinearSegmentedColormap, Normalize  # here: see above
    from matplotlib.figure import Figure  # here: see above

    tokens, scale = example["tokens"], result["scale"]
    columns = math.ceil(len(tokens) / math.ceil(len(tokens) / TOKENS_PER_ROW))  # rows of equal length
    rows = [tokens[i:i + columns] for i in range(0, len(tokens), columns)]
    values = [t["mu"] + s * t["sigma"] for t in tokens for s in (-1, 1)] + \
             [t["delta"] for t in tokens if t["delta"] is not None]
    low, high = min(values), max(values)
    pad = 0.08 * (high - low or 1.0)
    with matplotlib.rc_context({"font.size": 9, "text.parse_math": False}):
        fig = Figure(figsize=(CELL_INCHES * max(columns, 12) + 2.4, 1.35 + 2.3 * len(rows)), dpi=dpi,
                     layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(2 * len(rows), 1, height_ratios=[0.75, 1.55] * len(rows))
        axes = []
        for r, row in enumerate(rows):
            strip, chart = fig.add_subplot(grid[2 * r]), fig.add_subplot(grid[2 * r + 1])
            axes += [strip, chart]
            _strip(strip, row, scale)
            _chart(chart, row, (low - pad, high + pad))
            first = row[0]["position"]
            for ax in (strip, chart):  # every row as wide as a full one, so cells keep their size
                ax.set_xlim(first - 0.5, first + columns - 0.5)
        axes[-1].set_xlabel("token position t")
        handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
        cmap = LinearSegmentedColormap.from_list("xkd-rdbu", DIVERGING)
        bar = fig.colorbar(ScalarMappable(Normalize(-scale, scale), cmap), ax=axes, shrink=0.9, pad=0.01, aspect=30)
        bar.set_label("μ_t (cell colour)")
        about = " · ".join(f"{label} {value}" for label, value in header_items(result))
        fig.suptitle(f"{which} · id {example['id']} · μ at the last token {signed(example['reward_last'])}, "
                     f"Σμ {signed(example['reward_sum'])}\n{about}", fontsize=9, x=0.01, ha="left")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", metadata={"Software": None})
    return path
