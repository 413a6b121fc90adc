"""`xkd diversity` end to end through the real CLI with two untrained built-in models: files, figure, numbers
traceable to the eval results they came from, resuming without new generation, and one-line errors."""

import csv
import json
import xml.etree.ElementTree as ET

import pytest

from xkd_cli.config.evaluation import DiversityConfig
from xkd_cli.evaluation.diversity import CSV_COLUMNS
from xkd_cli.core.errors import XKDError

MODELS = ["tiny-t5-small", "tiny-gpt-small"]
SWEEP = ["--model", MODELS[0], "--model", MODELS[1], "--task", "synth-mt", "--limit", "3", "--num-samples", "2",
         "--temperatures", "0.5,1.0", "--max-new-tokens", "6", "--batch-size", "3"]


def one_line_error(result, *words):
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err, (word, result.err)
    return result.err


def predictions_state(runs):
    return {str(p.relative_to(runs)): p.read_bytes() for p in sorted(runs.rglob("predictions.jsonl"))}


def test_help_shows_examples(xkd):
    result = xkd("diversity", "--help")
    assert result.code == 0
    for word in ("Examples", "xkd diversity", "--model", "--temperatures", "--num-samples", "--top-p", "--limit",
                 "--name", "--overwrite", "--json", "--recipe"):
        assert word in result.out, word


def test_sweep_end_to_end_traceable_and_resumable(xkd, runs):
    result = xkd("diversity", *SWEEP, "--json")
    assert result.code == 0, result.err
    info = result.json()
    run = runs / "synth-mt" / "diversity"
    assert info["path"] == str(run) and info["run"] == "diversity"
    assert (info["task"], info["split"], info["metric"], info["metric_label"]) == ("synth-mt", "validation", "bleu", "BLEU")
    assert (info["models"], info["temperatures"], info["num_samples"], info["top_p"], info["examples"]) == \
        (MODELS, [0.5, 1.0], 2, 1.0, 3)
    for name in ("diversity.csv", "diversity.json", "diversity.png", "diversity.svg"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    record = json.loads((run / "run.json").read_text())
    assert (record["kind"], record["status"], record["rows"]) == ("diversity", "completed", 4)

    # the figure: a real PNG, and an SVG with the axis labels and the legend as text
    assert (run / "diversity.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    svg = ET.parse(run / "diversity.svg").getroot()
    text = " ".join("".join(el.itertext()) for el in svg.iter() if el.tag.endswith("text"))
    for expected in ("BLEU", "Diversity (100 − SelfBLEU)", "model", *MODELS, "T=0.5", "T=1"):
        assert expected in text, expected

    # CSV, JSON and the eval metrics.json files each row points to agree
    with open(run / "diversity.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    saved = json.loads((run / "diversity.json").read_text())
    assert list(table[0]) == list(CSV_COLUMNS)
    assert [(r["model"], float(r["temperature"])) for r in table] == \
        [(m, t) for m in MODELS for t in (0.5, 1.0)]
    assert {k: v for k, v in info.items() if k != "seconds"} == saved
    for row, entry in zip(table, saved["rows"]):
        eval_dir = runs / row["eval_dir"]
        assert row["eval_dir"] == entry["eval_dir"]
        assert eval_dir.name == f"validation-t{float(row['temperature']):g}-p1-n2"
        assert eval_dir.parent.parent.name == f"eval-{row['model']}"
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        assert (metrics["model"], metrics["examples"], metrics["headline"]) == (row["model"], 3, "bleu")
        m = metrics["metrics"]
        assert float(row["value"]) == m["bleu"] == entry["value"]
        assert float(row["self_bleu"]) == m["self_bleu"] == entry["self_bleu"]
        assert float(row["diversity"]) == m["diversity"] == entry["diversity"] == pytest.approx(100 - m["self_bleu"])
        assert (row["metric"], int(row["num_samples"]), int(row["examples"])) == ("bleu", 2, 3)
        assert entry["metrics"] == m
        preds = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 3 and all(len(p["predictions"]) == 2 for p in preds)

    # people get the table
    before = predictions_state(runs)
    assert len(before) == 4
    again = xkd("diversity", *SWEEP)
    assert again.code == 0, again.err
    for word in ("BLEU", "SelfBLEU", "diversity", *MODELS, "0.5", "diversity.png"):
        assert word in again.out, word
    # resuming generates nothing: every predictions file is byte for byte what it was
    assert predictions_state(runs) == before
    assert json.loads((run / "diversity.json").read_text())["rows"] == saved["rows"]

    # another temperature reuses the finished evaluations and only adds its own
    wider = xkd("diversity", *[("0.5,1.0,0.3" if a == "0.5,1.0" else a) for a in SWEEP], "--json")
    assert wider.code == 0, wider.err
    after = predictions_state(runs)
    assert {k: after[k] for k in before} == before and len(after) == 6
    assert [r["temperature"] for r in wider.json()["rows"]] == [0.5, 1.0, 0.3] * 2

    # a summary never replaces a run of another kind, not even with --overwrite
    clash = xkd("diversity", *SWEEP, "--name", "eval-tiny-t5-small", "--overwrite")
    one_line_error(clash, "eval-tiny-t5-small", "not a diversity run")
    assert (runs / "synth-mt" / "eval-tiny-t5-small" / "eval").is_dir()


@pytest.mark.parametrize("args, words", [
    (["--num-samples", "1"], ["--num-samples must be at least 2", "SelfBLEU"]),
    (["--temperatures", "0"], ["--temperatures must all be > 0"]),
    (["--temperatures", "0.5,-1"], ["--temperatures must all be > 0", "-1"]),
    (["--temperatures", "0.5,hot"], ["'hot'", "not a number"]),
    (["--temperatures", "0.5,0.5"], ["twice"]),
    (["--top-p", "0"], ["--top-p"]),
    (["--split", "dev"], ["--split"]),
    (["--model", "tiny-t5-small"], ["given twice"]),
    (["--model", "no-such-run"], ["no-such-run"]),
    (["--name", "bad/name"], ["--name"]),
])
def test_bad_input_is_one_line_and_writes_nothing(xkd, runs, args, words):
    result = xkd("diversity", "--model", "tiny-t5-small", "--task", "synth-mt", "--limit", "2", *args)
    one_line_error(result, *words)
    assert not runs.exists() or not any(runs.rglob("*.json"))


def test_model_and_task_are_required(xkd, runs):
    one_line_error(xkd("diversity", "--task", "synth-mt"), "--model is required")
    one_line_error(xkd("diversity", "--model", "tiny-t5-small", "--task", "nope"))


def test_config_checks_every_problem_at_once():
    with pytest.raises(XKDError) as info:
        DiversityConfig(task="synth-mt", models=("a",), num_samples=1, temperatures=(0.0,))
    assert "--num-samples" in str(info.value) and "--temperatures" in str(info.value)
    cfg = DiversityConfig(task="synth-mt", models=("a", "b"))
    assert cfg.temperatures == (0.1, 0.3, 0.5, 1.0) and cfg.num_samples == 4 and cfg.top_p == 1.0
    ecfg = cfg.eval_config("b", 0.3)
    assert (ecfg.model, ecfg.temperature, ecfg.top_p, ecfg.num_samples, ecfg.name) == ("b", 0.3, 1.0, 4, None)


def test_recipe_lists_models_and_temperatures(tmp_path):
    from xkd_cli.config.core import build_config

    recipe = tmp_path / "sweep.yaml"
    recipe.write_text("task: synth-mt\nmodels: [gkd, gxkd]\ntemperatures: [0.1, 1]\nnum-samples: 3\n")
    cfg = build_config(DiversityConfig, recipe=recipe, flags={"temperatures": None, "models": ("sft",)})
    assert (cfg.models, cfg.temperatures, cfg.num_samples) == (("sft",), (0.1, 1.0), 3)
