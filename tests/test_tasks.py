"""Task registry and data loading (xkd_cli.data.tasks), on fixture files in the real datasets' schemas.

Committed fixtures: tests/fixtures/{xsum,wmt,gsm8k}/ (jsonl, csv, json). Parquet files and broken
inputs are written into tmp_path by the tests. Nothing here touches the network.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xkd_cli.core.errors import XKDError
from xkd_cli.data.taskfile import get_task
from xkd_cli.data.tasks import GSM8K_EXEMPLARS, SPLITS, TASKS, WMT_TRAIN_PAIRS, Example

FIXTURES = Path(__file__).parent / "fixtures"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps({"data": rows}, ensure_ascii=False), encoding="utf-8")
    return path


WRITERS = {"jsonl": write_jsonl, "json": write_json, "csv": write_csv, "parquet": write_parquet}


def error_of(task: str, *args, **kwargs) -> str:
    """The one-line message of the XKDError that loading raises."""
    with pytest.raises(XKDError) as info:
        get_task(task).load(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "error messages must be one line"
    return message


XSUM_ROWS = read_jsonl(FIXTURES / "xsum" / "train.jsonl")
WMT_PAIRS = [r["translation"] for r in read_jsonl(FIXTURES / "wmt" / "train.jsonl")]
GSM_ROWS = read_jsonl(FIXTURES / "gsm8k" / "train.jsonl")


# ---------------------------------------------------------------- registry

def test_registered_tasks_and_their_metrics():
    assert TASKS.names() == ["xsum", "wmt", "gsm8k", "synth-sum", "synth-mt", "synth-gsm", "synth-sum-pref"]
    expected = {  # name: (family, metric, headline, eval split, bundled, preference)
        "xsum": ("sum", "rouge", "rouge2", "validation", False, False),
        "wmt": ("mt", "bleu", "bleu", "validation", False, False),
        "gsm8k": ("gsm", "accuracy", "accuracy", "test", False, False),
        "synth-sum": ("sum", "rouge", "rouge2", "validation", True, False),
        "synth-mt": ("mt", "bleu", "bleu", "validation", True, False),
        "synth-gsm": ("gsm", "accuracy", "accuracy", "test", True, False),
        "synth-sum-pref": ("sum", "rouge", "rouge2", "validation", True, True),
    }
    for name, fields in expected.items():
        t = get_task(name)
        assert (t.family, t.metric, t.headline, t.eval_split, t.bundled, t.preference) == fields
    assert get_task("wmt").train_cap == WMT_TRAIN_PAIRS == 10_000
    assert (get_task("gsm8k").hf_id, get_task("gsm8k").hf_config) == ("openai/gsm8k", "main")


def test_unknown_task_lists_names_and_suggests():
    with pytest.raises(XKDError, match="Did you mean 'xsum'.*synth-gsm"):
        get_task("xsun")


# ---------------------------------------------------------------- xsum schema

def expected_xsum(rows):
    return [Example(r["id"], "summarize: " + r["document"], r["summary"], r["document"]) for r in rows]


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_xsum_every_format(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"data.{fmt}", XSUM_ROWS)
    assert get_task("xsum").load("validation", data=path) == expected_xsum(XSUM_ROWS)


def test_xsum_directory_with_mixed_formats():
    data = FIXTURES / "xsum"  # train.jsonl, validation.csv (multi-line quoted fields), test.json
    task = get_task("xsum")
    assert task.load("train", data=data) == expected_xsum(XSUM_ROWS)
    assert task.load("validation", data=data) == expected_xsum(XSUM_ROWS[:3])
    assert task.load("test", data=data) == expected_xsum(XSUM_ROWS[1:])


def test_sum_rows_without_id_use_the_row_index(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "id"} for r in XSUM_ROWS]
    examples = get_task("xsum").load("test", data=write_jsonl(tmp_path / "x.jsonl", rows))
    assert [e.id for e in examples] == ["0", "1", "2", "3"]


def test_bundled_task_reads_a_data_path_in_the_real_schema():
    assert get_task("synth-sum").load("train", data=FIXTURES / "xsum") == expected_xsum(XSUM_ROWS)


# ---------------------------------------------------------------- wmt schema

def expected_wmt(pairs):
    return [Example(str(i), "translate English to German: " + p["en"], p["de"], p["en"])
            for i, p in enumerate(pairs)]


@pytest.mark.parametrize("name", ["train.jsonl", "validation.csv", "translation_column.csv", "test.json"])
def test_wmt_committed_fixtures(name):
    # jsonl with a translation object, csv with en/de columns, csv with a JSON translation column,
    # json as {"version": ..., "data": [...]}
    assert get_task("wmt").load("test", data=FIXTURES / "wmt" / name) == expected_wmt(WMT_PAIRS)


def test_wmt_parquet_with_struct_column(tmp_path):
    path = write_parquet(tmp_path / "wmt.parquet", [{"translation": p} for p in WMT_PAIRS])
    assert get_task("wmt").load("validation", data=path) == expected_wmt(WMT_PAIRS)


def test_wmt_directory_layout():
    task = get_task("wmt")
    for split in SPLITS:
        assert task.load(split, data=FIXTURES / "wmt") == expected_wmt(WMT_PAIRS)


def test_wmt_train_keeps_only_the_first_pairs():
    capped = dataclasses.replace(get_task("wmt"), train_cap=2)
    assert capped.load("train", data=FIXTURES / "wmt") == expected_wmt(WMT_PAIRS[:2])
    assert len(capped.load("validation", data=FIXTURES / "wmt")) == len(WMT_PAIRS)  # eval splits are whole
    # train_fraction applies to the capped set: ceil(0.5 * 2) = 1
    assert len(capped.load("train", data=FIXTURES / "wmt", train_fraction=0.5)) == 1


# ---------------------------------------------------------------- gsm8k schema

@pytest.mark.parametrize("fmt", list(WRITERS))
def test_gsm8k_every_format(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"gsm.{fmt}", GSM_ROWS)
    examples = get_task("gsm8k").load("test", data=path)
    assert [(e.id, e.source, e.reference) for e in examples] == \
        [(str(i), r["question"], r["answer"]) for i, r in enumerate(GSM_ROWS)]


def test_gsm8k_prompt_is_eight_shot_chain_of_thought():
    ex = get_task("gsm8k").load("train", data=FIXTURES / "gsm8k")[0]
    assert len(GSM8K_EXEMPLARS) == 8
    assert ex.prompt.startswith("Q: There are 15 trees in the grove.")
    assert ex.prompt.count("Q: ") == 9 and ex.prompt.count("The answer is") == 8
    assert ex.prompt.endswith(f"\n\nQ: {GSM_ROWS[0]['question']}\nA:")
    for _, answer in GSM8K_EXEMPLARS:
        assert answer.endswith(".") and "The answer is" in answer


def test_synth_gsm_prompt_is_zero_shot():
    ex = get_task("synth-gsm").load("test", limit=1)[0]
    assert ex.prompt == f"Q: {ex.source}\nA:"


def test_gsm8k_directory_without_validation_names_the_expected_files():
    message = error_of("gsm8k", "validation", data=FIXTURES / "gsm8k")
    assert "validation.jsonl" in message and "validation.parquet" in message and "validation.csv" in message


def test_task_score_uses_the_task_metric():
    task = get_task("gsm8k")
    refs = [r["answer"] for r in GSM_ROWS]
    assert task.score(["The answer is 72.", "I think 10", "The answer is 1,851."], refs) == \
        {"accuracy": pytest.approx(200 / 3)}
    assert get_task("synth-mt").score(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100)
    assert get_task("xsum").score(["a b"], ["a b"])["rouge2"] == pytest.approx(100)


# ---------------------------------------------------------------- train_fraction and limit

@pytest.mark.parametrize("fraction, kept", [(1.0, 4), (0.5, 2), (0.3, 2), (0.01, 1), (0.76, 4)])
def test_train_fraction_keeps_ceil_and_at_least_one(fraction, kept):
    examples = get_task("xsum").load("train", data=FIXTURES / "xsum", train_fraction=fraction)
    assert examples == expected_xsum(XSUM_ROWS[:kept])


def test_train_fraction_only_touches_train():
    assert len(get_task("xsum").load("test", data=FIXTURES / "xsum", train_fraction=0.25)) == 3


def test_limit_keeps_first_n_of_any_split():
    task = get_task("xsum")
    assert task.load("test", data=FIXTURES / "xsum", limit=2) == expected_xsum(XSUM_ROWS[1:3])
    assert task.load("train", data=FIXTURES / "xsum", limit=10) == expected_xsum(XSUM_ROWS)
    assert len(get_task("synth-mt").load("train", limit=5)) == 5


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_train_fraction_outside_unit_interval(fraction):
    assert "(0, 1]" in error_of("synth-sum", "train", train_fraction=fraction)


@pytest.mark.parametrize("limit", [0, -3, 2.5])
def test_bad_limit(limit):
    assert "limit" in error_of("synth-sum", "train", limit=limit)


def test_unknown_split():
    assert "train, validation, test" in error_of("synth-sum", "dev")


# ---------------------------------------------------------------- bad input

def test_missing_path(tmp_path):
    message = error_of("xsum", "train", data=tmp_path / "nope.jsonl")
    assert "does not exist" in message and "nope.jsonl" in message


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(XSUM_ROWS[0])
    path.write_text(f"{good}\n\n{good}\n{{\"document\": \"unterminated\n", encoding="utf-8")
    message = error_of("xsum", "train", data=path)
    assert "bad.jsonl" in message and "line 4" in message and "malformed JSON" in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('[1, 2]\n', encoding="utf-8")
    assert "line 1" in error_of("xsum", "train", data=path)


def test_missing_column_is_named_with_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"document": "d", "headline": "s", "id": "1"}])
    message = error_of("xsum", "train", data=path)
    assert "'summary'" in message and "document, headline, id" in message and "row 1" in message


def test_missing_translation_column(tmp_path):
    path = write_csv(tmp_path / "w.csv", [{"english": "a", "german": "b"}])
    message = error_of("wmt", "train", data=path)
    assert "'translation'" in message and "english, german" in message


def test_translation_object_missing_a_language(tmp_path):
    path = write_jsonl(tmp_path / "w.jsonl", [{"translation": {"en": "a", "fr": "b"}}])
    message = error_of("wmt", "validation", data=path)
    assert "'de'" in message and "en, fr" in message


def test_translation_column_with_bad_json(tmp_path):
    path = write_csv(tmp_path / "w.csv", [{"translation": "{not json"}])
    assert "JSON object" in error_of("wmt", "validation", data=path)


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    assert "no rows" in error_of("xsum", "train", data=tmp_path / "empty.jsonl")
    (tmp_path / "empty.csv").write_text("document,summary,id\n", encoding="utf-8")
    assert "no rows" in error_of("xsum", "train", data=tmp_path / "empty.csv")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text("document\tsummary\n", encoding="utf-8")
    message = error_of("xsum", "train", data=path)
    assert "'.tsv'" in message and ".jsonl, .json, .csv, .parquet" in message


def test_wrong_type(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [XSUM_ROWS[0], {"document": 42, "summary": "s", "id": "7"}])
    message = error_of("xsum", "train", data=path)
    assert "'document' must be text" in message and "int" in message and "row 2" in message


def test_parquet_null_value(tmp_path):
    path = write_parquet(tmp_path / "g.parquet", [{"question": None, "answer": "#### 1"}])
    assert "'question' must be text" in error_of("gsm8k", "test", data=path)


def test_bad_id_type(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [dict(XSUM_ROWS[0], id=[1])])
    assert "'id'" in error_of("xsum", "train", data=path)


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [XSUM_ROWS[0], XSUM_ROWS[1], XSUM_ROWS[0]])
    message = error_of("xsum", "train", data=path)
    assert "duplicate id '38264402'" in message and "row 3" in message


def test_gsm_answer_without_final_number(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "It is 4."}])
    assert "####" in error_of("gsm8k", "test", data=path)


def test_csv_row_with_extra_fields(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("document,summary,id\na,b,1\nc,d,2,surplus\n", encoding="utf-8")
    assert "line 3" in error_of("xsum", "train", data=path)


def test_json_with_wrong_layout(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"rows": XSUM_ROWS}), encoding="utf-8")
    assert '{"data": [row objects]}' in error_of("xsum", "train", data=path)
    path.write_text("[{\"document\": ", encoding="utf-8")
    assert "malformed JSON" in error_of("xsum", "train", data=path)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes('{"document": "caf\xe9", "summary": "s"}\n'.encode("latin-1"))
    assert "UTF-8" in error_of("xsum", "train", data=path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    assert "parquet" in error_of("xsum", "train", data=path)


def test_directory_with_two_files_for_one_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", XSUM_ROWS)
    write_csv(tmp_path / "train.csv", XSUM_ROWS)
    assert "train.jsonl" in error_of("xsum", "train", data=tmp_path)


def test_hub_failure_says_to_pass_data(monkeypatch):
    """The Hub path is exercised with a stand-in ``datasets`` module: tests never use the network."""
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'wmt/wmt14' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    message = error_of("wmt", "train")
    assert "--data PATH" in message and "wmt/wmt14" in message
    assert calls == [(("wmt/wmt14", "de-en"), {"split": "train[:10000]"})]


def test_hub_rows_go_through_the_same_parser(monkeypatch):
    class FakeDataset:
        def to_list(self):
            return GSM_ROWS

    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=lambda *a, **k: FakeDataset()))
    assert [e.reference for e in get_task("gsm8k").load("test")] == [r["answer"] for r in GSM_ROWS]
