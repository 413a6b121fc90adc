"""`xkd gen-teacher` end to end through the real CLI: white-box (tiny local teacher) and black-box (a real local
OpenAI-compatible server), resuming, refusing mixed settings, key hygiene; and `load_teacher_data`."""

import json

import pytest

from openai_server import FakeOpenAI
from xkd_cli.core.errors import XKDError
from xkd_cli.training.gen_teacher import load_teacher_data
from xkd_cli.models.loading import save_model
from xkd_cli.models.zoo import build_tiny_model
from xkd_cli.data.taskfile import get_task

from conftest import SECRET
WHITE = ["--teacher", "tiny-t5-small", "--task", "synth-sum", "--limit", "4", "--num-samples", "2",
         "--max-new-tokens", "8", "--batch-size", "3"]


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def train_ids(n):
    return [e.id for e in get_task("synth-sum").load("train", limit=n)]


def one_line_error(result):
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1
    return result.err


def test_help(xkd):
    result = xkd("gen-teacher", "--help")
    assert result.code == 0
    for word in ("Examples", "--recipe", "--json", "--api-base", "--num-samples", "--concurrency", "--max-retries"):
        assert word in result.out


def test_white_box_end_to_end_resumes_and_refuses_other_settings(xkd, runs):
    result = xkd("gen-teacher", *WHITE, "--json")
    assert result.code == 0, result.err
    info = result.json()
    run = runs / "synth-sum" / "teacher-samples"
    samples = run / "samples.jsonl"
    assert info["path"] == str(run) and info["samples"] == str(samples)
    assert (info["rows"], info["new_rows"], info["mode"]) == (8, 8, "white-box")
    rows = rows_of(samples)
    ids = train_ids(4)
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted((i, k) for i in ids for k in range(2))
    examples = {e.id: e for e in get_task("synth-sum").load("train", limit=4)}
    for r in rows:
        assert r["prompt"] == examples[r["id"]].prompt and r["source"] == examples[r["id"]].source
        assert isinstance(r["response"], str)
        assert (r["task"], r["teacher"], r["mode"]) == ("synth-sum", "tiny-t5-small", "white-box")
        assert (r["temperature"], r["top_p"], r["max_new_tokens"]) == (1.0, 0.95, 8)
    record = json.loads((run / "run.json").read_text())
    assert (record["kind"], record["status"], record["mode"], record["teacher"]) == \
        ("gen-teacher", "completed", "white-box", "tiny-t5-small")
    assert (record["num_samples"], record["limit"], record["tokenizer"]) == (2, 4, "tiny-t5-small")
    assert record["decoding"] == {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.95}

    # A re-run adds nothing.
    before = samples.read_bytes()
    again = xkd("gen-teacher", *WHITE, "--json")
    assert again.code == 0, again.err
    assert again.json()["new_rows"] == 0 and samples.read_bytes() == before

    # Killed mid-write: three full lines and a torn fourth. The re-run completes to exactly 8 unique rows.
    lines = before.decode().splitlines(keepends=True)
    samples.write_text("".join(lines[:3]) + lines[3][:25])
    resumed = xkd("gen-teacher", *WHITE, "--json")
    assert resumed.code == 0, resumed.err
    assert resumed.json()["new_rows"] == 5 and resumed.json()["rows"] == 8
    text = samples.read_text()
    assert text.startswith("".join(lines[:3]))  # the finished rows were kept as they were
    rows = rows_of(samples)
    assert len(rows) == 8 and len({(r["id"], r["sample"]) for r in rows}) == 8

    # Other settings are refused (naming what differs) unless --overwrite.
    changed = xkd("gen-teacher", *WHITE, "--max-new-tokens", "6", "--temperature", "0.7")
    err = one_line_error(changed)
    assert "max_new_tokens" in err and "temperature" in err and "--overwrite" in err
    assert samples.read_text() == text
    replaced = xkd("gen-teacher", *WHITE, "--max-new-tokens", "6", "--overwrite", "--json")
    assert replaced.code == 0, replaced.err
    assert {r["max_new_tokens"] for r in rows_of(samples)} == {6} and len(rows_of(samples)) == 8

    data = load_teacher_data(None, task="synth-sum", runs_root=runs)
    assert len(data.rows) == 8 and data.path == samples and data.record["mode"] == "white-box"
    assert data.num_samples == 2


def test_no_teacher_run_is_a_clear_error(xkd, runs):
    err = one_line_error(xkd("gen-teacher", "--task", "synth-sum", "--limit", "2"))
    assert "xkd sft --task synth-sum --role teacher" in err and "--teacher" in err
    assert not (runs / "synth-sum").exists()


def _fake_sft_run(runs, name, role, finished):
    path = runs / "synth-sum" / name
    save_model(build_tiny_model("tiny-t5-small"), path / "model")
    (path / "run.json").write_text(json.dumps({"kind": "sft", "task": "synth-sum", "name": name, "role": role,
                                               "status": "completed", "finished": finished}))


def test_default_teacher_is_the_latest_sft_teacher_run(xkd, runs):
    _fake_sft_run(runs, "old-teacher", "teacher", "2024-01-01T00:00:00+00:00")
    _fake_sft_run(runs, "new-teacher", "teacher", "2024-02-01T00:00:00+00:00")
    _fake_sft_run(runs, "a-student", "student", "2024-03-01T00:00:00+00:00")
    result = xkd("gen-teacher", "--task", "synth-sum", "--limit", "2", "--max-new-tokens", "4", "--json")
    assert result.code == 0, result.err
    assert result.json()["teacher"] == "new-teacher"
    record = json.loads((runs / "synth-sum" / "teacher-samples" / "run.json").read_text())
    assert record["teacher"] == "new-teacher" and record["teacher_location"].endswith("new-teacher/model")


# ----------------------------------------------------------------------------------------------- black-box

BLACK = ["--task", "synth-sum", "--limit", "4", "--num-samples", "2", "--max-new-tokens", "16", "--api-model", "fake"]




def assert_no_secret(runs, *outputs):
    for text in outputs:
        assert SECRET not in text
    files = [p for p in runs.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path


def test_black_box_retries_resumes_and_never_leaks_the_key(xkd, runs, server, key):
    server.fail(429, retry_after="0")
    server.fail(500, retry_after="0")
    result = xkd("gen-teacher", *BLACK, "--api-base", server.url, "--json")
    assert result.code == 0, result.err
    info = result.json()
    assert (info["rows"], info["mode"], info["teacher"], info["retries"]) == (8, "black-box", "fake", 2)
    assert server.count == 8 + 2 and sorted(server.statuses())[-2:] == [429, 500]
    run = runs / "synth-sum" / "teacher-samples"
    samples = run / "samples.jsonl"
    rows = rows_of(samples)
    ids = train_ids(4)
    assert sorted((r["id"], r["sample"]) for r in rows) == sorted((i, k) for i in ids for k in range(2))
    for r in rows:
        assert r["response"] == f"answer to: {r['prompt'][:60]}" and r["mode"] == "black-box"
    for request in server.requests:
        body = request["json"]
        assert body["model"] == "fake" and body["messages"][0]["role"] == "user"
        assert (body["temperature"], body["top_p"], body["max_tokens"]) == (1.0, 0.95, 16)
        assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    record = json.loads((run / "run.json").read_text())
    assert (record["mode"], record["api_model"], record["tokenizer"], record["api_base"]) == \
        ("black-box", "fake", "api", server.url)
    assert_no_secret(runs, result.out, result.err)

    # A re-run asks nothing; a torn file is completed with exactly the missing requests.
    again = xkd("gen-teacher", *BLACK, "--api-base", server.url)
    assert again.code == 0, again.err
    assert server.count == 10 and "fake" in again.out
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:5]) + lines[5][:10])
    resumed = xkd("gen-teacher", *BLACK, "--api-base", server.url, "--json")
    assert resumed.code == 0, resumed.err
    assert server.count == 13 and resumed.json()["new_rows"] == 3
    rows = rows_of(samples)
    assert len(rows) == 8 and len({(r["id"], r["sample"]) for r in rows}) == 8
    assert_no_secret(runs, again.out, again.err, resumed.out, resumed.err)

    # Loading it back for distillation.
    data = load_teacher_data("teacher-samples", task="synth-sum", runs_root=runs)
    assert len(data.rows) == 8 and data.record["mode"] == "black-box"


@pytest.mark.parametrize("status,words", [(401, ["$OPENAI_API_KEY", "--api-key-env"]), (400, ["HTTP 400"])])
def test_black_box_client_errors_fail_fast(xkd, runs, server, key, status, words):
    server.fail(status)
    err = one_line_error(xkd("gen-teacher", *BLACK, "--api-base", server.url, "--concurrency", "1"))
    assert all(w in err for w in words)
    assert server.count == 1  # no retry
    assert_no_secret(runs, err)
    assert rows_of(runs / "synth-sum" / "teacher-samples" / "samples.jsonl") == []


def test_black_box_gives_up_after_max_retries(xkd, runs, server, key):
    server.fail(503, retry_after="0", times=5)
    err = one_line_error(xkd("gen-teacher", *BLACK, "--api-base", server.url, "--concurrency", "1",
                             "--max-retries", "2"))
    assert "after 2 retries" in err and "HTTP 503" in err and server.count == 3


def test_black_box_needs_key_and_model(xkd, runs, server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    err = one_line_error(xkd("gen-teacher", *BLACK, "--api-base", server.url))
    assert "$OPENAI_API_KEY" in err
    err = one_line_error(xkd("gen-teacher", "--task", "synth-sum", "--api-base", server.url))
    assert "--api-model" in err
    assert server.count == 0 and not (runs / "synth-sum").exists()
    # The key may live in another variable.
    monkeypatch.setenv("TEACHER_KEY", SECRET)
    result = xkd("gen-teacher", *BLACK, "--api-base", server.url, "--api-key-env", "TEACHER_KEY")
    assert result.code == 0, result.err
    assert server.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert_no_secret(runs, result.out, result.err)


def test_black_box_concurrency_is_bounded(xkd, runs, key):
    with FakeOpenAI(delay=0.1) as server:
        result = xkd("gen-teacher", *BLACK, "--num-samples", "3", "--api-base", server.url, "--concurrency", "3")
    assert result.code == 0, result.err
    assert server.count == 12 and server.max_in_flight == 3


# ----------------------------------------------------------------------------------------------- load_teacher_data


def _samples_run(runs, name, *, task="synth-sum", finished="2024-01-01T00:00:00+00:00", rows=None, status="completed"):
    path = runs / "synth-sum" / name
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"kind": "gen-teacher", "task": task, "status": status,
                                               "finished": finished}))
    rows = rows if rows is not None else [{"id": f"x{i}", "sample": 0, "prompt": "p", "response": f"{name}-{i}",
                                           "task": task} for i in range(3)]
    (path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path / "samples.jsonl"


def test_load_teacher_data_by_run_path_and_default(runs, tmp_path):
    _samples_run(runs, "older", finished="2024-01-01T00:00:00+00:00")
    newer = _samples_run(runs, "newer", finished="2024-06-01T00:00:00+00:00")
    latest = load_teacher_data(None, task="synth-sum", runs_root=runs)
    assert latest.path == newer and latest.rows[0]["response"] == "newer-0" and latest.record["kind"] == "gen-teacher"
    by_run = load_teacher_data("older", task="synth-sum", runs_root=runs)
    assert [r["response"] for r in by_run.rows] == ["older-0", "older-1", "older-2"]
    loose = tmp_path / "mine.jsonl"
    loose.write_text('{"id": "a", "sample": 0, "prompt": "p", "response": "r"}\n\n{"id": "a", "sample": 1, '
                     '"prompt": "p", "response": "s"}\n')
    by_path = load_teacher_data(str(loose), task="synth-sum", runs_root=runs)
    assert len(by_path.rows) == 2 and by_path.record == {} and by_path.num_samples == 2
    assert load_teacher_data(str(newer.parent), task="synth-sum", runs_root=runs).path == newer


def test_load_teacher_data_errors(runs, tmp_path):
    with pytest.raises(XKDError, match="no teacher samples for task synth-sum.*xkd gen-teacher.*--teacher-data"):
        load_teacher_data(None, task="synth-sum", runs_root=runs)
    with pytest.raises(XKDError, match="no gen-teacher run 'nope'"):
        load_teacher_data("nope", task="synth-sum", runs_root=runs)
    _samples_run(runs, "unfinished", status="running")
    with pytest.raises(XKDError, match="incomplete"):
        load_teacher_data("unfinished", task="synth-sum", runs_root=runs)

    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"id": "a", "sample": 0, "prompt": "p", "response": "r", "task": "synth-mt"}\n')
    with pytest.raises(XKDError) as err:
        load_teacher_data(str(wrong), task="synth-sum", runs_root=runs)
    assert "synth-mt" in str(err.value) and "synth-sum" in str(err.value)
    _samples_run(runs, "other-task", task="synth-mt")
    with pytest.raises(XKDError, match="synth-mt.*synth-sum"):
        load_teacher_data("other-task", task="synth-sum", runs_root=runs)

    bad = tmp_path / "bad.jsonl"
    good = '{"id": "a", "sample": 0, "prompt": "p", "response": "r"}\n'
    bad.write_text(good + '{"id": "b", "sample": 0, "prompt": "p", "response": "r"}\n' + '{"id": "c", "sample": 0, "prompt": "p"}\n')
    with pytest.raises(XKDError, match="line 3 lacks 'response'"):
        load_teacher_data(str(bad), task="synth-sum", runs_root=runs)
    bad.write_text(good + '{"id": "b", "sample": "zero", "prompt": "p", "response": "r"}\n')
    with pytest.raises(XKDError, match="line 2"):
        load_teacher_data(str(bad), task="synth-sum", runs_root=runs)
    bad.write_text(good + good)
    with pytest.raises(XKDError, match="line 2 repeats id 'a' sample 0 .also line 1"):
        load_teacher_data(str(bad), task="synth-sum", runs_root=runs)
    bad.write_text(good + '{"id": "b", "sample"\n')
    with pytest.raises(XKDError, match="line 2 is not valid JSON"):
        load_teacher_data(str(bad), task="synth-sum", runs_root=runs)
    bad.write_text("")
    with pytest.raises(XKDError, match="no teacher samples"):
        load_teacher_data(str(bad), task="synth-sum", runs_root=runs)
