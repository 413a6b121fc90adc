"""``xkd reward``: the per-token reward of a model with a reward head (an X-KD run's), in the terminal, as an HTML
page and as PNG figures; a thin command over ``xkd_cli.evaluation.reward_view``, its options from
``xkd_cli.config.reward_view``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.rule import Rule
from rich.style import Style
from rich.text import Text

from xkd_cli.cli.options import config_command
from xkd_cli.config.defaults import make_config
from xkd_cli.config.reward_view import RewardViewConfig
from xkd_cli.core.ui import emit, out, table
from xkd_cli.core.workspace import runs_root
from xkd_cli.data.taskfile import get_task
from xkd_cli.evaluation.reward_pages import colour, header_items, ink, position_note, shown, signed
from xkd_cli.evaluation.reward_runs import locate_scorer

LEGEND_CELLS = 21

EPILOG = ("Examples:\n\n  xkd reward sxkd --task synth-mt\n\n"
          "  xkd reward gxkd --task synth-sum --limit 5 --generate --table\n\n"
          "  xkd reward runs/synth-mt/sxkd --prompt 'translate English to German: the dog sleeps' "
          "--response 'der Hund schläft'\n\n"
          "  xkd reward seqxkd --task synth-mt --limit 10 --json\n\n"
          "μ_t and σ_t are the mean and spread of the Gaussian reward q_φ = N(μ_t, σ_t²) that the run's reward head "
          "gives token t; δ_t = Q_t − γ·Q_{t+1} is the model's own TD error there, which F_ex fits to it. Colour: μ_t "
          "on a scale centred at 0 (red below, blue above). Files: <out>/reward.html, reward-<k>.png (one per "
          "response) and reward.json.")


@config_command(RewardViewConfig, "recipe", "runs_dir", "json", first=("run", "task", "limit", "prompt", "response"))
def reward(flags: dict[str, Any], *, recipe, runs_dir, json) -> None:
    """Show the reward head's μ and σ for every token of a response (the first --limit evaluation examples, or
    --prompt with --response): coloured tokens in the terminal, an HTML page and a PNG figure per response."""
    root = runs_root(runs_dir)
    cfg = make_config(RewardViewConfig, flags, recipe=recipe, runs_root=root)
    files = locate_scorer(cfg.run, task=get_task(cfg.task).name if cfg.task else None, runs_root=root)
    from xkd_cli.evaluation.reward_view import run_reward_view  # torch loads only once the run is known to have a head

    result = run_reward_view(cfg, files, runs_root=root)
    emit(result, as_json=json, render=lambda r: render_reward(r, with_table=cfg.table))


def legend(scale: float) -> Text:
    """μ's colour scale in one line: −s, the colours, +s."""
    line = Text("μ ", style="bold")
    line.append(f"{signed(-scale, 3)} ")
    for i in range(LEGEND_CELLS):
        line.append(" ", style=Style(bgcolor=colour(scale * (2 * i / (LEGEND_CELLS - 1) - 1), scale)))
    line.append(f" {signed(scale, 3)}")
    return line


def token_line(tokens: list[dict[str, Any]], scale: float) -> Text:
    """The response, each token on its μ colour."""
    line = Text()
    for t in tokens:
        bg = colour(t["mu"], scale)
        line.append(shown(t["token"]), style=Style(color=ink(bg), bgcolor=bg, italic=t["special"]))
    return line


def token_table(example: dict[str, Any], scale: float):
    rows = []
    for t in example["tokens"]:
        bg = colour(t["mu"], scale)
        rows.append((t["position"], escape(repr(t["token"])), f"[{ink(bg)} on {bg}]{signed(t['mu'])}[/]",
                     f"{t['sigma']:.4f}", signed(t["delta"]), signed(t["q"])))
    return table(f"{example['id']} · per token", ["t", "token", "μ", "σ", "δ", "Q"], rows)


def render_reward(result: dict[str, Any], *, with_table: bool = False) -> None:
    out.print(Text(" · ".join(f"{label} {value}" for label, value in header_items(result)), style="bold"))
    out.print(Text(position_note(result) + ".", style="dim"))
    out.print(legend(result["scale"]))
    for k, example in enumerate(result["examples"], 1):
        title = Text(f"example {k} · id {example['id']} · μ at the last token {signed(example['reward_last'])} · "
                     f"Σμ {signed(example['reward_sum'])}")
        out.print(Rule(title, align="left", style="grey50"))
        out.print(Text(" ".join(example["prompt"].split()), style="dim"), no_wrap=True, overflow="ellipsis")
        out.print(token_line(example["tokens"], result["scale"]))
        if example["truncated"]:
            out.print(f"[yellow]cut at --max-output-len {result['max_output_len']} tokens[/]")
        if with_table:
            out.print(token_table(example, result["scale"]))
    files = result["files"]
    out.print(f"page: {files['html']}")
    pngs = files["png"]
    where = Path(pngs[0]).parent if pngs else ""
    out.print(f"figures: {where}/reward-1.png … reward-{len(pngs)}.png" if len(pngs) > 1 else f"figure: {pngs[0]}")
    out.print(f"numbers: {files['json']}")
