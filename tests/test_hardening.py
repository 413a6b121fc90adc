"""Hardened inputs: every command refuses bad input with one line naming the problem and the fix,
exit code 2, and leaves every existing run byte for byte as it was; `trust_remote_code` stays off unless
asked; an API key never reaches a file, a log or a message.

One small workspace is built once through the real CLI (a 1-step SFT run, white-box teacher samples, a
greedy eval) and copied for each case, so a case may break things in its copy without touching the others.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import SECRET
from openai_server import FakeOpenAI
from xkd_cli.cli.app import main
from xkd_cli.models.loading import save_model
from xkd_cli.models.zoo import build_tiny_model

TINY = ["--max-steps", "1", "--batch-size", "2", "--max-input-len", "32", "--max-output-len", "8",
        "--train-fraction", "0.005"]  # tokenising all of synth-sum's training set would dominate the run time
TINY_TEXT = " ".join(TINY)
DEAD_URL = "http://127.0.0.1:9/v1"  # nothing listens on port 9 (discard): connection refused at once


def cli(*args) -> None:
    """Run the real CLI in-process for fixtures (outside a test's capsys), failing loudly."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    assert code == 0, f"fixture command failed ({code}): {args}"


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def edit_json(path: Path, **values) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def sample_row(i: int, **extra) -> str:
    return json.dumps({"id": f"x{i}", "sample": 0, "prompt": "summarize: a", "response": "b", **extra}) + "\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening")
    runs, bad = base / "runs", base / "bad"
    cli("sft", "--runs-dir", runs, "--model", "tiny-t5-small", "--task", "synth-sum", "--name", "student",
        "--role", "student", *TINY)
    cli("gen-teacher", "--runs-dir", runs, "--teacher", "tiny-t5-small", "--task", "synth-sum", "--limit", "2",
        "--max-new-tokens", "3")
    cli("eval", "--runs-dir", runs, "--model", "student", "--task", "synth-sum", "--limit", "2",
        "--max-new-tokens", "2")
    write(runs / "synth-sum" / "junk" / "notes.txt", "a folder of the user's, not an xkd run\n")

    model = runs / "synth-sum" / "student" / "model"
    for name in ("truncated", "garbage-config", "wrong-shapes", "no-tokenizer"):
        shutil.copytree(model, bad / name)
    weights = bad / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    write(bad / "garbage-config" / "config.json", "{not json")
    edit_json(bad / "wrong-shapes" / "config.json", d_ff=256)  # the checkpoint's FFN is 512 wide
    for path in (bad / "no-tokenizer").glob("tokenizer*"):
        path.unlink()
    make_odd_tokenizer_model(bad / "odd-tokenizer")

    write(bad / "latin1.jsonl", '{"document": "caf\xe9", "summary": "x"}\n'.encode("latin-1"))
    write(bad / "number-summary.jsonl", '{"document": "a", "summary": 5}\n')
    write(bad / "translation-text.jsonl", '{"translation": ["Hello", "Hallo"]}\n')
    write(bad / "blank.jsonl", "\n  \n\n")
    (bad / "empty-dir").mkdir()
    write(bad / "latin1.yaml", "model: caf\xe9\n".encode("latin-1"))
    write(bad / "list.yaml", "- task\n- model\n")
    write(bad / "wrong-type.yaml", "max_steps: lots\n")
    write(bad / "out-of-range.yaml", "dropout: 2\n")
    write(bad / "samples-torn.jsonl", sample_row(0) + '{"id": "x1", "sample"\n' + sample_row(2))
    write(bad / "samples-types.jsonl", sample_row(0) + sample_row(1).replace('"sample": 0', '"sample": "zero"'))
    write(bad / "samples-mt.jsonl", sample_row(0, task="synth-mt"))
    write(bad / "samples-latin1.jsonl", sample_row(0).replace("a", "\xe9").encode("latin-1"))
    write(bad / "template-latin1.txt", "version: 1\n---\n{source} {answer_1} {answer_2} caf\xe9\n".encode("latin-1"))
    write(bad / "template-no-answers.txt", "version: 1\n---\nJudge {source}.\n")
    write(bad / "pipe-tasks-number.yaml", "tasks: 5\n")
    write(bad / "pipe-unknown-method.yaml", "tasks: [synth-sum]\nmethods: [gkd, gkdd]\n")
    write(bad / "pipe-unknown-model.yaml", "tasks: [synth-sum]\nmethods: [gkd]\nteacher: {model: tiny-t5-huge}\n")
    write(bad / "pipe-out-of-range.yaml", "tasks: [synth-sum]\nmethods: [gkd]\ndistill: {max_steps: -3}\n")
    write(bad / "pipe-models-text.yaml", "tasks: [synth-sum]\nmethods: {gkd: 1}\n")
    return SimpleNamespace(runs=runs, bad=bad)


def make_odd_tokenizer_model(directory: Path) -> None:
    """A T5 student whose tokenizer is not the builtin one (4 words): same architecture, another vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tiny = build_tiny_model("tiny-t5-small")
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tiny.tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                             unk_token="<unk>")
    save_model(tiny, directory)


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    """A private copy of the workspace (XKD_RUNS_DIR points at it) and the broken inputs."""
    runs = tmp_path / "runs"
    shutil.copytree(template.runs, runs)
    monkeypatch.setenv("XKD_RUNS_DIR", str(runs))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # judge/gen-teacher checks that need a key get past it
    return SimpleNamespace(runs=runs, task=runs / "synth-sum", bad=template.bad)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- setups: damage the private copy before the command runs --------------------------------------------------


def broken_record(ws, source="student", name="broken", content="[1]\n"):
    shutil.copytree(ws.task / source, ws.task / name)
    write(ws.task / name / "run.json", content)


def broken_samples_record(ws):
    broken_record(ws, source="teacher-samples", name="samples-broken", content='"completed"\n')


def predictions_with_torn_line(ws):
    run = ws.task / "other"
    shutil.copytree(ws.task / "student", run)
    path = run / "eval" / "validation-greedy" / "predictions.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"id": "train-1", "predic\n' + "".join(lines[1:]))


def corrupt_metrics(ws):
    write(ws.task / "student" / "eval" / "validation-greedy" / "metrics.json", "[1, 2]\n")


def report_output_file(ws):
    write(ws.runs / "not-a-dir", "x")


# -- the table: command × bad input ----------------------------------------------------------------------------
# (id, command line with {runs}/{bad} placeholders, words the one-line message must hold: the problem and the fix,
#  setup or None)
T = TINY_TEXT
CASES = [
    # sft
    ("sft-truncated-weights", f"sft --task synth-sum --model {{bad}}/truncated --name x {T}",
     ["could not load the weights", "corrupt", "re-save it"], None),
    ("sft-garbage-config", f"sft --task synth-sum --model {{bad}}/garbage-config --name x {T}",
     ["not a valid JSON", "re-save it"], None),
    ("sft-weights-do-not-fit-config", f"sft --task synth-sum --model {{bad}}/wrong-shapes --name x {T}",
     ["does not match its config.json", "re-save it"], None),
    ("sft-model-without-tokenizer", f"sft --task synth-sum --model {{bad}}/no-tokenizer --name x {T}",
     ["no tokenizer files", "save the tokenizer"], None),
    ("sft-model-is-a-samples-run", f"sft --task synth-sum --model teacher-samples --name x {T}",
     ["gen-teacher run", "holds no model", "pass an sft or distill run"], None),
    ("sft-model-is-a-samples-run-path", f"sft --task synth-sum --model {{runs}}/synth-sum/teacher-samples --name x {T}",
     ["gen-teacher run", "holds no model", "pass an sft or distill run"], None),
    ("sft-model-is-a-file", f"sft --task synth-sum --model {{bad}}/blank.jsonl --name x {T}",
     ["not a model directory", "pass a directory"], None),
    ("sft-data-dir-without-split", f"sft --task synth-sum --model tiny-t5-small --data {{bad}}/empty-dir --name x {T}",
     ["has no train split", "add one of train.jsonl"], None),
    ("sft-data-not-utf8", f"sft --task synth-sum --model tiny-t5-small --data {{bad}}/latin1.jsonl --name x {T}",
     ["not valid UTF-8", "save it as UTF-8"], None),
    ("sft-data-wrong-type", f"sft --task synth-sum --model tiny-t5-small --data {{bad}}/number-summary.jsonl --name x {T}",
     ["row 1", "'summary' must be text", "fix that value"], None),
    ("sft-data-only-blank-lines", f"sft --task synth-sum --model tiny-t5-small --data {{bad}}/blank.jsonl --name x {T}",
     ["has no rows", "at least one example"], None),
    ("sft-recipe-not-utf8", f"sft --task synth-sum --model tiny-t5-small --recipe {{bad}}/latin1.yaml --name x {T}",
     ["not UTF-8", "Save it as UTF-8"], None),
    ("sft-recipe-not-a-mapping", f"sft --recipe {{bad}}/list.yaml --name x {T}",
     ["must be a YAML mapping"], None),
    ("sft-recipe-wrong-type", "sft --task synth-sum --model tiny-t5-small --recipe {bad}/wrong-type.yaml --name x",
     ["'max_steps' has the wrong type", "expected int"], None),
    ("sft-recipe-out-of-range", f"sft --task synth-sum --model tiny-t5-small --recipe {{bad}}/out-of-range.yaml --name x {T}",
     ["--dropout must be in [0, 1)"], None),
    ("sft-unknown-role", f"sft --task synth-sum --model tiny-t5-small --role boss --name x {T}",
     ["--role must be one of teacher, student"], None),
    ("sft-name-is-not-an-xkd-run", f"sft --task synth-sum --model tiny-t5-small --name junk {T}",
     ["not an xkd run", "Pick another --name"], None),
    ("sft-overwrite-a-run-of-another-kind", f"sft --task synth-sum --model tiny-t5-small --name teacher-samples --overwrite {T}",
     ["is a gen-teacher run", "--overwrite only replaces a sft run", "Pick another --name"], None),
    # distill
    ("distill-unknown-divergence", f"distill --task synth-sum --method gkd --teacher tiny-t5-small --student tiny-t5-small --divergence kl {T}",
     ["unknown divergence 'kl'", "Did you mean 'rkl'"], None),
    ("distill-seq2seq-teacher-decoder-student", f"distill --task synth-sum --method gkd --teacher tiny-t5-small --student tiny-gpt-small {T}",
     ["encoder-decoder", "decoder-only", "pick e.g."], None),
    ("distill-tokenizer-mismatch", f"distill --task synth-sum --method skd --teacher tiny-t5-small --student {{bad}}/odd-tokenizer {T}",
     ["different tokenizers", "same model family", "--cross-tokenizer uld"], None),
    ("distill-data-translation-not-a-dict", f"distill --task synth-mt --method skd --teacher tiny-t5-small --student tiny-t5-small --data {{bad}}/translation-text.jsonl {T}",
     ["'translation' must map languages to text", "got list"], None),
    ("distill-teacher-data-other-task", f"distill --task synth-mt --method seqkd --student tiny-t5-small --teacher-data {{runs}}/synth-sum/teacher-samples {T}",
     ["teacher samples for task synth-sum, not synth-mt", "pass --task synth-sum"], None),
    ("distill-teacher-data-rows-of-other-task", f"distill --task synth-sum --method seqkd --student tiny-t5-small --teacher-data {{bad}}/samples-mt.jsonl {T}",
     ["line 1", "task synth-mt, not synth-sum", "pass --task synth-mt"], None),
    ("distill-teacher-data-torn-line", f"distill --task synth-sum --method seqxkd --student tiny-t5-small --teacher-data {{bad}}/samples-torn.jsonl {T}",
     ["line 2 is not valid JSON", "Delete the file (or that line)"], None),
    ("distill-teacher-data-wrong-types", f"distill --task synth-sum --method seqkd --student tiny-t5-small --teacher-data {{bad}}/samples-types.jsonl {T}",
     ["line 2", "'sample' a whole number", "re-create the file"], None),
    ("distill-teacher-data-not-utf8", f"distill --task synth-sum --method seqkd --student tiny-t5-small --teacher-data {{bad}}/samples-latin1.jsonl {T}",
     ["line 1 is not valid JSON", "Delete the file"], None),
    ("distill-teacher-data-is-an-sft-run", f"distill --task synth-sum --method seqkd --student tiny-t5-small --teacher-data student {T}",
     ["is a sft run, not a gen-teacher run", "pass a gen-teacher run"], None),
    ("distill-teacher-data-run-record-corrupt", f"distill --task synth-sum --method seqkd --student tiny-t5-small --teacher-data samples-broken {T}",
     ["not the object xkd writes", "--overwrite"], broken_samples_record),
    ("distill-teacher-is-a-samples-run", f"distill --task synth-sum --method skd --teacher teacher-samples --student tiny-t5-small {T}",
     ["gen-teacher run", "holds no model"], None),
    ("distill-overwrite-not-an-xkd-run", f"distill --task synth-sum --method skd --teacher tiny-t5-small --student tiny-t5-small --name junk --overwrite {T}",
     ["not an xkd run", "Pick another --name"], None),
    # gen-teacher
    ("gen-teacher-truncated-weights", "gen-teacher --task synth-sum --teacher {bad}/truncated --name g --limit 2",
     ["could not load the weights", "re-save it"], None),
    ("gen-teacher-overwrite-an-sft-run", "gen-teacher --task synth-sum --teacher student --name student --limit 2 --overwrite",
     ["is a sft run", "--overwrite only replaces a gen-teacher run", "Pick another --name"], None),
    ("gen-teacher-name-with-corrupt-record", "gen-teacher --task synth-sum --teacher tiny-t5-small --name broken --limit 2",
     ["not the object xkd writes", "--overwrite"], broken_record),
    ("gen-teacher-key-given-instead-of-its-variable", f"gen-teacher --task synth-sum --api-model m --api-key-env {SECRET}",
     ["--api-key-env takes the NAME", "not the key itself"], None),
    ("gen-teacher-api-base-not-a-url", "gen-teacher --task synth-sum --api-model m --api-base localhost-8000",
     ["--api-base must be an http(s) URL", "http://localhost:8000/v1"], None),
    ("gen-teacher-missing-data", "gen-teacher --task synth-sum --teacher tiny-t5-small --data {bad}/nope.jsonl",
     ["does not exist", "pass a data file"], None),
    ("gen-teacher-out-of-range", "gen-teacher --task synth-sum --teacher tiny-t5-small --temperature -1 --top-p 2",
     ["--temperature must be in", "--top-p must be in"], None),
    # eval
    ("eval-model-run-record-corrupt", "eval --task synth-sum --model broken --limit 2 --max-new-tokens 2",
     ["not the object xkd writes", "--overwrite"], broken_record),
    ("eval-name-is-a-run-of-another-kind", "eval --task synth-sum --model tiny-t5-small --name teacher-samples --limit 2",
     ["is a gen-teacher run, not an eval run", "pick another --name"], None),
    ("eval-name-is-not-an-xkd-run", "eval --task synth-sum --model tiny-t5-small --name junk --limit 2",
     ["not an xkd run", "Pick another name"], None),
    ("eval-unknown-split", "eval --task synth-sum --model student --split dev",
     ["--split must be one of train, validation, test"], None),
    ("eval-unknown-model", "eval --task synth-sum --model tiny-t5-smal",
     ["unknown model 'tiny-t5-smal'", "Did you mean 'tiny-t5-small'"], None),
    # diversity
    ("diversity-model-is-a-samples-run", "diversity --task synth-sum --model student --model teacher-samples --limit 2",
     ["gen-teacher run", "holds no model"], None),
    ("diversity-name-is-not-an-xkd-run", "diversity --task synth-sum --model student --name junk --limit 2 --num-samples 2 --temperatures 1",
     ["not an xkd run", "Pick another name"], None),
    ("diversity-temperatures-not-numbers", "diversity --task synth-sum --model student --temperatures 0.5,warm",
     ["'warm'", "not a number", "0.1,0.3,0.5,1.0"], None),
    # judge
    ("judge-template-not-utf8", "judge --task synth-sum --a student --b other --template {bad}/template-latin1.txt",
     ["not UTF-8", "save it as UTF-8"], None),
    ("judge-template-without-placeholders", "judge --task synth-sum --a student --b other --template {bad}/template-no-answers.txt",
     ["lacks the placeholders {answer_1}, {answer_2}"], None),
    ("judge-key-given-instead-of-its-variable", f"judge --task synth-sum --a student --b other --api-key-env {SECRET}",
     ["--api-key-env takes the NAME", "not the key itself"], None),
    ("judge-base-url-not-a-url", "judge --task synth-sum --a student --b other --base-url 127.0.0.1:8000",
     ["--base-url must be an http(s) URL"], None),
    ("judge-name-is-not-an-xkd-run", f"judge --task synth-sum --a student --b other --name junk --base-url {DEAD_URL}",
     ["not an xkd run", "Pick another name"], None),
    ("judge-predictions-torn-line", f"judge --task synth-sum --a student --b other --base-url {DEAD_URL}",
     ["line 2 is not valid JSON", "Delete the file (or that line)"], predictions_with_torn_line),
    ("judge-same-run-twice", f"judge --task synth-sum --a student --b student --base-url {DEAD_URL}",
     ["both name 'student'", "pass two different runs"], None),
    # report
    ("report-unknown-task", "report --task synth-summ", ["unknown task 'synth-summ'", "Did you mean 'synth-sum'"], None),
    ("report-metrics-corrupt", "report", ["metrics.json holds a JSON list", "re-create"], corrupt_metrics),
    ("report-output-is-a-file", "report --output {runs}/not-a-dir", ["is a file, not a directory", "pass a directory"],
     report_output_file),
    # pipeline
    ("pipeline-recipe-not-utf8", "pipeline {bad}/latin1.yaml", ["not UTF-8", "Save it as UTF-8"], None),
    ("pipeline-tasks-not-names", "pipeline {bad}/pipe-tasks-number.yaml", ["'tasks' must be a name or a list of names"], None),
    ("pipeline-methods-not-names", "pipeline {bad}/pipe-models-text.yaml", ["'methods' must be a name or a list of names"], None),
    ("pipeline-unknown-method", "pipeline {bad}/pipe-unknown-method.yaml", ["unknown method 'gkdd'", "Did you mean"], None),
    ("pipeline-unknown-model", "pipeline {bad}/pipe-unknown-model.yaml", ["unknown model 'tiny-t5-huge'", "Valid:"], None),
    ("pipeline-out-of-range", "pipeline {bad}/pipe-out-of-range.yaml", ["--max-steps must be in [1, inf]"], None),
    ("pipeline-recipe-missing", "pipeline {bad}/nope.yaml", ["recipe file not found", "Check the path"], None),
]


@pytest.mark.parametrize("args,words,setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(xkd, ws, args, words, setup):
    if setup is not None:
        setup(ws)
    before = snapshot(ws.runs)
    result = xkd(*shlex.split(args.format(runs=ws.runs, bad=ws.bad)))
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    for word in words:
        assert word in result.err, (word, result.err)
    assert SECRET not in result.err + result.out
    assert snapshot(ws.runs) == before  # nothing written, changed or deleted: not even a new run directory


def test_the_table_covers_every_command():
    commands = {shlex.split(c[1])[0] for c in CASES}
    assert commands == {"sft", "distill", "gen-teacher", "eval", "diversity", "judge", "report", "pipeline"}


# -- trust_remote_code ------------------------------------------------------------------------------------------

CUSTOM_CODE = '''
from pathlib import Path

from transformers import LlamaConfig, LlamaForCausalLM

Path(MARKER).write_text("custom code was executed")


class XkdCustomConfig(LlamaConfig):
    model_type = "xkd-custom-llama"


class XkdCustomForCausalLM(LlamaForCausalLM):
    config_class = XkdCustomConfig
'''


def custom_code_model(directory: Path) -> Path:
    """A tiny decoder whose config names its own Python classes (auto_map), as hub models with custom code do;
    importing that code leaves a CODE-RAN marker beside the model directory."""
    save_model(build_tiny_model("tiny-gpt-small"), directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type="xkd-custom-llama", architectures=["XkdCustomForCausalLM"],
                  auto_map={"AutoConfig": "custom_code.XkdCustomConfig",
                            "AutoModelForCausalLM": "custom_code.XkdCustomForCausalLM"})
    (directory / "config.json").write_text(json.dumps(config))
    marker = directory.parent / "CODE-RAN"  # transformers imports a copy of the code: say where to write
    (directory / "custom_code.py").write_text(f"MARKER = {str(marker)!r}\n" + CUSTOM_CODE)
    return directory


@pytest.fixture
def modules_cache(tmp_path, monkeypatch):
    """transformers copies a model's own code into its modules cache: keep that inside the test's tmp dir."""
    import transformers.dynamic_module_utils as dynamic

    cache = tmp_path / "hf-modules"
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(cache))
    monkeypatch.setattr(sys, "path", [*sys.path, str(cache)])
    return cache


def test_remote_code_is_refused_unless_asked_then_recorded(xkd, runs, tmp_path, modules_cache):
    model = custom_code_model(tmp_path / "models" / "custom")
    marker = model.parent / "CODE-RAN"
    for command in (["sft", "--model", model, "--name", "custom", *TINY],
                    ["eval", "--model", model, "--limit", "1", "--max-new-tokens", "2"],
                    ["gen-teacher", "--teacher", model, "--limit", "1", "--max-new-tokens", "2"],
                    ["distill", "--method", "skd", "--teacher", model, "--student", "tiny-gpt-small", *TINY],
                    ["diversity", "--model", model, "--limit", "1", "--num-samples", "2", "--temperatures", "1",
                     "--max-new-tokens", "2"]):
        result = xkd(*command, "--task", "synth-sum")
        assert result.code == 2 and result.err.count("\n") == 1, (command, result.err)
        assert "--trust-remote-code" in result.err and "custom code" in result.err, result.err
        assert not marker.exists(), f"{command[0]} ran the model's own code without --trust-remote-code"
    made = {p.parent.name for p in runs.rglob("run.json")} if runs.exists() else set()
    assert made <= {"diversity"}  # only diversity's summary run is opened before its models load

    result = xkd("sft", "--model", model, "--task", "synth-sum", "--name", "custom", *TINY, "--trust-remote-code",
                 "--json")
    assert result.code == 0, result.err
    assert marker.read_text() == "custom code was executed"
    config = json.loads((runs / "synth-sum" / "custom" / "config.json").read_text())
    assert config["trust_remote_code"] is True
    plain = xkd("sft", "--model", "tiny-gpt-small", "--task", "synth-sum", "--name", "plain", *TINY)
    assert plain.code == 0, plain.err
    assert json.loads((runs / "synth-sum" / "plain" / "config.json").read_text())["trust_remote_code"] is False

    # A LoRA adapter on that model: loading it loads its base, under the same rule.
    lora = xkd("sft", "--model", "custom", "--task", "synth-sum", "--name", "custom-lora", *TINY, "--lora-r", "2",
               "--lora-targets", "q_proj,v_proj", "--trust-remote-code")
    assert lora.code == 0, lora.err
    marker.unlink()
    evaluate = ["eval", "--model", "custom-lora", "--task", "synth-sum", "--limit", "1", "--max-new-tokens", "2"]
    refused = xkd(*evaluate)
    assert refused.code == 2 and "--trust-remote-code" in refused.err, refused.err
    assert not marker.exists()
    allowed = xkd(*evaluate, "--trust-remote-code")  # the flag reaches the adapter's base
    assert allowed.code == 0, allowed.err


# -- API keys ---------------------------------------------------------------------------------------------------


def assert_secret_nowhere(root: Path, *texts: str) -> None:
    """Not in any output, nor in any file under ``root`` (records, configs, logs, JSONL, the SQLite cache)."""
    for text in texts:
        assert SECRET not in text
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, "expected the command to have written something to check"
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    for cache in root.rglob("*.sqlite"):
        with sqlite3.connect(cache) as db:  # the live database, not only its file's bytes
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                for row in db.execute(f"SELECT * FROM {table}"):
                    assert SECRET not in json.dumps(row, default=str), (cache, table)


def predictions_run(root: Path, name: str, texts: dict[str, str]) -> None:
    from xkd_cli.core.workspace import create_run

    run = create_run(root, "synth-sum", name, kind="distill", config={}, seed=0)
    write(run.path / "eval" / "validation-greedy" / "predictions.jsonl",
          "".join(json.dumps({"id": i, "source": f"document {i}", "prediction": t}) + "\n" for i, t in texts.items()))
    run.update_record(status="completed")


@pytest.fixture
def judged_runs(runs):
    predictions_run(runs, "a", {"1": "long answer one", "2": "long answer two"})
    predictions_run(runs, "b", {"1": "short", "2": "brief"})
    return runs


BLACK_BOX = ["gen-teacher", "--task", "synth-sum", "--api-model", "fake", "--limit", "2", "--concurrency", "1"]
JUDGE = ["judge", "--task", "synth-sum", "--a", "a", "--b", "b", "--concurrency", "1"]


@pytest.mark.parametrize("failure", ["401", "500-until-give-up", "connection-refused"])
@pytest.mark.parametrize("command", ["gen-teacher", "judge"])
def test_failing_api_calls_never_leak_the_key(xkd, judged_runs, key, command, failure):
    with FakeOpenAI(responder=lambda request: "[[1]]") as server:
        # A first, successful call fills the run and (for judge) the answer cache, so both are inspected too.
        base = [*(BLACK_BOX if command == "gen-teacher" else JUDGE), "--max-retries", "1"]
        url_flag = "--api-base" if command == "gen-teacher" else "--base-url"
        ok = xkd(*base, url_flag, server.url, "--name", "ok")
        assert ok.code == 0, ok.err
        if failure == "401":
            server.fail(401)
        elif failure == "500-until-give-up":
            server.fail(500, retry_after="0", times=2)
        url = DEAD_URL if failure == "connection-refused" else server.url
        failed = xkd(*base, url_flag, url, "--name", "failed", "--max-tokens" if command == "judge" else "--seed", "7")
    assert failed.code == 2 and failed.err.count("\n") == 1, failed.err
    assert {"401": "HTTP 401", "500-until-give-up": "HTTP 500", "connection-refused": "could not connect"}[failure] \
        in failed.err
    assert_secret_nowhere(judged_runs, ok.out, ok.err, failed.out, failed.err)


def test_credentials_in_the_endpoint_url_are_never_recorded(xkd, judged_runs, key, monkeypatch):
    """A key passed inside the URL (user:password@host or ?key=...) is cut from run.json's command line, the
    configs and every message, XKD_DEBUG=1 tracebacks included."""
    monkeypatch.setenv("XKD_DEBUG", "1")

    def as_typed(*args):  # run.json records sys.argv: make it what a shell would pass
        monkeypatch.setattr(sys, "argv", ["xkd", *map(str, args)])
        return xkd(*args)

    with FakeOpenAI(responder=lambda request: "[[2]]") as server:
        with_user = server.url.replace("http://", f"http://user:{SECRET}@")
        made = as_typed(*BLACK_BOX, "--api-base", with_user, "--json")
        assert made.code == 0, made.err
        with_query = f"{server.url}?key={SECRET}"  # the endpoint then answers 404: an error path as well
        refused = as_typed(*JUDGE, "--base-url", with_query, "--name", "judged")
        assert refused.code == 2 and "HTTP 404" in refused.err and "Traceback" in refused.err, refused.err
        url = server.url
    record = json.loads((judged_runs / "synth-sum" / "teacher-samples" / "run.json").read_text())
    assert record["api_base"] == url and url in record["command"]
    judge_config = json.loads((judged_runs / "synth-sum" / "judged" / "config.json").read_text())
    assert judge_config["base_url"] == url
    assert_secret_nowhere(judged_runs, made.out, made.err, refused.out, refused.err)
