"""One's own data: task files, TRL's formats in every file type, the extra metrics, bad input as one-line
errors, and the built-in tasks unchanged bit for bit (digests recorded from the code before task files)."""

import hashlib
import json
from pathlib import Path

import pytest

from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import encode_prompts, encode_targets
from xkd_cli.data.taskfile import get_task
from xkd_cli.data.tasks import SPLITS
from xkd_cli.data import metrics
from xkd_cli.models.zoo import builtin_tokenizer

from conftest import FIXTURES

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own-data"
PC_ROWS = [{"prompt": "Say hi to Ann.", "completion": "Hi Ann!"}, {"prompt": "Say hi to Bo.", "completion": "Hi Bo!"}]
MSG_ROWS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]},
            {"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"},
                          {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome"}]}]


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        import csv
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def task_file(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# -- built-in tasks: the same prompts, labels, token ids and scores as before -----------------------------

def test_builtin_tasks_unchanged_bit_for_bit():
    recorded = json.loads((FIXTURES / "builtin_tasks.json").read_text())
    fixtures = {"xsum": FIXTURES / "xsum", "wmt": FIXTURES / "wmt", "gsm8k": FIXTURES / "gsm8k"}
    for key, want in recorded["examples"].items():
        name, split = key.split("/")
        task = get_task(name)
        examples = task.load(split, fixtures.get(name))
        digest = hashlib.sha256(json.dumps([[e.id, e.prompt, e.reference, e.source] for e in examples]).encode())
        assert (digest.hexdigest(), len(examples)) == (want["examples"], want["n"]), key
        assert all(e.messages is None for e in examples)
        predictions = [e.reference[: len(e.reference) // 2] for e in examples]
        assert task.score(predictions, [e.reference for e in examples]) == want["score"], key
    tok = builtin_tokenizer()
    for key, want in recorded["token_ids"].items():
        name, kind = key.split("/")
        task = get_task(name)
        examples = task.load("validation")[:50]
        prompts = encode_prompts(tok, [e.prompt for e in examples], is_encoder_decoder=kind == "t5", max_len=128,
                                 keep_end=task.keep_prompt_end)
        targets = encode_targets(tok, [e.reference for e in examples], max_len=32)
        assert hashlib.sha256(json.dumps([prompts, targets]).encode()).hexdigest() == want, key


# -- formats and file types ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet"])
def test_prompt_completion_in_every_file_type(tmp_path, ext):
    data = write(tmp_path / f"train{ext}", PC_ROWS)
    task = get_task(str(task_file(tmp_path, name="hi", data=str(data), metric="exact")))
    examples = task.load("train")
    assert [(e.prompt, e.reference, e.messages) for e in examples] == [
        ("Say hi to Ann.", "Hi Ann!", (("user", "Say hi to Ann."),)),
        ("Say hi to Bo.", "Hi Bo!", (("user", "Say hi to Bo."),))]
    assert task.name == "hi" and task.family == "custom" and task.headline == "exact_match"


@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_messages_in_every_file_type_that_holds_lists(tmp_path, ext):
    data = write(tmp_path / f"train{ext}", MSG_ROWS)
    task = get_task(str(task_file(tmp_path, data=str(data), system="Default system.")))
    first, second = task.load("train")
    assert first.messages == (("system", "Be brief."), ("user", "2+2?")) and first.reference == "4"
    assert second.messages == (("system", "Default system."), ("user", "Capital of France?"),
                               ("assistant", "Paris"), ("user", "And of Italy?"))
    assert second.reference == "Rome" and "Default system." not in second.prompt  # plain text: no system turn


def test_prompt_completion_as_messages_and_fields_from_csv(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Q1"}], "completion": [{"role": "assistant", "content": "A1"}]}]
    task = get_task(str(write(tmp_path / "conv.jsonl", rows)))  # the quick path: a bare data file
    (ex,) = task.load("test")
    assert (task.name, ex.messages, ex.reference) == ("conv", (("user", "Q1"),), "A1")
    data = write(tmp_path / "pkgs.csv", [{"document": "A long text.", "summary": "Short.", "extra": "x"}])
    task = get_task(str(task_file(tmp_path, name="pkgs", data=str(data), format="fields",
                                  prompt="Summarise: {document}", target="{summary}", metric="rouge")))
    (ex,) = task.load("validation")
    assert (ex.prompt, ex.reference, task.headline) == ("Summarise: A long text.", "Short.", "rouge2")


def test_task_file_data_directory_relative_to_the_file():
    task = get_task(str(EXAMPLES / "plurals.yaml"))
    assert task.name == "plurals" and task.max_input_len == 128
    assert {split: len(task.load(split)) for split in SPLITS} == {"train": 50, "validation": 10, "test": 10}
    assert get_task(str(EXAMPLES / "numbers.yaml")).load("train")[0].reference == "twenty-four"


# -- metrics ------------------------------------------------------------------------------------------------

def test_metrics_of_own_tasks():
    assert metrics.score("exact", ["The answer: Paris.", "rome"], ["the answer paris", "Paris"]) == \
        {"exact_match": 50.0}
    assert metrics.score("number", ["so it is 1,234.", "The answer is 7"], ["1234", "steps #### 8"]) == \
        {"accuracy": 50.0}
    assert metrics.score("chrf", ["hello world"], ["hello world"])["chrf"] == pytest.approx(100.0)
    assert metrics.score("chrf", ["xyz"], ["hello world"])["chrf"] < 10
    assert metrics.score("none", ["a"], ["b"]) == {}
    with pytest.raises(XKDError, match="not a number"):
        metrics.score("number", ["1"], ["one"])
    assert metrics.score("rouge", ["a b"], ["a b"])["rouge2"] == pytest.approx(100.0)
    assert metrics.score("bleu", ["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100.0)


# -- bad input: one line naming the file and row, exit 2, nothing written -------------------------------------

BAD_DATA = [
    ([{"text": "no format"}], "train.jsonl, row 1: neither a 'messages' column nor 'prompt' and 'completion'"),
    ([MSG_ROWS[0], {"messages": [{"role": "user", "content": "hi"}]}],
     "train.jsonl, row 2: the last message is a user turn, not an assistant turn"),
    ([{"prompt": "p", "completion": "  "}], "train.jsonl, row 1: the completion is empty"),
]


@pytest.mark.parametrize("rows, message", BAD_DATA)
def test_bad_rows_are_one_line_errors(xkd, runs, tmp_path, rows, message):
    data = write(tmp_path / "train.jsonl", rows)
    result = xkd("sft", "--model", "tiny-gpt-small", "--data", data, "--max-steps", "1")
    assert result.code == 2 and message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert not runs.exists()


def test_bad_task_files_are_one_line_errors(xkd, runs, tmp_path):
    data = write(tmp_path / "train.csv", [{"document": "d", "summary": "s"}])
    missing = task_file(tmp_path, data=str(data), format="fields", prompt="Summarise: {body}", target="{summary}")
    result = xkd("sft", "--model", "tiny-gpt-small", "--task", missing, "--max-steps", "1")
    assert result.code == 2 and "row 1: the template 'Summarise: {body}' names column 'body'" in result.err
    bad_metric = task_file(tmp_path, data=str(data), metric="bertscore")
    result = xkd("sft", "--model", "tiny-gpt-small", "--task", bad_metric, "--max-steps", "1")
    assert result.code == 2 and "unknown metric 'bertscore'; use one of rouge, bleu, chrf" in result.err
    result = xkd("sft", "--model", "tiny-gpt-small", "--data", data, "--metric", "f1", "--max-steps", "1")
    assert result.code == 2 and "--metric must be one of rouge" in result.err
    assert not runs.exists()


# -- pipeline and report ------------------------------------------------------------------------------------

def test_pipeline_takes_task_files_and_inline_tasks(xkd, runs, tmp_path):
    recipe = tmp_path / "pipe.yaml"
    data = write(tmp_path / "hi.jsonl", PC_ROWS)
    recipe.write_text(f"""
tasks:
  - {EXAMPLES / "numbers.yaml"}
  - {{name: greet, data: hi.jsonl, metric: chrf}}
teacher: {{model: tiny-t5-base, max_steps: 1, batch_size: 2}}
student: {{model: tiny-t5-small, max_steps: 1, batch_size: 2}}
methods: [gkd]
distill: {{max_steps: 1, batch_size: 2}}
eval: {{limit: 2, max_new_tokens: 4}}
""")
    result = xkd("pipeline", recipe, "--dry-run", "--json")
    assert result.code == 0, result.err
    steps = result.json()["steps"]
    assert {s["task"] for s in steps} == {"numbers", "greet"}
    assert (runs / ".tasks" / "greet.yaml").is_file() and data.is_file()
    recipe.write_text(recipe.read_text().replace(f"  - {EXAMPLES / 'numbers.yaml'}\n", ""))
    result = xkd("pipeline", recipe, "--json")
    assert result.code == 0, result.err
    metrics_file = runs / "greet" / "gkd" / "eval" / "validation-greedy" / "metrics.json"
    assert json.loads(metrics_file.read_text())["headline"] == "chrf"
    result = xkd("report", "--task", "greet", "--json")
    assert result.code == 0, result.err


def test_black_box_teacher_gets_the_conversation(xkd, runs, server, key):
    result = xkd("gen-teacher", "--task", EXAMPLES / "plurals.yaml", "--api-base", server.url, "--api-model", "fake",
                 "--limit", "2", "--json")
    assert result.code == 0, result.err
    messages = server.requests[0]["json"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "You are a concise English grammar assistant."
    rows = [json.loads(line) for line in Path(result.json()["samples"]).read_text().splitlines()]
    assert rows[0]["response"].startswith("answer to: What is the plural")
