"""Writing the report's files: the CSV tables and report.md (report.json is what build_report returns)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from xkd_cli.core.workspace import write_text
from xkd_cli.experiments.report.collect import link
from xkd_cli.experiments.report.formatting import MISSING, as_number, cell_text, human_count, metric_text, value_text
from xkd_cli.experiments.report.tables import table1_cells, table1_header

FILES = {"md": "report.md", "json": "report.json", "table1": "table1.csv", "judge": "judge.csv",
         "sweeps": "sweeps.csv", "differences": "differences.csv", "reward_models": "reward_models.csv",
         "alignment": "alignment.csv"}
JUDGE_COLUMNS = ("task", "a", "b", "win_rate", "win_low", "win_high", "tie_rate", "lose_rate", "lose_low",
                 "lose_high", "inconsistency_rate", "judged", "unparsed", "judge_model", "run", "source")
DIFFERENCE_COLUMNS = ("task", "method", "point", "baseline", "metric", "diff", "low", "high", "level", "seeds", "examples",
                      "replicates", "runs", "sources")
REWARD_MODEL_COLUMNS = ("task", "method", "mean", "sd", "n", "accuracy", "low", "high", "correct", "pairs", "runs")
ALIGNMENT_COLUMNS = ("task", "method", "metric", "mean", "sd", "n", "baseline", "diff", "low", "high",
                     "reward_model", "reward_model_mean", "reward_model_sd", "runs")
SWEEP_COLUMNS = ("figure", "task", "param", "kind", "method", "label", "value", "x", "y", "metric", "run",
                 "source", "x_source")


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    write_text(path, buffer.getvalue())


def write_csvs(report: dict[str, Any], out_dir: Path) -> None:
    t1 = report["table1"]
    seeded = [t for t in t1["columns"] if any("members" in (row["cells"][t] or {}) for row in t1["rows"])]
    header = ["model", *t1["columns"], *[f"{t} {k}" for t in seeded for k in ("sd", "seeds")]]
    _write_csv(out_dir / FILES["table1"], header,
               [[row["label"], *[(row["cells"][t] or {}).get("value") for t in t1["columns"]],
                 *[(row["cells"][t] or {}).get(k) for t in seeded for k in ("sd", "n")]] for row in t1["rows"]])
    judge = [{**r, **{f"{k}_{end}": (r.get(f"{k}_ci") or (None, None))[i] for k in ("win", "lose")
                      for i, end in enumerate(("low", "high"))}} for r in report["judge"]]
    _write_csv(out_dir / FILES["judge"], list(JUDGE_COLUMNS), [[r.get(k) for k in JUDGE_COLUMNS] for r in judge])
    _write_csv(out_dir / FILES["reward_models"], list(REWARD_MODEL_COLUMNS),
               [[r["task"], r["method"], r["mean"], r["sd"], r["n"], r["accuracy"], *(r["ci"] or (None, None)),
                 r["correct"], r["pairs"], ";".join(m["run"] for m in r["members"])] for r in report["reward_models"]])
    _write_csv(out_dir / FILES["alignment"], list(ALIGNMENT_COLUMNS),
               [[r["task"], r["method"], r["metric"], r.get("mean"), r.get("sd"), r.get("n"),
                 *[(r.get("difference") or {}).get(k) for k in ("baseline", "diff", "low", "high")],
                 *[(r.get("reward_model") or {}).get(k) for k in ("run", "mean", "sd")],
                 ";".join(m["run"] for m in r["members"])] for r in report["alignment"]])
    _write_csv(out_dir / FILES["differences"], list(DIFFERENCE_COLUMNS),
               [[";".join(" vs ".join(p) for p in r[k]) if k in ("runs", "sources") else r.get(k)
                 for k in DIFFERENCE_COLUMNS] for r in report["differences"]])
    lines = []
    for fig in report["figures"]:
        for s in fig["series"]:
            for p in s["points"]:
                lines.append([fig["id"], fig["task"], fig["param"], "point", s["method"], s["label"], p["value"], p["x"],
                              p["y"], p["metric"], p["run"], p["source"], p.get("x_source")])
        for b in fig["baselines"]:
            lines.append([fig["id"], fig["task"], fig["param"], "baseline", b["method"], b["label"], None, None,
                          b["value"], fig["metric"], b["run"], b["source"], None])
    _write_csv(out_dir / FILES["sweeps"], list(SWEEP_COLUMNS), lines)


def interval_text(ci: Any) -> str:
    return f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""


def difference_lines(report: dict[str, Any]) -> list[str]:
    """The paired-differences section of report.md: table and figures."""
    lines = ["## Paired differences — X-variant minus its baseline", ""]
    if not report["differences"]:
        return lines + ["No X-variant with its baseline evaluated (with per-example scores) on the same task.", ""]
    lines += ["| Task | Difference | Metric | Δ | 95% interval | Seeds | Examples |", "|---|---|---|---:|---|---:|---:|"]
    for r in report["differences"]:
        lines.append(f"| {r['task']} | {_md(r['label'])} | {metric_text(r['metric'])} | {r['diff']:+.2f} | "
                     f"[{r['low']:+.2f}, {r['high']:+.2f}] | {r['seeds']} | {r['examples']} |")
    lines += ["", "Δ: the mean over seeds of the X-variant's metric minus its baseline's, paired by seed and "
                  "evaluation example; the interval is a paired bootstrap over examples and seeds "
                  f"({report['differences'][0]['replicates']} replicates). An interval that contains 0 does not "
                  "show a difference.", ""]
    for fig in report.get("difference_figures") or []:
        lines += [f"![{fig['task']} differences]({fig['png']})", "", f"[SVG]({fig['svg']})", ""]
    return lines


def _spread(row: dict[str, Any]) -> str:
    """"a ± b (n)" of a row over seeds; "a" for one run."""
    if row.get("mean") is None:
        return MISSING
    if row.get("n", 1) < 2:
        return cell_text(row["mean"])
    return f"{cell_text(row['mean'])} ± {cell_text(row['sd'])} ({row['n']})"


def reward_model_kinds(report: dict[str, Any]) -> list[str]:
    return sorted({k for r in report["reward_models"] for k in r["per_kind"]})


def reward_model_header(kinds: list[str]) -> list[str]:
    return ["task", "method", "accuracy (%)", "pooled [95% interval]", "pairs", *kinds]


def reward_model_cells(r: dict[str, Any], kinds: list[str]) -> list[str]:
    """A reward-model row's cells as text (the Markdown and the terminal tables)."""
    per_kind = [f"{cell_text(r['per_kind'][k]['accuracy'])}{interval_text(r['per_kind'][k]['ci'])}"
                if k in r["per_kind"] else MISSING for k in kinds]
    return [r["task"], r["label"], _spread(r), f"{cell_text(r['accuracy'])}{interval_text(r['ci'])}", str(r["pairs"]),
            *per_kind]


ALIGNMENT_HEADER = ["task", "policy", "metric", "value", "Δ against", "Δ", "95% interval", "reward-model score",
                    "judge"]


def alignment_cells(r: dict[str, Any]) -> list[str]:
    """An aligned policy's row's cells as text (the Markdown and the terminal tables)."""
    d = r.get("difference")
    judge = "; ".join(f"vs {j['b']}: win {cell_text(j['win_rate'], '%')}{interval_text(j.get('win_ci'))}, "
                      f"tie {cell_text(j['tie_rate'], '%')}, lose {cell_text(j['lose_rate'], '%')}"
                      for j in r["judge"]) or MISSING
    delta = [d["label"], f"{d['diff']:+.2f}", f"[{d['low']:+.2f}, {d['high']:+.2f}]"] if d else [MISSING] * 3
    rm = r.get("reward_model")
    score = MISSING if not rm else (_spread(rm) if rm["n"] > 1 else
                                    f"{cell_text(rm['mean'])}{interval_text(rm['ci'])}") + f" ({rm['run']})"
    return [r["task"], r["label"], metric_text(r["metric"]) if r["metric"] else MISSING, _spread(r), *delta, score,
            judge]


REWARD_MODEL_NOTE = ("Accuracy: the share of held-out pairs whose chosen response the reward model scores higher, a ± b "
                     "(n) over n seeds. Pooled: over every seed's pairs, with its 95% Wilson interval (per damage kind "
                     "likewise). Two methods differ beyond chance only where their intervals do not overlap. AVA's reward "
                     "weighting (its Eq. 11) is not implemented (docs/method.md, \"AVA\").")
ALIGNMENT_NOTE = ("SFT (chosen): the SFT student, fine-tuned on the chosen responses, which the policies start from. "
                  "Δ: the policy's metric minus its baseline's (AVA against DPO, DPO against SFT), paired by seed and "
                  "evaluation example, with a 95% paired-bootstrap interval; an interval that contains 0 does not show "
                  "a difference. Reward-model score: the mean reward the named reward model gives the policy's "
                  "answers (a ± b (n) over seeds; one run: its 95% bootstrap interval over examples).")


def _md_table(header: list[str], rows: list[list[str]], right: int) -> list[str]:
    """A Markdown table whose columns from ``right`` on are right-aligned."""
    return ["| " + " | ".join(_md(h) for h in header) + " |",
            "|" + "---|" * right + "---:|" * (len(header) - right),
            *["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]]


def alignment_lines(report: dict[str, Any]) -> list[str]:
    """The AVA sections of report.md: the reward models' preference accuracy and the aligned policies."""
    lines: list[str] = []
    if report["reward_models"]:
        kinds = reward_model_kinds(report)
        lines += ["## Reward models — preference accuracy on the held-out pairs", ""]
        lines += _md_table(reward_model_header(kinds), [reward_model_cells(r, kinds) for r in report["reward_models"]],
                           right=2)
        lines += ["", REWARD_MODEL_NOTE, ""]
    if report["alignment"]:
        lines += ["## Alignment — the aligned policies", ""]
        lines += _md_table(ALIGNMENT_HEADER, [alignment_cells(r) for r in report["alignment"]], right=3)
        lines += ["", ALIGNMENT_NOTE, ""]
    return lines


def render_markdown(report: dict[str, Any], out_dir: Path, root: Path) -> str:
    def src(rel: str) -> str:
        """A source file: its path relative to the runs directory, linked relative to report.md."""
        path = Path(rel) if Path(rel).is_absolute() else root / rel
        return f"[`{rel}`]({link(path, out_dir)})"

    t1 = report["table1"]
    lines = ["# X-KD report", "",
             f"Runs directory `{report['runs_dir']}` · tasks: {', '.join(report['tasks'])} · xkd {report['xkd']}.", "",
             "Every number below is read from the file listed for it under [Sources](#sources) "
             "(paths relative to the runs directory).", "",
             "## Table 1 — headline metric, greedy decoding", "",
             "| Model | " + " | ".join(_md(h) for h in table1_header(t1)) + " |",
             "|---|" + "---:|" * len(t1["columns"])]
    for row in t1["rows"]:
        lines.append(f"| {_md(row['label'])} | " + " | ".join(table1_cells(t1, row, "**{}**")) + " |")
    lines += ["", f"Bold: the best distilled method of each task. {MISSING}: no run or no greedy evaluation. "
                  "a ± b (n): mean and sample standard deviation over n seeds.", ""]
    lines += difference_lines(report)
    lines += alignment_lines(report)

    lines += ["## Table 2 — LLM-judge win rates (A vs B)", ""]
    if report["judge"]:
        lines += ["| Task | A vs B | Win | Tie | Lose | Orders disagree | Judged | Judge |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for r in report["judge"]:
            lines.append(f"| {_md(r['task'])} | {_md(r['a'])} vs {_md(r['b'])} | "
                         f"{cell_text(r['win_rate'], '%')}{interval_text(r.get('win_ci'))} | "
                         f"{cell_text(r['tie_rate'], '%')} | "
                         f"{cell_text(r['lose_rate'], '%')}{interval_text(r.get('lose_ci'))} | "
                         f"{cell_text(r['inconsistency_rate'], '%')} | "
                         f"{r['judged'] if r['judged'] is not None else MISSING} | "
                         f"{_md(r['judge_model'] or MISSING)} |")
        lines += ["", "Rates are percent of the judged items (both answer orders parsed); a win counts only when "
                      "both orders agree. In brackets: the 95% Wilson interval over the judged items.", ""]
    else:
        lines += ["No judge runs (`xkd judge --a seqxkd --b seqkd`).", ""]

    lines += ["## Figures", ""]
    if not report["figures"] and not report["diversity"]:
        lines += ["No sweep or diversity runs.", ""]
    for fig in report["figures"]:
        lines += [f"### {_md(fig['title'])}", "", f"![{_md(fig['title'])}]({fig['png']})", "",
                  f"[SVG]({fig['svg']}) · x scale: {fig['xscale']}"
                  + (" · dashed: the non-experiential baselines (default runs)" if fig["baselines"] else ""), ""]
    for div in report["diversity"]:
        title = f"{div['task']}: {metric_text(div['metric'])} vs diversity, run {div['run']} (cf. Figure 1a–c)"
        lines += [f"### {_md(title)}", ""]
        if div["png"]:
            lines += [f"![{_md(title)}]({div['png']})", ""]
        lines += [" · ".join(f"[{fmt.upper()}]({div[fmt]})" for fmt in ("png", "svg") if div[fmt])
                  + f" · drawn by `xkd diversity` from {src(div['source'])}", ""]

    if report["missing"]:
        lines += ["## Not in the report", ""]
        lines += [f"- {_md(m['where'])} ({m['task']}/{m['run']}): {m['reason']} — `{m['fix']}`"
                  for m in report["missing"]]
        lines.append("")

    lines += ["## Sources", "", "### Table 1", "", "| Task | Model | Value | Run | Split (examples) | File |",
              "|---|---|---:|---|---|---|"]
    for task in t1["columns"]:
        for row in t1["rows"]:
            cell = row["cells"][task]
            for member in (cell or {}).get("members") or ([cell] if cell else []):
                seed = f" (seed {member['seed']})" if "seed" in member else ""
                lines.append(f"| {task} | {_md(row['label'])}{seed} | {cell_text(member['value'])} | {member['run']} | "
                             f"{member['split']} ({member['examples']}) | {src(member['source'])} |")
    if report["differences"]:
        lines += ["", "### Paired differences", "", "| Task | Difference | Seed | Runs | Per-example scores |",
                  "|---|---|---|---|---|"]
        for r in report["differences"]:
            for seed, runs, sources in zip(r["seed_values"], r["runs"], r["sources"]):
                lines.append(f"| {r['task']} | {_md(r['label'])} | {MISSING if seed is None else seed} | "
                             f"{' vs '.join(runs)} | {' · '.join(src(s) for s in sources)} |")
    if report["reward_models"]:
        lines += ["", "### Reward models", "", "| Task | Method | Seed | Accuracy | Run | File |", "|---|---|---|---:|---|---|"]
        lines += [f"| {r['task']} | {_md(r['label'])} | {MISSING if m['seed'] is None else m['seed']} | "
                  f"{cell_text(m['accuracy'])} | {m['run']} | {src(m['source'])} |"
                  for r in report["reward_models"] for m in r["members"]]
    if report["alignment"]:
        lines += ["", "### Alignment", "", "| Task | Policy | Seed | Value | Run | File |", "|---|---|---|---:|---|---|"]
        lines += [f"| {r['task']} | {_md(r['label'])} | {MISSING if m['seed'] is None else m['seed']} | "
                  f"{cell_text(m['value'])} | {m['run']} | {src(m['source'])} |"
                  for r in report["alignment"] for m in r["members"]]
    if report["judge"]:
        lines += ["", "### Table 2", "", "| Task | A vs B | Run | File |", "|---|---|---|---|"]
        lines += [f"| {r['task']} | {_md(r['a'])} vs {_md(r['b'])} | {r['run']} | {src(r['source'])} |"
                  for r in report["judge"]]
    for fig in report["figures"]:
        lines += ["", f"### Figure {fig['id']}", "", "| Method | Value | y | Run | File |", "|---|---:|---:|---|---|"]
        for s in fig["series"]:
            for p in s["points"]:
                size = f" ({human_count(p['parameters'])}, {src(p['x_source'])})" if p.get("x_source") else ""
                spread = f" ± {cell_text(p['sd'])} ({p['seeds']})" if p.get("seeds") and p.get("sd") is not None else ""
                lines.append(f"| {_md(s['label'])} | {_md(p['label'])}{size} | {cell_text(p['y'])}{spread} | {p['run']} | "
                             f"{' · '.join(src(x) for x in p.get('sources') or [p['source']])} |")
        for b in fig["baselines"]:
            lines.append(f"| {_md(b['label'])} | default | {cell_text(b['value'])} | {b['run']} | {src(b['source'])} |")
    for div in report["diversity"]:
        lines += ["", f"### Diversity {div['task']}/{div['run']}", "",
                  "| Model | Temperature | Metric | Diversity | File |", "|---|---:|---:|---:|---|"]
        lines += [f"| {_md(p['model'])} | {value_text(p['temperature'])} | {cell_text(as_number(p['value']))} | "
                  f"{cell_text(as_number(p['diversity']))} | {src(p['source']) if p['source'] else MISSING} |"
                  for p in div["points"]]
    return "\n".join(lines) + "\n"
