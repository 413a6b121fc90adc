"""`xkd judge` end to end through the real CLI and the real openai client, against a local OpenAI-compatible
server (tests/openai_server.py): both orders, win/tie/lose, retries, the SQLite cache, unparseable verdicts,
key hygiene; and unit tests of the verdict parser and the templates."""

import json
import re

import pytest

from openai_server import FakeOpenAI
from xkd_cli.core.errors import XKDError
from xkd_cli.evaluation.judge import combine, load_template, parse_template, parse_verdict
from xkd_cli.core.workspace import create_run

from conftest import SECRET
TASK = "synth-sum"
ANSWER = re.compile(r"\[The Start of Summary ([12])\]\n(.*?)\n\[The End of Summary \1\]", re.S)

# Six shared inputs: A's summary is longer on the first four, B's on the last two; one id only in A, one only in B.
SHARED = [(f"ex-{i}", f"document number {i} about things.") for i in range(6)]
PRED_A = {"ex-0": "a long summary of zero", "ex-1": "a long summary of one", "ex-2": "a long summary of two",
          "ex-3": "a long summary of three", "ex-4": "short", "ex-5": "brief", "only-a": "x"}
PRED_B = {"ex-0": "short", "ex-1": "brief", "ex-2": "tiny", "ex-3": "small",
          "ex-4": "a long summary of four", "ex-5": "a long summary of five", "only-b": "y"}


def make_run(root, name, predictions, split="validation"):
    run = create_run(root, TASK, name, kind="distill", config={}, seed=0)
    out = run.path / "eval" / f"{split}-greedy"
    out.mkdir(parents=True)
    sources = dict(SHARED) | {"only-a": "lonely a", "only-b": "lonely b"}
    with open(out / "predictions.jsonl", "w") as fh:
        for key, text in predictions.items():
            fh.write(json.dumps({"id": key, "source": sources[key], "prompt": "summarize: " + sources[key],
                                 "reference": "ref", "prediction": text}) + "\n")
    run.update_record(status="completed")
    return run


@pytest.fixture
def two_runs(runs):
    make_run(runs, "seqxkd", PRED_A)
    make_run(runs, "seqkd", PRED_B)
    return runs



def answers(request):
    """The two answers shown in a judge prompt: {"1": text, "2": text}."""
    prompt = request["messages"][0]["content"]
    return dict(ANSWER.findall(prompt))


def prefers_longer(request):
    shown = answers(request)
    return "Summary 1 covers more. [[1]]" if len(shown["1"]) > len(shown["2"]) else "Summary 2 is better. [[2]]"


def judge(xkd, server, *extra):
    return xkd("judge", "--a", "seqxkd", "--b", "seqkd", "--base-url", server.url, "--json", *extra)


def one_line_error(result):
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    return result.err


# -- the verdict parser and combining orders ---------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("[[1]]", "1"), ("[[2]]", "2"), ("[[tie]]", "tie"), ("[[TIE]]", "tie"), ("[[ 2 ]]", "2"),
    ("Summary 1 is more faithful.\n[[1]]", "1"), ("[[2]] because ... so [[2]]", "2"),
    ("", None), (None, None), ("Summary 1 is better.", None), ("[1]", None), ("[[A]]", None), ("[[12]]", None),
    ("[[3]]", None), ("[[1]] [[2]]", None), ("[[2]] ... no wait, [[1]]", None), ("[[tie]] or [[1]]", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_both_markers_prefer_neither():
    # FastChat's parser returns A when both appear; ours must not prefer either order.
    assert parse_verdict("[[1]] then [[2]]") is None and parse_verdict("[[2]] then [[1]]") is None


@pytest.mark.parametrize("a_first, b_first, expected", [
    ("a", "a", ("win", True)), ("b", "b", ("lose", True)), ("tie", "tie", ("tie", True)),
    ("a", "b", ("tie", False)), ("a", "tie", ("tie", False)), ("tie", "b", ("tie", False)),
    (None, "a", ("unparsed", None)), ("a", None, ("unparsed", None)),
])
def test_combine_orders(a_first, b_first, expected):
    assert combine(a_first, b_first) == expected


def test_built_in_templates_are_versioned_and_reference_free():
    for family in ("sum", "mt", "gsm"):
        template = load_template(family)
        assert template.name == f"judge/{family}" and template.version
        assert set(re.findall(r"\{(\w+)\}", template.body)) == {"source", "answer_1", "answer_2"}  # no reference
        rendered = template.render("the {answer_2} source", "first {source}", "second")
        assert "the {answer_2} source" in rendered and "first {source}" in rendered  # one-pass substitution


def test_template_file_checks():
    assert parse_template("version: 7\n---\n{source} {answer_1} {answer_2}\n", "t.txt").version == "7"
    with pytest.raises(XKDError, match="version"):
        parse_template("---\n{source} {answer_1} {answer_2}\n", "t.txt")
    with pytest.raises(XKDError, match=r"\{answer_2\}"):
        parse_template("version: 1\n---\n{source} {answer_1}\n", "t.txt")
    with pytest.raises(XKDError, match="---"):
        parse_template("version: 1\n{source} {answer_1} {answer_2}\n", "t.txt")


# -- end to end ---------------------------------------------------------------------------------


def test_help(xkd):
    result = xkd("judge", "--help")
    assert result.code == 0
    for word in ("Examples", "--a", "--b", "--judge-model", "--base-url", "--api-key-env", "--limit", "--split",
                 "--temperature", "--max-tokens", "--concurrency", "--max-retries", "--template", "--json"):
        assert word in result.out, word


def test_position_biased_judge_gives_all_ties(xkd, two_runs, key):
    with FakeOpenAI(responder=lambda req: "The first one. [[1]]") as server:
        result = judge(xkd, server)
    assert result.code == 0, result.err
    info = result.json()
    assert (info["items"], info["shared"], info["predictions_a"], info["predictions_b"]) == (6, 6, 7, 7)
    assert (info["win"], info["tie"], info["lose"], info["unparsed"]) == (0, 6, 0, 0)
    assert (info["win_rate"], info["tie_rate"], info["lose_rate"]) == (0.0, 100.0, 0.0)
    assert info["inconsistency_rate"] == 100.0 and info["inconsistent"] == 6
    assert server.count == 12 and info["requests"] == 12  # both orders of each shared input, nothing else
    # Both orders were really shown: A's answer first in one, second in the other.
    shown = [answers(r["json"]) for r in server.requests]
    for ex_id, _ in SHARED:
        firsts = {s["1"] for s in shown if {s["1"], s["2"]} == {PRED_A[ex_id], PRED_B[ex_id]}}
        assert firsts == {PRED_A[ex_id], PRED_B[ex_id]}
    assert all(r["json"]["temperature"] == 0 and r["json"]["max_tokens"] == 256 for r in server.requests)
    assert all("ref" not in r["json"]["messages"][0]["content"].split("[The Start of Document]")[1]
               for r in server.requests)  # no reference answer shown


def test_length_biased_judge_wins_and_losses(xkd, two_runs, key):
    server = FakeOpenAI(responder=prefers_longer).start()
    result = judge(xkd, server, "--concurrency", "3")
    assert result.code == 0, result.err
    info = result.json()
    assert (info["win"], info["tie"], info["lose"], info["unparsed"], info["inconsistent"]) == (4, 0, 2, 0, 0)
    assert (info["win_rate"], info["tie_rate"], info["lose_rate"], info["inconsistency_rate"]) == \
        (66.67, 0.0, 33.33, 0.0)
    run = two_runs / TASK / "judge-seqxkd-vs-seqkd"
    assert info["path"] == str(run) and info["verdicts"] == str(run / "verdicts.jsonl")
    rows = [json.loads(line) for line in (run / "verdicts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [k for k, _ in SHARED]  # input order, shared ids only
    assert [r["verdict"] for r in rows] == ["win"] * 4 + ["lose"] * 2
    first = rows[0]
    assert first["prediction_a"] == PRED_A["ex-0"] and first["prediction_b"] == PRED_B["ex-0"]
    assert first["consistent"] is True and set(first["orders"]) == {"a_first", "b_first"}
    assert first["orders"]["a_first"]["marker"] == "1" and first["orders"]["b_first"]["marker"] == "2"
    assert first["orders"]["a_first"]["winner"] == first["orders"]["b_first"]["winner"] == "a"
    saved = json.loads((run / "results.json").read_text())
    assert saved["win_rate"] == 66.67 and saved["judge"]["template"] == "judge/sum"
    record = json.loads((run / "run.json").read_text())
    assert (record["kind"], record["status"]) == ("judge", "completed")

    # The table for people (same settings: the finished verdicts are reused).
    table = xkd("judge", "--a", "seqxkd", "--b", "seqkd", "--base-url", server.url)
    server.stop()
    assert table.code == 0, table.err
    assert server.count == 12
    assert "66.67%" in table.out and "33.33%" in table.out and "verdicts:" in table.out


def test_429_and_500_are_retried(xkd, two_runs, key):
    with FakeOpenAI(responder=prefers_longer) as server:
        server.fail(429, retry_after="0")
        server.fail(500, retry_after="0")
        server.fail(503, retry_after="0")
        result = judge(xkd, server, "--concurrency", "1", "--limit", "2")
    assert result.code == 0, result.err
    info = result.json()
    assert server.statuses()[:3] == [429, 500, 503] and server.count == 4 + 3
    assert (info["requests"], info["retries"], info["items"]) == (7, 3, 2)
    assert (info["win"], info["lose"]) == (2, 0)


def test_rerun_makes_no_requests(xkd, two_runs, key):
    with FakeOpenAI(responder=prefers_longer) as server:
        first = judge(xkd, server)
        assert first.code == 0, first.err
        assert server.count == 12
        verdicts = (two_runs / TASK / "judge-seqxkd-vs-seqkd" / "verdicts.jsonl").read_bytes()
        again = judge(xkd, server)  # resumes: every verdict is done
        assert again.code == 0, again.err
        fresh = judge(xkd, server, "--overwrite")  # a fresh results run: every answer comes from the cache
        assert fresh.code == 0, fresh.err
        other = judge(xkd, server, "--name", "judge-copy")
        assert other.code == 0, other.err
        assert server.count == 12
    assert fresh.json()["cached"] == 12 and fresh.json()["requests"] == 0
    for result in (again, fresh, other):
        assert {k: result.json()[k] for k in ("win", "tie", "lose")} == {"win": 4, "tie": 0, "lose": 2}
    assert (two_runs / TASK / "judge-seqxkd-vs-seqkd" / "verdicts.jsonl").read_bytes() == verdicts
    assert (two_runs / "judge_cache.sqlite").is_file()


def test_other_settings_are_refused_and_decoding_is_in_the_cache_key(xkd, two_runs, key):
    with FakeOpenAI(responder=prefers_longer) as server:
        assert judge(xkd, server, "--limit", "2").code == 0
        refused = judge(xkd, server, "--limit", "2", "--max-tokens", "100")
        assert "max_tokens" in one_line_error(refused) and "--overwrite" in refused.err
        assert server.count == 4
        other = judge(xkd, server, "--limit", "2", "--max-tokens", "100", "--overwrite")
        assert other.code == 0, other.err
        assert server.count == 8 and all(r["json"]["max_tokens"] == 100 for r in server.requests[4:])


def test_template_version_is_part_of_the_cache_key(xkd, two_runs, key, tmp_path):
    body = load_template("sum").body
    v1, v2 = tmp_path / "v1.txt", tmp_path / "v2.txt"
    v1.write_text("version: 1-test\n---\n" + body)
    v2.write_text("version: 2-test\n---\n" + body)  # same prompt, new version
    with FakeOpenAI(responder=prefers_longer) as server:
        assert judge(xkd, server, "--template", v1, "--limit", "3").code == 0
        assert server.count == 6
        changed = judge(xkd, server, "--template", v2, "--limit", "3", "--overwrite")
        assert changed.code == 0, changed.err
        assert server.count == 12 and changed.json()["judge"]["template_version"] == "2-test"
        back = judge(xkd, server, "--template", v1, "--limit", "3", "--overwrite")
        assert back.code == 0 and server.count == 12


def test_garbage_is_reasked_then_unparsed_not_counted(xkd, two_runs, key):
    def responder(req):
        shown = answers(req)
        if PRED_A["ex-2"] in shown.values():
            return "Both summaries have merits."
        return prefers_longer(req)

    with FakeOpenAI(responder=responder) as server:
        result = judge(xkd, server, "--concurrency", "2")
        assert result.code == 0, result.err
        info = result.json()
        # ex-2: both orders asked 1 + 2 times; the others once each.
        assert server.count == 5 * 2 + 2 * 3 and info["reasks"] == 4
        assert (info["win"], info["tie"], info["lose"], info["unparsed"]) == (3, 0, 2, 1)
        assert (info["judged"], info["win_rate"], info["lose_rate"]) == (5, 60.0, 40.0)
        reasked = [r["json"]["messages"] for r in server.requests if len(r["json"]["messages"]) > 1]
        assert len(reasked) == 4 and {len(m) for m in reasked} == {3, 5}
        assert reasked[0][1] == {"role": "assistant", "content": "Both summaries have merits."}
        assert "[[1]]" in reasked[0][2]["content"] and reasked[0][2]["role"] == "user"
        rows = [json.loads(line) for line in open(info["verdicts"])]
        bad = next(r for r in rows if r["id"] == "ex-2")
        assert bad["verdict"] == "unparsed" and bad["consistent"] is None
        assert bad["orders"]["a_first"] == {"winner": None, "marker": None, "attempts": 3,
                                            "judge": "Both summaries have merits.", "problem": "no verdict marker"}
        # Unparseable answers are answers too: a fresh results run replays them from the cache.
        again = judge(xkd, server, "--overwrite")
        assert again.code == 0 and server.count == 16 and again.json()["unparsed"] == 1


def test_both_markers_are_unparsed(xkd, two_runs, key):
    with FakeOpenAI(responder=lambda req: "I prefer [[1]]. On reflection [[2]].") as server:
        result = judge(xkd, server, "--limit", "2", "--parse-retries", "1")
    assert result.code == 0, result.err
    info = result.json()
    assert (info["win"], info["tie"], info["lose"], info["unparsed"]) == (0, 0, 0, 2)
    assert info["win_rate"] is None and info["unparsed_rate"] == 100.0
    assert server.count == 2 * 2 * 2
    rows = [json.loads(line) for line in open(info["verdicts"])]
    assert rows[0]["orders"]["b_first"]["problem"] == "several different verdict markers"


def test_key_never_written_or_printed(xkd, two_runs, key):
    with FakeOpenAI(responder=prefers_longer) as server:
        result = judge(xkd, server)
        table = xkd("judge", "--a", "seqxkd", "--b", "seqkd", "--base-url", server.url)
        assert all(r["headers"].get("authorization") == f"Bearer {SECRET}" for r in server.requests)
        server.fail(401)
        rejected = judge(xkd, server, "--name", "other", "--max-tokens", "99")  # not cached: asks the API
    assert result.code == 0 and table.code == 0 and rejected.code == 2
    for output in (result, table, rejected):
        assert SECRET not in output.out and SECRET not in output.err
    for path in two_runs.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_no_key_is_one_line_exit_2(xkd, two_runs, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    before = sorted(p.name for p in (two_runs / TASK).iterdir())
    with FakeOpenAI() as server:
        result = judge(xkd, server)
        assert server.count == 0
    err = one_line_error(result)
    assert "OPENAI_API_KEY" in err and "--api-key-env" in err
    assert sorted(p.name for p in (two_runs / TASK).iterdir()) == before  # nothing written
    monkeypatch.setenv("JUDGE_KEY", SECRET)
    with FakeOpenAI(responder=prefers_longer) as server:
        other = judge(xkd, server, "--api-key-env", "JUDGE_KEY", "--limit", "1")
    assert other.code == 0, other.err


def test_401_fails_at_once_without_retries(xkd, two_runs, key):
    with FakeOpenAI(responder=prefers_longer) as server:
        server.fail(401)
        result = judge(xkd, server, "--concurrency", "1")
        assert server.count == 1
    err = one_line_error(result)
    assert "401" in err and "OPENAI_API_KEY" in err and SECRET not in err


def test_bad_inputs_are_one_line_errors(xkd, two_runs, key):
    with FakeOpenAI() as server:
        assert "--a and --b" in one_line_error(xkd("judge", "--a", "seqxkd", "--base-url", server.url))
        same = xkd("judge", "--a", "seqkd", "--b", "seqkd", "--base-url", server.url)
        assert "two different runs" in one_line_error(same)
        assert "--temperature" in one_line_error(judge(xkd, server, "--temperature", "-1"))
        assert "--template" in one_line_error(judge(xkd, server, "--template", two_runs / "nope.txt"))
        unknown = xkd("judge", "--a", "seqxkd", "--b", "nope", "--base-url", server.url)
        assert unknown.code == 2 and unknown.err.splitlines()[-1].startswith("error: unknown model 'nope'")
        assert server.count == 0


def test_no_shared_ids_is_an_error(xkd, runs, key):
    make_run(runs, "seqxkd", {"only-a": "x"})
    make_run(runs, "seqkd", {"only-b": "y"})
    with FakeOpenAI() as server:
        err = one_line_error(judge(xkd, server))
        assert server.count == 0
    assert "share no input" in err


def test_a_run_without_predictions_is_evaluated_first(xkd, runs, key):
    """--a names a built-in tiny model with no eval yet: `xkd eval`'s engine runs first (limit 2, no training)."""
    make_run(runs, "seqkd", PRED_B)
    from xkd_cli.data.taskfile import get_task

    ids = [e.id for e in get_task(TASK).load("validation", limit=2)]
    make_run_ids = {i: f"summary {n}" for n, i in enumerate(ids)}
    path = runs / TASK / "seqkd" / "eval" / "validation-greedy" / "predictions.jsonl"
    examples = {e.id: e for e in get_task(TASK).load("validation", limit=2)}
    path.write_text("".join(json.dumps({"id": i, "source": examples[i].source, "prompt": examples[i].prompt,
                                        "reference": examples[i].reference, "prediction": t}) + "\n"
                            for i, t in make_run_ids.items()))
    with FakeOpenAI(responder=lambda req: "[[tie]]") as server:
        result = xkd("judge", "--a", "tiny-t5-small", "--b", "seqkd", "--task", TASK, "--limit", "2",
                     "--base-url", server.url, "--json")
    assert result.code == 0, result.err
    info = result.json()
    assert info["items"] == 2 and info["tie"] == 2 and info["inconsistency_rate"] == 0.0
    assert info["predictions"]["a"] == str(runs / TASK / "eval-tiny-t5-small" / "eval" / "validation-greedy"
                                           / "predictions.jsonl")
    assert info["path"] == str(runs / TASK / "judge-tiny-t5-small-vs-seqkd")
