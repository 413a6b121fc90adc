"""The CLI end to end: real commands, real tiny models, real files, and every error path."""

import json

import pytest
import typer
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from conftest import FIXTURES, run_xkd_process

TINY = ["--max-steps", "3", "--batch-size", "4", "--max-input-len", "64", "--max-output-len", "16"]
EVAL = ["--limit", "6", "--max-new-tokens", "8", "--batch-size", "4"]


@pytest.mark.parametrize("command", [[], ["sft"], ["eval"]])
def test_help(xkd, command):
    result = xkd(*command, "--help")
    assert result.code == 0
    assert "Usage" in result.out
    if command:
        assert "Examples" in result.out and "--recipe" in result.out and "--json" in result.out


def test_sft_then_eval_end_to_end(xkd, runs):
    result = xkd("sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--name", "student", "--role", "student",
                 *TINY, "--json")
    assert result.code == 0, result.err
    info = result.json()
    run = runs / "synth-sum" / "student"
    assert info["path"] == str(run) and info["steps"] == 3
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["kind"] == "sft" and record["role"] == "student"
    assert record["seed"] == 42 and record["environment"]["torch"] and record["duration_s"] > 0
    assert json.loads((run / "config.json").read_text())["max_steps"] == 3
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and log[-1]["loss"] > 0
    assert (run / "model" / "model.safetensors").is_file()
    # Loadable with plain transformers, no xkd code.
    AutoModelForSeq2SeqLM.from_pretrained(run / "model")
    AutoTokenizer.from_pretrained(run / "model")

    result = xkd("eval", "--model", "student", "--task", "synth-sum", *EVAL, "--json")
    assert result.code == 0, result.err
    info = result.json()
    out_dir = run / "eval" / "validation-greedy"
    rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {"id", "prompt", "reference", "prediction"} <= set(rows[0])
    assert set(info["metrics"]) >= {"rouge1", "rouge2", "rougeL"} and info["headline"] == "rouge2"
    assert json.loads((out_dir / "metrics.json").read_text())["metrics"] == info["metrics"]
    scores = [json.loads(line) for line in (out_dir / "scores.jsonl").read_text().splitlines()]
    # in the evaluation's order (predictions.jsonl is in the order generation finished them)
    assert sorted(s["id"] for s in scores) == sorted(r["id"] for r in rows) and len(scores) == 6
    assert info["scores"] == str(out_dir / "scores.jsonl")
    assert sum(s["stats"][0] for s in scores) / 6 == pytest.approx(info["metrics"]["rouge2"])

    # A re-run generates nothing new and reports the same numbers.
    before = (out_dir / "predictions.jsonl").read_bytes()
    again = xkd("eval", "--model", "student", "--task", "synth-sum", *EVAL, "--json")
    assert again.code == 0 and again.json()["metrics"] == info["metrics"]
    assert (out_dir / "predictions.jsonl").read_bytes() == before

    # An interrupted eval (two rows kept, the third torn mid-write) resumes to the same result, no duplicates.
    lines = before.decode().splitlines(keepends=True)
    (out_dir / "predictions.jsonl").write_text("".join(lines[:2]) + lines[2][:15])
    resumed = xkd("eval", "--model", "student", "--task", "synth-sum", *EVAL, "--json")
    assert resumed.code == 0, resumed.err
    rows = [json.loads(line) for line in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(json.loads(line)["id"] for line in lines)
    assert resumed.json()["metrics"] == info["metrics"]

    # Other decoding settings are refused instead of mixed into the same file...
    changed = xkd("eval", "--model", "student", "--task", "synth-sum", "--limit", "6", "--max-new-tokens", "5")
    assert changed.code == 2 and "max_new_tokens" in changed.err and "--overwrite" in changed.err
    # ...and sampling goes to its own directory, with SelfBLEU.
    sampled = xkd("eval", "--model", "student", "--task", "synth-sum", *EVAL, "--temperature", "1.0",
                  "--top-p", "0.95", "--num-samples", "3", "--json")
    assert sampled.code == 0, sampled.err
    assert "self_bleu" in sampled.json()["metrics"]
    rows = [json.loads(line) for line in (run / "eval" / "validation-t1-p0.95-n3" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(r["predictions"]) == 3 for r in rows)


def test_table_output_for_people(xkd, runs):
    result = xkd("sft", "--model", "tiny-gpt-small", "--task", "synth-mt", *TINY)
    assert result.code == 0, result.err
    assert "loss (mean of last" in result.out and "sft-tiny-gpt-small" in result.out
    result = xkd("eval", "--model", "sft-tiny-gpt-small", "--task", "synth-mt", *EVAL)
    assert result.code == 0, result.err
    assert "bleu" in result.out and "signature" in result.out


def test_paths_are_never_wrapped_piped_at_80_columns(tmp_path):
    """Piped, rich lays its output out for 80 columns: the tables fit them, and every path the commands print
    stays whole on one line (a long runs directory makes each one longer than 80 characters), so it can be
    copied and parsed."""
    runs = tmp_path / "a-runs-directory-whose-name-alone-is-longer-than-half-a-line-of-80-columns" / "runs"
    env = {"XKD_RUNS_DIR": str(runs), "COLUMNS": "80"}
    sft = run_xkd_process("sft", "--model", "tiny-t5-small", "--task", "synth-mt", "--max-steps", "2",
                          "--batch-size", "4", "--max-input-len", "48", "--max-output-len", "12", env=env)
    assert sft.returncode == 0, sft.stderr
    evaluation = run_xkd_process("eval", "--model", "sft-tiny-t5-small", "--task", "synth-mt", "--limit", "4",
                                 "--max-new-tokens", "6", env=env)
    assert evaluation.returncode == 0, evaluation.stderr
    run = runs / "synth-mt" / "sft-tiny-t5-small"
    assert f"run: {run}" in sft.stdout.splitlines() and f"model: {run / 'model'}" in sft.stdout.splitlines()
    predictions = run / "eval" / "validation-greedy" / "predictions.jsonl"
    assert f"predictions: {predictions}" in evaluation.stdout.splitlines()
    for result in (sft, evaluation):
        lines = (result.stdout + result.stderr).splitlines()
        cut = [line for line in lines if "a-runs-directory" in line and str(runs) not in line]
        assert not cut, result.stdout
        table = [line for line in result.stdout.splitlines() if str(runs) not in line]
        assert max(len(line) for line in table) <= 80, result.stdout


@pytest.mark.parametrize("task,data", [("xsum", "xsum"), ("wmt", "wmt"), ("gsm8k", "gsm8k")])
@pytest.mark.parametrize("model,auto", [("tiny-t5-small", AutoModelForSeq2SeqLM), ("tiny-gpt-small", AutoModelForCausalLM)])
def test_real_schemas_through_local_files(xkd, runs, task, data, model, auto):
    result = xkd("sft", "--model", model, "--task", task, "--data", FIXTURES / data, "--name", "m", *TINY,
                 "--max-input-len", "128", "--json")
    assert result.code == 0, result.err
    auto.from_pretrained(runs / task / "m" / "model")
    result = xkd("eval", "--model", "m", "--task", task, "--data", FIXTURES / data, "--limit", "3",
                 "--max-new-tokens", "6", "--max-input-len", "128", "--json")
    assert result.code == 0, result.err
    headline = result.json()["headline"]
    assert headline in result.json()["metrics"]


def test_recipe_then_flags(xkd, runs, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: synth-gsm\nmodel: tiny-t5-small\nmax_steps: 50\nbatch_size: 2\nname: from-recipe\n")
    result = xkd("sft", "--recipe", recipe, "--max-steps", "2", "--max-input-len", "48", "--max-output-len", "8", "--json")
    assert result.code == 0, result.err
    config = json.loads((runs / "synth-gsm" / "from-recipe" / "config.json").read_text())
    assert (config["max_steps"], config["batch_size"], config["model"]) == (2, 2, "tiny-t5-small")


def bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("args,words", [
    (["--task", "xsumm"], ["unknown task 'xsumm'", "xsum", "synth-sum"]),
    (["--model", "tiny-t5-medium"], ["tiny-t5-small"]),
    (["--data", "/nonexistent/data.jsonl", "--task", "xsum"], ["/nonexistent/data.jsonl"]),
    (["--lr", "-1"], ["--lr"]),
    (["--train-fraction", "1.5"], ["--train-fraction"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--dtype", "float8"], ["--dtype"]),
])
def test_bad_input_exits_2_with_one_line(xkd, runs, args, words):
    result = xkd("sft", "--task", "synth-sum", "--model", "tiny-t5-small", *TINY, *args)  # the last flag wins
    assert result.code == 2
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    for word in words:
        assert word in result.err
    assert not (runs / "synth-sum").exists() or not any((runs / "synth-sum").iterdir())


@pytest.mark.parametrize("content,words", [
    ('{"document": "a", "summary": "b", "id": "1"}\n{"document": "a", "summary"\n', ["line 2"]),
    ('{"document": "a", "id": "1"}\n', ["summary"]),
    ("", ["no rows"]),
])
def test_bad_data_files(xkd, runs, tmp_path, content, words):
    data = bad(tmp_path, "train.jsonl", content)
    result = xkd("sft", "--model", "tiny-t5-small", "--task", "xsum", "--data", data, *TINY)
    assert result.code == 2, result.err
    for word in words:
        assert word in result.err


def test_existing_run_is_refused_and_untouched(xkd, runs):
    assert xkd("sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--name", "keep", *TINY).code == 0
    model_file = runs / "synth-sum" / "keep" / "model" / "model.safetensors"
    before = model_file.read_bytes()
    result = xkd("sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--name", "keep", *TINY, "--seed", "7")
    assert result.code == 2 and "already exists" in result.err and "--overwrite" in result.err
    assert model_file.read_bytes() == before
    result = xkd("sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--name", "keep", *TINY, "--seed", "7",
                 "--overwrite")
    assert result.code == 0
    assert model_file.read_bytes() != before


def test_unknown_recipe_key(xkd, runs, tmp_path):
    recipe = bad(tmp_path, "r.yaml", "task: synth-sum\nmodel: tiny-t5-small\nlearning_rate: 0.1\n")
    result = xkd("sft", "--recipe", recipe)
    assert result.code == 2 and "learning_rate" in result.err


def test_eval_of_unknown_run(xkd, runs):
    result = xkd("eval", "--model", "no-such-run", "--task", "synth-sum")
    assert result.code == 2 and "no-such-run" in result.err


def test_process_exit_code_and_debug_traceback(runs):
    proc = run_xkd_process("sft", "--task", "nope", "--model", "tiny-t5-small")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown task 'nope'") and "Traceback" not in proc.stderr
    proc = run_xkd_process("sft", "--task", "nope", "--model", "tiny-t5-small", env={"XKD_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def built_config(xkd, monkeypatch, *args):
    """The config a training command builds from ``args``, caught before anything runs."""
    from xkd_cli.cli import training

    seen = []

    def stop(cfg, *_, **__):
        seen.append(cfg)
        raise typer.Exit(0)

    monkeypatch.setattr(training, "_refuse_early", stop)
    result = xkd(*args)
    assert result.code == 0 and len(seen) == 1, result.err
    return seen[0]


def test_every_switch_has_a_no_form_that_overrides_the_recipe(xkd, runs, tmp_path, monkeypatch):
    recipe = bad(tmp_path, "r.yaml", "task: synth-sum\nmodel: tiny-t5-small\nlora_r: 8\nmerge_lora: true\n")
    assert built_config(xkd, monkeypatch, "sft", "--recipe", recipe).merge_lora is True  # no flag: the recipe's
    assert built_config(xkd, monkeypatch, "sft", "--recipe", recipe, "--no-merge-lora").merge_lora is False
    off = bad(tmp_path, "off.yaml", "task: synth-sum\nmodel: tiny-t5-small\ntrust_remote_code: false\n")
    assert built_config(xkd, monkeypatch, "sft", "--recipe", off, "--trust-remote-code").trust_remote_code is True
    help_text = xkd("distill", "--help").out
    for flag in ("--no-merge-lora", "--no-load-in-8bit", "--no-teacher-load-in-4bit", "--no-trust-remote-code"):
        assert flag in help_text, flag
    assert "--no-stemmer" in xkd("eval", "--help").out and "--no-use-stemmer" not in xkd("eval", "--help").out


def test_the_output_length_flag_has_both_spellings(xkd, runs, monkeypatch):
    cfg = built_config(xkd, monkeypatch, "sft", "--model", "tiny-t5-small", "--task", "synth-sum", "--max-new-tokens", "9")
    assert cfg.max_output_len == 9
    assert "--max-output-len,--max-new-tokens" in xkd("distill", "--help").out
    for command in ("eval", "diversity", "gen-teacher"):
        assert "--max-new-tokens,--max-output-len" in xkd(command, "--help").out, command


def test_help_lists_a_commands_own_options_before_the_shared_groups(xkd):
    def order(command):
        lines = xkd(command, "--help").out.splitlines()
        return [line.split()[1] for line in lines if line.startswith("│ --")]

    sft = order("sft")
    loading = ["--seed", "--dtype", "--device", "--load-in-8bit"]
    assert sft.index("--merge-lora") < sft.index("--seed") and sft[sft.index("--seed"):][:3] == loading[:3]
    judge = order("judge")
    assert judge.index("--parse-retries") < judge.index("--api-key-env") < judge.index("--concurrency")
    evaluation = order("eval")
    assert evaluation.index("--use-stemmer") < evaluation.index("--seed")
