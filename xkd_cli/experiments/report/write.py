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
         "sweeps": "sweeps.csv", "differences": "differences.csv"}
JUDGE_COLUMNS = ("task", "a", "b", "win_rate", "win_low", "win_high", "tie_rate", "lose_rate", "lose_low",
                 "lose_high", "inconsistency_rate", "judged", "unparsed", "judge_model", "run", "source")
DIFFERENCE_COLUMNS = ("task", "method", "point", "baseline", "metric", "diff", "low", "high", "level", "seeds", "examples",
                      "replicates", "runs", "sources")
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


def degenerate_warning(entry: dict[str, Any]) -> str:
    """One line: which run's samples degenerated, and what shows it."""
    return f"{entry['task']}/{entry['run']} ({entry['method']}): its samples degenerated: {entry['reason']}"


def degenerate_lines(report: dict[str, Any], src) -> list[str]:
    """The warning under Table 1 for runs whose samples degenerated (:mod:`.degenerate`); nothing if none did."""
    if not report.get("degenerate"):
        return []
    lines = ["**Degenerate samples.** These runs' numbers above come from a student that repeats itself:", ""]
    lines += [f"- {_md(degenerate_warning(e))} ({' · '.join(src(s) for s in e['sources'])})"
              for e in report["degenerate"]]
    return lines + [""]


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
    lines += degenerate_lines(report, src)
    lines += difference_lines(report)

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
