"""`xkd report` over a hand-written runs directory (no training): Table 1 and Table 2 values equal the files
they came from, sweep figures (PNG + SVG) with the right axes and baselines, report.md / report.json / CSV
name the source of every number, and an empty or unevaluated workspace is a one-line error."""

import csv
import itertools
import json
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from xkd_cli.core.errors import XKDError
from xkd_cli.experiments.report.build import build_report
from xkd_cli.experiments.report.formatting import MISSING

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLOCK = itertools.count()  # run.json "finished" stamps in creation order
TASKS = {"synth-sum": "rouge2", "synth-mt": "bleu"}
PAPER = {"seqkd": "SeqKD", "seqxkd": "SeqXKD", "skd": "SKD", "sxkd": "S-XKD", "gkd": "GKD", "gxkd": "G-XKD",
         "minillm": "MiniLLM"}
# Table 1 values written into the fake metrics.json files (None: the run exists but has no evaluation;
# absent: no run at all).
TABLE1 = {
    "synth-sum": {"student": 10.0, "seqkd": 11.0, "seqxkd": 11.5, "skd": 12.0, "sxkd": 12.5, "gkd": 13.0,
                  "gxkd": 13.75, "minillm": 13.5, "teacher": 20.0},
    "synth-mt": {"student": 20.0, "seqkd": 24.0, "seqxkd": 25.25, "skd": 23.0, "sxkd": None, "gkd": 22.0,
                 "gxkd": 25.0, "teacher": 30.0},
}
LAM = {0.0: 13.0, 0.001: 13.75, 0.01: 12.875}
TAU = {0.5: 13.25, 1.0: 13.75, 2.0: 13.125}
FRACTION = {"gkd": {0.25: 11.0, 0.5: 12.0, 1.0: 13.0}, "gxkd": {0.25: 11.5, 0.5: 12.5, 1.0: 13.75}}
TEACHERS = {"tiny-t5-base": 1_200_000, "tiny-t5-large": 4_800_000}
SIZE = {"gkd": {"tiny-t5-base": 12.25, "tiny-t5-large": 13.0}, "gxkd": {"tiny-t5-base": 12.75, "tiny-t5-large": 13.75}}
JUDGE = {"a": "seqxkd", "b": "seqkd", "win_rate": 48.3, "tie_rate": 8.7, "lose_rate": 43.0,
         "inconsistency_rate": 12.5, "unparsed": 1, "judged": 40, "judge": {"model": "gpt-4", "api_base": "x"}}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_run(root, task, name, kind, *, value=None, config=None, status="completed", **record):
    run = root / task / name
    write(run / "run.json", {"kind": kind, "status": status, "task": task, "name": name, "duration_s": 1.5,
                             "finished": f"2024-01-01T00:{next(CLOCK):05d}",
                             **record})
    write(run / "config.json", {"task": task, **(config or {})})
    if value is not None:
        metric = TASKS[task]
        write(run / "eval" / "validation-greedy" / "metrics.json",
              {"task": task, "model": name, "run": name, "split": "validation", "examples": 50, "decoding": "greedy",
               "headline": metric, "metrics": {metric: value, "other": 1.0}, "predictions": "p.jsonl", "seconds": 1})
    return run


def source(task, name):
    return f"{task}/{name}/eval/validation-greedy/metrics.json"


def distill(root, task, name, method, value, sweep=None, **config):
    record = {"method": method, "paper_name": PAPER[method], "teacher": config.pop("teacher_run", "teacher"),
              "student": "student", "divergence": None}
    if sweep:
        record["sweep"] = {"param": sweep[0], "value": sweep[1], "method": method}
    cfg = {"method": method, "lam": 0.001, "tau": 1.0, "train_fraction": 1.0, "alpha": 0.5, "beta": 0.5,
           "teacher": record["teacher"], "student": "student", **config}
    return make_run(root, task, name, "distill", value=value, config=cfg, **record)


def build_runs(root):
    for task, values in TABLE1.items():
        make_run(root, task, "student", "sft", value=values["student"], role="student", base_model="tiny-t5-small",
                 model_parameters=300_000)
        make_run(root, task, "teacher", "sft", value=values["teacher"], role="teacher", base_model="tiny-t5-large",
                 model_parameters=4_800_000)
        for method in PAPER:
            if method in values:
                distill(root, task, method, method, values[method])
    # a run that did not finish and a sweep-less duplicate that is not the default name: both ignored
    make_run(root, "synth-sum", "gxkd-crashed", "distill", value=99.0, status="running", method="gxkd")
    # sweeps on synth-sum (the pipeline's names and `sweep` records)
    for lam, value in LAM.items():
        distill(root, "synth-sum", f"gxkd-lam-{lam:g}", "gxkd", value, sweep=("lam", lam), lam=lam)
    for tau, value in TAU.items():
        distill(root, "synth-sum", f"gxkd-tau-{tau:g}", "gxkd", value, sweep=("tau", tau), tau=tau)
    for method, points in FRACTION.items():
        for fraction, value in points.items():
            distill(root, "synth-sum", f"{method}-train_fraction-{fraction:g}", method, value,
                    sweep=("train_fraction", fraction), train_fraction=fraction)
    for model, count in TEACHERS.items():
        make_run(root, "synth-sum", f"teacher-{model}", "sft", value=None, role="teacher", base_model=model,
                 model_parameters=count)
        for method in ("gkd", "gxkd"):
            distill(root, "synth-sum", f"{method}-teacher-{model}", method, SIZE[method][model],
                    sweep=("teacher", model), teacher_run=f"teacher-{model}")
    # synth-mt: a λ sweep with one point not evaluated yet
    distill(root, "synth-mt", "seqxkd-lam-0", "seqxkd", 24.5, sweep=("lam", 0), lam=0)
    distill(root, "synth-mt", "seqxkd-lam-0.002", "seqxkd", None, sweep=("lam", 0.002), lam=0.002)
    # judge (Table 2) and diversity (figure drawn by `xkd diversity`, linked)
    judge = make_run(root, "synth-sum", "judge-seqxkd-vs-seqkd", "judge", a="seqxkd", b="seqkd")
    write(judge / "results.json", {"task": "synth-sum", "split": "validation", **JUDGE})
    div = make_run(root, "synth-mt", "diversity", "diversity", models=["student", "gxkd"])
    write(div / "diversity.json", {"metric": "bleu", "rows": [
        {"model": "gxkd", "temperature": 0.5, "value": 21.5, "self_bleu": 40.0, "diversity": 60.0,
         "eval_dir": "synth-mt/gxkd/eval/validation-t0.5-p1-n4"}]})
    write(root / "synth-mt" / "gxkd" / "eval" / "validation-t0.5-p1-n4" / "metrics.json",
          {"headline": "bleu", "metrics": {"bleu": 21.5, "self_bleu": 40.0, "diversity": 60.0}})
    (div / "diversity.png").write_bytes(PNG_MAGIC + b"fake")
    (div / "diversity.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "judge_cache.sqlite").write_bytes(b"")  # a file in the runs root is not a task
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = build_runs(tmp_path_factory.mktemp("report") / "runs")
    report = build_report(root)
    return root, root / "report", report


def svg_text(path):
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return " ".join("".join(el.itertext()) for el in root.iter() if el.tag.endswith("text"))


def cell(report, task, key):
    return next(r for r in report["table1"]["rows"] if r["key"] == key)["cells"][task]


def md_row(md, label):
    """The cells of the Table-1 row of ``label`` in report.md (the first table)."""
    table = md.split("## Table 1", 1)[1].split("##", 1)[0]
    line = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_table1_values_best_and_missing(built):
    root, out, report = built
    t1 = report["table1"]
    assert t1["columns"] == ["synth-sum", "synth-mt"]
    assert t1["metrics"] == TASKS
    assert [r["label"] for r in t1["rows"]] == ["SFT student", *PAPER.values(), "Teacher"]
    for task, values in TABLE1.items():
        for key in ["student", *PAPER, "teacher"]:
            got = cell(report, task, key)
            if values.get(key) is None:
                assert got is None, (task, key)
            else:
                assert got["value"] == values[key] and got["run"] == key and got["source"] == source(task, key)
                assert (got["split"], got["examples"], got["metric"]) == ("validation", 50, TASKS[task])
    assert t1["best"] == {"synth-sum": ["gxkd"], "synth-mt": ["seqxkd"]}
    # the not-evaluated run is listed with its fix; the missing run is just absent
    assert {(m["task"], m["run"]) for m in report["missing"]} >= {("synth-mt", "sxkd"), ("synth-mt", "seqxkd-lam-0.002")}
    fix = next(m["fix"] for m in report["missing"] if m["run"] == "sxkd")
    assert fix == "xkd eval --model sxkd --task synth-mt"

    md = (out / "report.md").read_text()
    assert md_row(md, "G-XKD") == ["**13.75**", "25.00"]
    assert md_row(md, "SeqXKD") == ["11.50", "**25.25**"]
    assert md_row(md, "S-XKD") == ["12.50", MISSING]
    assert md_row(md, "MiniLLM") == ["13.50", MISSING]
    assert md_row(md, "SFT student") == ["10.00", "20.00"] and md_row(md, "Teacher") == ["20.00", "30.00"]
    assert "synth-sum (ROUGE-2)" in md and "synth-mt (BLEU)" in md

    with open(out / "table1.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["model", "synth-sum", "synth-mt"]
    by_label = {r[0]: r[1:] for r in rows[1:]}
    assert by_label["G-XKD"] == ["13.75", "25.0"] and by_label["S-XKD"] == ["12.5", ""] and by_label["MiniLLM"] == ["13.5", ""]


def test_judge_table(built):
    root, out, report = built
    [row] = report["judge"]
    for key in ("a", "b", "win_rate", "tie_rate", "lose_rate", "inconsistency_rate", "judged", "unparsed"):
        assert row[key] == JUDGE[key], key
    assert (row["task"], row["judge_model"], row["run"]) == ("synth-sum", "gpt-4", "judge-seqxkd-vs-seqkd")
    assert row["source"] == "synth-sum/judge-seqxkd-vs-seqkd/results.json"
    md = (out / "report.md").read_text()
    # 95% Wilson intervals over the 40 judged items (test_stats checks the formula)
    assert "| synth-sum | seqxkd vs seqkd | 48.30% [33.7, 63.2] | 8.70% | 43.00% [28.9, 58.3] | 12.50% | 40 | gpt-4 |" in md
    with open(out / "judge.csv", newline="") as fh:
        [saved] = list(csv.DictReader(fh))
    assert float(saved["win_rate"]) == 48.3 and saved["source"] == row["source"]
    assert round(float(saved["win_low"]), 1) == 33.7 and round(float(saved["lose_high"]), 1) == 58.3


def figure(report, fig_id):
    return next(f for f in report["figures"] if f["id"] == fig_id)


def points(fig, method):
    return {p["label"]: p for s in fig["series"] if s["method"] == method for p in s["points"]}


def test_sweep_figures_data(built):
    root, out, report = built
    assert [f["id"] for f in report["figures"]] == ["synth-sum-train_fraction", "synth-sum-lam", "synth-sum-tau",
                                                     "synth-sum-teacher", "synth-mt-lam"]
    lam = figure(report, "synth-sum-lam")
    assert (lam["xscale"], lam["xlabel"], lam["ylabel"]) == ("symlog", "Experiential weight λ", "ROUGE-2")
    assert [(p["x"], p["y"], p["source"]) for p in lam["series"][0]["points"]] == \
        [(x, y, source("synth-sum", f"gxkd-lam-{x:g}")) for x, y in LAM.items()]
    assert lam["baselines"] == []

    tau = figure(report, "synth-sum-tau")
    assert [(p["x"], p["y"]) for p in tau["series"][0]["points"]] == list(TAU.items())
    [base] = tau["baselines"]
    assert (base["method"], base["for"], base["value"], base["run"], base["source"]) == \
        ("gkd", "gxkd", 13.0, "gkd", source("synth-sum", "gkd"))

    fraction = figure(report, "synth-sum-train_fraction")
    assert [s["label"] for s in fraction["series"]] == ["GKD", "G-XKD"]
    for method, values in FRACTION.items():
        got = points(fraction, method)
        assert {p["value"]: (p["x"], p["y"]) for p in got.values()} == {f: (f * 100, v) for f, v in values.items()}

    size = figure(report, "synth-sum-teacher")
    assert size["xlabel"] == "Teacher model (parameters)"
    for method, values in SIZE.items():
        got = points(size, method)
        for model, value in values.items():
            assert (got[model]["x"], got[model]["y"]) == (TEACHERS[model], value)
            assert got[model]["x_source"] == f"synth-sum/teacher-{model}/run.json"

    mt = figure(report, "synth-mt-lam")  # the unevaluated λ point is left out, the other is drawn
    assert [(p["x"], p["y"]) for p in mt["series"][0]["points"]] == [(0.0, 24.5)]


def test_figures_are_png_and_svg_with_labels(built):
    root, out, report = built
    for fig in report["figures"]:
        png, svg = out / fig["png"], out / fig["svg"]
        assert png.parent == out / "figures" and png.name == f"{fig['id']}.png"
        assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
        text = svg_text(svg)
        for expected in (fig["xlabel"], fig["ylabel"], fig["task"], "method",
                         *[s["label"] for s in fig["series"]]):
            assert expected in text, (fig["id"], expected)
    assert "GKD (baseline of G-XKD)" in svg_text(out / figure(report, "synth-sum-tau")["svg"])
    assert "stroke-dasharray" in (out / figure(report, "synth-sum-tau")["svg"]).read_text()
    teacher = svg_text(out / figure(report, "synth-sum-teacher")["svg"])
    assert "tiny-t5-base" in teacher and "1.2M" in teacher
    fraction = svg_text(out / figure(report, "synth-sum-train_fraction")["svg"])
    assert "25%" in fraction and "100%" in fraction


def test_markdown_embeds_figures_and_names_every_source(built):
    root, out, report = built
    md = (out / "report.md").read_text()
    for fig in report["figures"]:
        assert f"]({fig['png']})" in md and f"]({fig['svg']})" in md
        for s in fig["series"]:
            for p in s["points"]:
                assert p["source"] in md, p["source"]
        for b in fig["baselines"]:
            assert b["source"] in md
    for row in report["table1"]["rows"]:
        for c in row["cells"].values():
            if c:
                assert f"[`{c['source']}`](../{c['source']})" in md, c["source"]  # named and linked from report/
    assert "synth-sum/judge-seqxkd-vs-seqkd/results.json" in md
    # the diversity figure of the diversity run is embedded by a path relative to report.md, with its sources
    assert "![" in md and "](../synth-mt/diversity/diversity.png)" in md
    assert "synth-mt/gxkd/eval/validation-t0.5-p1-n4/metrics.json" in md
    # every linked file exists
    for target in re.findall(r"\]\(([^)#]+)\)", md):
        assert (out / target).exists(), target


def test_report_json_matches_files_and_sources(built):
    root, out, report = built
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["runs_dir"] == str(root.resolve())
    # every number in report.json equals the file it names
    for row in saved["table1"]["rows"]:
        for task, c in row["cells"].items():
            if c:
                data = json.loads((root / c["source"]).read_text())
                assert data["metrics"][data["headline"]] == c["value"]
    for fig in saved["figures"]:
        for s in fig["series"]:
            for p in s["points"]:
                data = json.loads((root / p["source"]).read_text())
                assert data["metrics"][data["headline"]] == p["y"]
                if p.get("x_source"):
                    assert json.loads((root / p["x_source"]).read_text())["model_parameters"] == p["x"]
    for r in saved["judge"]:
        data = json.loads((root / r["source"]).read_text())
        assert data["win_rate"] == r["win_rate"] and data["judged"] == r["judged"]
    with open(out / "sweeps.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len([l for l in lines if l["kind"] == "point"]) == sum(len(s["points"]) for f in saved["figures"]
                                                                  for s in f["series"])
    assert any(l["kind"] == "baseline" and l["label"] == "GKD (baseline of G-XKD)" for l in lines)


def test_cli_json_task_and_rerun(xkd, runs, tmp_path):
    build_runs(runs)
    result = xkd("report", "--json")
    assert result.code == 0, result.err
    info = result.json()
    assert info == json.loads((runs / "report" / "report.json").read_text())
    assert info["table1"]["columns"] == ["synth-sum", "synth-mt"]

    # one task, its own default directory; the human table on stdout
    result = xkd("report", "--task", "synth-mt")
    assert result.code == 0, result.err
    assert "Table 1" in result.out and "25.25" in result.out and "report-synth-mt" in result.out
    single = json.loads((runs / "report-synth-mt" / "report.json").read_text())
    assert single["tasks"] == ["synth-mt"] and [f["id"] for f in single["figures"]] == ["synth-mt-lam"]
    # report directories inside the runs directory are not tasks
    assert xkd("report", "--json").json()["tasks"] == ["synth-sum", "synth-mt"]

    # a sweep that is gone takes its figure with it on the next report
    out = tmp_path / "elsewhere"
    assert xkd("report", "--output", out, "--json").code == 0
    assert (out / "figures" / "synth-sum-tau.png").is_file() and (out / "figures" / "synth-sum-tau.svg").is_file()
    for tau in TAU:
        shutil.rmtree(runs / "synth-sum" / f"gxkd-tau-{tau:g}")
    info = xkd("report", "--output", out, "--json").json()
    assert "synth-sum-tau" not in [f["id"] for f in info["figures"]]
    assert not (out / "figures" / "synth-sum-tau.png").exists() and not (out / "figures" / "synth-sum-tau.svg").exists()
    assert (out / "figures" / "synth-sum-lam.png").is_file()


def one_line_error(result, *words):
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err, (word, result.err)


def test_empty_or_unevaluated_runs_dir_is_one_line_error(xkd, runs, tmp_path):
    one_line_error(xkd("report"), "no runs in", "xkd pipeline")
    runs.mkdir()
    one_line_error(xkd("report", "--json"), "no runs in")
    make_run(runs, "synth-sum", "student", "sft", role="student")
    one_line_error(xkd("report"), "no evaluated runs", "xkd eval --model student --task synth-sum")
    assert not (runs / "report").exists()
    one_line_error(xkd("report", "--task", "synth-mt"), "no runs for task 'synth-mt'", "synth-sum")
    one_line_error(xkd("report", "--task", "nope"), "unknown task")


def test_build_report_rejects_empty_dir(tmp_path):
    with pytest.raises(XKDError, match="no runs in"):
        build_report(tmp_path / "missing")


@pytest.mark.parametrize("values, zero_ok, expected", [
    ([0.0, 0.0005, 0.001, 0.0015, 0.002], True, "linear"),   # the paper's λ grid: evenly spaced, stays linear
    ([0.0, 0.001, 0.01], True, "symlog"),                     # 0 next to values a decade apart
    ([0.1, 0.25, 0.5, 1.0], False, "log"),
    ([0.5, 1.0, 2.0], False, "linear"),
    ([2.2e8, 7.7e8, 3e9], False, "log"),
])
def test_axis_scale_follows_the_spread_of_the_swept_values(values, zero_ok, expected):
    from xkd_cli.experiments.report.figures import _scale_name, _spread_scale

    assert _scale_name(_spread_scale(values, zero_ok)) == expected


# A workspace the pipeline made with seeds: [1, 2, 3] and seed_students (hand-written files).  Per example
# ROUGE-2 of 4 examples; G-XKD beats GKD by exactly 1.0 on every example of every seed.
SEEDED = {"gkd": {1: [10, 12, 14, 16], 2: [11, 13, 15, 17], 3: [9, 11, 13, 15]}}
SEEDED["gxkd"] = {s: [v + 1.0 for v in vals] for s, vals in SEEDED["gkd"].items()}
SEEDED["student"] = {1: [5, 5, 5, 5], 2: [6, 6, 6, 6]}


def seeded_runs(root):
    make_run(root, "synth-sum", "teacher", "sft", value=30.0, role="teacher")
    for group, by_seed in SEEDED.items():
        for seed, values in by_seed.items():
            name = f"{group}-seed-{seed}"
            if group == "student":
                run = make_run(root, "synth-sum", name, "sft", value=sum(values) / 4, role="student", seed=seed,
                               seed_group="student")
            else:
                run = distill(root, "synth-sum", name, group, sum(values) / 4, seed=seed)
                record = json.loads((run / "run.json").read_text())
                write(run / "run.json", {**record, "seed": seed, "seed_group": group, "student": f"student-seed-{seed}"})
            scores = run / "eval" / "validation-greedy" / "scores.jsonl"
            scores.write_text("".join(json.dumps({"id": f"e{i}", "metric": "rouge2", "stats": [v]}) + "\n"
                                      for i, v in enumerate(values)))
    # a seeded λ sweep point: 2.0 above GKD on every example of seeds 1 and 2 (no seed 3)
    for seed in (1, 2):
        values = [v + 2.0 for v in SEEDED["gkd"][seed]]
        run = distill(root, "synth-sum", f"gxkd-lam-0.1-seed-{seed}", "gxkd", sum(values) / 4, sweep=("lam", 0.1), lam=0.1)
        record = json.loads((run / "run.json").read_text())
        write(run / "run.json", {**record, "seed": seed, "seed_group": "gxkd-lam-0.1"})
        (run / "eval" / "validation-greedy" / "scores.jsonl").write_text(
            "".join(json.dumps({"id": f"e{i}", "metric": "rouge2", "stats": [v]}) + "\n" for i, v in enumerate(values)))
    return root


def test_report_with_seeds(tmp_path, xkd, runs):
    """Table 1 shows mean ± sd over seeds (Markdown, terminal, CSV), the paired differences get a bootstrap
    interval and a figure, and every number names its files."""
    seeded_runs(runs)
    result = xkd("report", "--json")
    assert result.code == 0, result.err
    report = result.json()
    out = runs / "report"
    # only the methods that ran have a row: no "—" rows for methods outside the experiment
    assert [row["label"] for row in report["table1"]["rows"]] == ["SFT student", "GKD", "G-XKD", "Teacher"]
    gxkd = cell(report, "synth-sum", "gxkd")
    # seed means 14, 15, 13 -> 14 ± 1 (sample sd)
    assert (gxkd["value"], gxkd["sd"], gxkd["n"], gxkd["seeds"]) == (14.0, 1.0, 3, [1, 2, 3])
    assert [m["source"] for m in gxkd["members"]] == [source("synth-sum", f"gxkd-seed-{s}") for s in (1, 2, 3)]
    student = cell(report, "synth-sum", "student")
    assert (student["value"], student["n"]) == (5.5, 2) and student["sd"] == pytest.approx(0.5 ** 0.5)
    md = (out / "report.md").read_text()
    assert md_row(md, "G-XKD") == ["**14.00 ± 1.00 (3)**"] and md_row(md, "GKD") == ["13.00 ± 1.00 (3)"]
    assert md_row(md, "Teacher") == ["30.00"]
    for s in (1, 2, 3):
        assert f"| synth-sum | G-XKD (seed {s}) | {13 + [1, 2, 0][s - 1]:.2f} | gxkd-seed-{s} |" in md
        assert f"synth-sum/gxkd-seed-{s}/eval/validation-greedy/scores.jsonl" in md
    with open(out / "table1.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["model", "synth-sum", "synth-sum sd", "synth-sum seeds"]
    assert {r[0]: r[1:] for r in rows[1:]}["G-XKD"] == ["14.0", "1.0", "3"]

    diff, point = report["differences"]
    assert (point["label"], point["diff"], point["low"], point["high"], point["seed_values"]) == (
        "G-XKD (lam=0.1) − GKD", 2.0, 2.0, 2.0, [1, 2])
    assert (diff["method"], diff["baseline"], diff["diff"], diff["low"], diff["high"]) == ("gxkd", "gkd", 1.0, 1.0, 1.0)
    assert (diff["seeds"], diff["examples"], diff["seed_values"]) == (3, 4, [1, 2, 3])
    assert diff["sources"][0] == ["synth-sum/gxkd-seed-1/eval/validation-greedy/scores.jsonl",
                                  "synth-sum/gkd-seed-1/eval/validation-greedy/scores.jsonl"]
    assert "| synth-sum | G-XKD − GKD | ROUGE-2 | +1.00 | [+1.00, +1.00] | 3 | 4 |" in md
    # the λ figure's point is the mean over its two seeds (15 + 16) / 2, both files named
    [lam_figure] = report["figures"]
    [lam_point] = lam_figure["series"][0]["points"]
    assert (lam_point["y"], lam_point["seeds"], lam_point["sd"]) == (15.5, 2, 0.5 ** 0.5)
    assert "| G-XKD | 0.1 | 15.50 ± 0.71 (2) | gxkd-lam-0.1-seed-1, gxkd-lam-0.1-seed-2 |" in md
    [fig] = report["difference_figures"]
    assert (out / fig["png"]).read_bytes().startswith(PNG_MAGIC) and "G-XKD − GKD" in svg_text(out / fig["svg"])
    with open(out / "differences.csv", newline="") as fh:
        saved, saved_point = list(csv.DictReader(fh))
    assert (saved["method"], float(saved["diff"]), saved["seeds"], saved["point"]) == ("gxkd", 1.0, "3", "")
    assert (saved_point["point"], float(saved_point["low"])) == ("lam=0.1", 2.0)
    assert saved["runs"].split(";")[0] == "gxkd-seed-1 vs gkd-seed-1"

    text = xkd("report")
    assert text.code == 0, text.err
    assert "14.00 ± 1.00 (3)" in text.out and "G-XKD − GKD" in text.out and "[+1.00, +1.00]" in text.out
    assert "differences.png" in text.out


def test_differences_need_per_example_scores(xkd, runs):
    seeded_runs(runs)
    (runs / "synth-sum" / "gkd-seed-2" / "eval" / "validation-greedy" / "scores.jsonl").unlink()
    report = xkd("report", "--json").json()
    assert [d["seeds"] for d in report["differences"]] == [2, 1]  # seed 2 has no pair any more
    assert any(m["run"] == "gkd-seed-2" and "xkd eval --model gkd-seed-2" in m["fix"] for m in report["missing"])


def test_sweep_with_fixed_options_is_its_own_curve_and_difference(xkd, runs):
    """A sweep point with a fixed option (the pipeline's sweep `set`, e.g. the reward position) is a curve of
    its own in the λ figure and its own row of differences, labelled with the fixed option."""
    seeded_runs(runs)
    for seed in (1, 2):
        values = [v - 1.0 for v in SEEDED["gkd"][seed]]
        name = f"gxkd-lam-0.1-reward_position-current-seed-{seed}"
        run = distill(runs, "synth-sum", name, "gxkd", sum(values) / 4, sweep=("lam", 0.1), lam=0.1)
        record = json.loads((run / "run.json").read_text())
        record["sweep"]["set"] = {"reward_position": "current"}
        write(run / "run.json", {**record, "seed": seed, "seed_group": "gxkd-lam-0.1-reward_position-current"})
        (run / "eval" / "validation-greedy" / "scores.jsonl").write_text(
            "".join(json.dumps({"id": f"e{i}", "metric": "rouge2", "stats": [v]}) + "\n" for i, v in enumerate(values)))
    report = xkd("report", "--json").json()
    labels = {d["label"]: d for d in report["differences"]}
    assert set(labels) == {"G-XKD − GKD", "G-XKD (lam=0.1) − GKD", "G-XKD (lam=0.1, reward_position=current) − GKD"}
    fixed = labels["G-XKD (lam=0.1, reward_position=current) − GKD"]
    assert (fixed["diff"], fixed["low"], fixed["high"], fixed["point"]) == (-1.0, -1.0, -1.0,
                                                                            "lam=0.1, reward_position=current")
    [figure] = report["figures"]
    curves = {s["label"]: [p["y"] for p in s["points"]] for s in figure["series"]}
    assert curves == {"G-XKD": [15.5], "G-XKD (reward_position=current)": [12.5]}


# -- AVA: reward models and aligned policies -------------------------------------------------------------------------

RM_EVALS = {  # method -> seed -> (correct, pairs) of the held-out pairs, per damage kind
    "bt": {1: {"wrong-entity": (8, 10), "dropped-fact": (6, 10)}, 2: {"wrong-entity": (9, 10), "dropped-fact": (7, 10)}},
    "ava-p": {1: {"wrong-entity": (10, 10), "dropped-fact": (8, 10)}, 2: {"wrong-entity": (9, 10), "dropped-fact": (9, 10)}},
}
ALIGNED = {"student": [5, 5, 5, 5], "dpo": {1: [6, 6, 7, 7], 2: [6, 7, 7, 8]}, "ava-p": {1: [7, 7, 8, 8], 2: [6, 7, 7, 8]}}


def _final_eval(by_kind):
    correct, pairs = sum(c for c, _ in by_kind.values()), sum(n for _, n in by_kind.values())
    return {"accuracy": correct / pairs, "correct": correct, "pairs": pairs,
            "per_kind": {k: {"accuracy": c / n, "correct": c, "pairs": n} for k, (c, n) in by_kind.items()}}


def _scored(run, values, rm_mean=None):
    (run / "eval" / "validation-greedy" / "scores.jsonl").write_text(
        "".join(json.dumps({"id": f"e{i}", "metric": "rouge2", "stats": [v]}) + "\n" for i, v in enumerate(values)))
    if rm_mean is not None:  # what `xkd eval --reward-model rm-bt-seed-1` adds to metrics.json
        metrics = run / "eval" / "validation-greedy" / "metrics.json"
        write(metrics, {**json.loads(metrics.read_text()), "reward_model": {
            "run": "rm-bt-seed-1", "method": "bt", "reward": "last", "mean": rm_mean, "low": rm_mean - 0.5,
            "high": rm_mean + 0.5, "n": 4, "level": 0.95}})


def ava_runs(root):
    task = "synth-sum"
    for method, by_seed in RM_EVALS.items():
        for seed, by_kind in by_seed.items():
            make_run(root, task, f"rm-{method}-seed-{seed}", "reward-model", method=method, seed=seed,
                     seed_group=f"rm-{method}", final_eval=_final_eval(by_kind))
    _scored(make_run(root, task, "student", "sft", value=5.0, role="student"), ALIGNED["student"], rm_mean=-2.0)
    for method in ("dpo", "ava-p"):
        for seed, values in ALIGNED[method].items():
            run = make_run(root, task, f"align-{method}-seed-{seed}", "align", value=sum(values) / 4, method=method,
                           seed=seed, seed_group=f"align-{method}")
            _scored(run, values, rm_mean={"dpo": {1: -1.0, 2: 0.0}}.get(method, {}).get(seed))
    make_run(root, task, "judge-ava-dpo", "judge", a="align-ava-p-seed-1", b="align-dpo-seed-1")
    write(root / task / "judge-ava-dpo" / "results.json", {**JUDGE, "a": "align-ava-p-seed-1", "b": "align-dpo-seed-1"})


def test_reward_model_and_alignment_tables(xkd, runs):
    ava_runs(runs)
    result = xkd("report", "--json")
    assert result.code == 0, result.err
    report = result.json()
    bt, ava = report["reward_models"]
    assert (bt["label"], ava["label"]) == ("Bradley–Terry", "AVA-p")
    # seeds: bt 70%, 80% -> 75 ± 7.07; pooled 30 of 40 = 75% with its Wilson interval
    assert (bt["mean"], bt["n"], bt["correct"], bt["pairs"]) == (75.0, 2, 30, 40)
    assert bt["sd"] == pytest.approx(50 ** 0.5)
    # Wilson 30/40, z = 1.96: centre (0.75 + 0.04802) / 1.09604 = 0.72810, half 1.78826 · √0.00528775 = 0.13003
    assert bt["ci"] == pytest.approx([59.806, 85.813], abs=0.001)
    assert ava["per_kind"]["wrong-entity"]["accuracy"] == 95.0 and ava["per_kind"]["dropped-fact"]["pairs"] == 20
    assert [m["source"] for m in ava["members"]] == [f"synth-sum/rm-ava-p-seed-{s}/run.json" for s in (1, 2)]

    student, dpo, ava_p = report["alignment"]
    assert (student["label"], student["mean"], student["n"]) == ("SFT (chosen)", 5.0, 1)
    assert (dpo["mean"], dpo["n"]) == (6.75, 2)
    # DPO − SFT: the one student stands for every seed; per example 1,1,2,2 and 1,2,2,3 -> 1.75
    assert (dpo["difference"]["baseline"], dpo["difference"]["diff"]) == ("student", 1.75)
    # AVA-p − DPO, paired by seed and example: seed 1 +1 everywhere, seed 2 equal -> +0.5
    assert (ava_p["difference"]["label"], ava_p["difference"]["diff"], ava_p["difference"]["seeds"]) == (
        "AVA-p − DPO", 0.5, 2)
    assert ava_p["difference"]["low"] <= 0.5 <= ava_p["difference"]["high"]
    assert student["reward_model"] == {"run": "rm-bt-seed-1", "mean": -2.0, "sd": None, "n": 1, "ci": [-2.5, -1.5]}
    assert dpo["reward_model"] == {"run": "rm-bt-seed-1", "mean": -0.5, "sd": pytest.approx(0.5 ** 0.5), "n": 2,
                                   "ci": None}
    assert "reward_model" not in ava_p  # its evaluations had no reward model
    [judged] = ava_p["judge"]
    assert (judged["b"], judged["win_rate"]) == ("align-dpo-seed-1", 48.3) and not dpo["judge"]

    md = (runs / "report" / "report.md").read_text()
    assert "## Reward models — preference accuracy on the held-out pairs" in md
    assert "| synth-sum | Bradley–Terry | 75.00 ± 7.07 (2) | 75.00 [59.8, 85.8] | 40 |" in md
    assert "| synth-sum | AVA-p | ROUGE-2 | 7.25 ± 0.35 (2) | AVA-p − DPO | +0.50 |" in md
    assert "| -0.50 ± 0.71 (2) (rm-bt-seed-1) |" in md
    assert "| -2.00 [-2.5, -1.5] (rm-bt-seed-1) |" in md
    assert "synth-sum/rm-bt-seed-2/run.json" in md and "synth-sum/align-dpo-seed-2/eval/validation-greedy/metrics.json" in md
    with open(runs / "report" / "reward_models.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["mean"], r["pairs"]) for r in rows] == [("bt", "75.0", "40"), ("ava-p", "90.0", "40")]
    with open(runs / "report" / "alignment.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["method"], r["baseline"], r["diff"]) for r in rows] == [("student", "", ""), ("dpo", "student", "1.75"),
                                                                        ("ava-p", "dpo", "0.5")]
    text = xkd("report")
    assert text.code == 0, text.err
    assert "Reward models" in text.out and "AVA-p − DPO" in text.out and "alignment.csv" in text.out
