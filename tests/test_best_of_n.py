"""``xkd best-of-n`` and a reward model's score of predictions (``xkd eval --reward-model``), end to end through the
real CLI on tiny models: a tiny AVA-p reward model (two steps of ``xkd reward-model``, on the T5 tokenizer) picks
among samples of a policy on another tokenizer (tiny-gpt-uni, Unigram); the chosen answer is the argmax of scores
recomputed directly; N = 1 is plain sampling; eval, judge and the report take the answers as a model's greedy
ones; a score checked by hand (the model and head read with transformers and safetensors, not xkd's code); every
refusal, before torch."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, T5ForConditionalGeneration

from xkd_cli.cli.app import main
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import create_run
from xkd_cli.evaluation.best_of_n import choose
from xkd_cli.evaluation.reward_runs import ScorerFiles
from xkd_cli.evaluation.reward_scores import mean_interval, response_reward_of, reward_model_scores
from xkd_cli.experiments.report.collect import RunInfo, greedy_eval

TASK = "synth-sum-pref"
POLICY = "tiny-gpt-uni"  # a Unigram tokenizer: the reward model (BPE, T5) re-encodes its text
LIMIT = 3
N = 3
SAMPLING = ["--max-new-tokens", "8", "--device", "cpu", "--batch-size", "8"]
BON = f"bon{N}-{POLICY}-rm"


def cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny reward model ``rm`` (ava-p, 2 steps) and one best-of-3 run of the policy, shared by the tests."""
    root = tmp_path_factory.mktemp("bon") / "runs"
    assert cli("reward-model", "--model", "tiny-t5-small", "--task", TASK, "--max-steps", "2", "--batch-size", "4",
               "--max-input-len", "64", "--max-output-len", "16", "--train-fraction", "0.02", "--eval-pairs", "4",
               "--device", "cpu", "--name", "rm", "--runs-dir", root) == 0
    assert cli("best-of-n", "--model", POLICY, "--reward-model", "rm", "--n", N, "--task", TASK, "--limit", LIMIT,
               *SAMPLING, "--runs-dir", root, "--json") == 0
    return root


def answers(root, name=BON, folder="validation-greedy"):
    path = root / TASK / name / "eval" / folder / "predictions.jsonl"
    return [json.loads(line) for line in path.open()]


# -- pieces ------------------------------------------------------------------------------------------------------


def test_choose_takes_the_first_of_the_highest():
    assert choose([0.1, 0.3, -2.0]) == 1
    assert choose([0.5, 0.2, 0.5]) == 0
    assert choose([-1.0]) == 0


def test_mean_interval():
    assert mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert mean_interval([5.0]) == (5.0, 5.0)
    # 400 values, half 0 half 1: the mean's standard error is 0.5/20 = 0.025, so about 0.5 ± 0.049
    low, high = mean_interval([0.0, 1.0] * 200)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01) and high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert mean_interval([0.0, 1.0, 3.0], seed=1) == mean_interval([0.0, 1.0, 3.0], seed=1)  # deterministic


def test_which_reward_a_run_reads(tmp_path):
    def files(config):
        return ScorerFiles("rm", TASK, tmp_path, {"kind": "reward-model"}, config)
    assert response_reward_of(files({"reward": "sum"})) == "sum"
    assert response_reward_of(files({"reward": "last"})) == "last"
    assert response_reward_of(files({})) == "last"  # bt records no reward: μ at the last token
    with pytest.raises(XKDError, match="reward 'mean'"):
        response_reward_of(files({"reward": "mean"}))


# -- best-of-n ---------------------------------------------------------------------------------------------------


def test_chosen_is_the_argmax_of_the_reward_models_scores(workspace):
    rows = answers(workspace)
    assert [r["id"] for r in rows] and len(rows) == LIMIT
    for row in rows:
        assert len(row["samples"]) == N and len(row["rewards"]) == N
        assert row["chosen"] == int(np.argmax(row["rewards"])) and row["prediction"] == row["samples"][row["chosen"]]
        direct = reward_model_scores("rm", [row["prompt"]] * N, row["samples"], runs_root=workspace, task="synth-sum")
        assert direct == pytest.approx(row["rewards"], abs=1e-6)
    assert len({r for row in rows for r in row["rewards"]}) > 1  # the scores tell the samples apart

    summary = json.loads((workspace / TASK / BON / "best_of_n.json").read_text())
    assert summary["n"] == N and summary["examples"] == LIMIT and summary["reward_model"]["method"] == "ava-p"
    score = summary["reward_model_score"]
    assert score["first"]["mean"] == pytest.approx(np.mean([r["rewards"][0] for r in rows]))
    assert score["chosen"]["mean"] == pytest.approx(np.mean([max(r["rewards"]) for r in rows]))
    assert score["chosen"]["mean"] >= score["all"]["mean"] >= min(r for row in rows for r in row["rewards"])
    assert score["gain"]["mean"] == pytest.approx(score["chosen"]["mean"] - score["first"]["mean"])
    assert score["gain"]["low"] >= 0  # the chosen one never scores below the first
    record = json.loads((workspace / TASK / BON / "run.json").read_text())
    assert record["kind"] == "best-of-n" and record["status"] == "completed" and record["n"] == N


def test_rerun_resumes_and_a_larger_limit_adds_prompts(workspace, xkd):
    before = answers(workspace)
    again = xkd("best-of-n", "--model", POLICY, "--reward-model", "rm", "--n", N, "--task", TASK,
                "--limit", LIMIT + 1, *SAMPLING, "--runs-dir", workspace)
    assert again.code == 0, again.err
    for words in ("first sample", f"best of {N}", "RM score (last μ)", "rouge2", "gain", "new prompts sampled"):
        assert words in again.out, words
    after = answers(workspace)
    assert after[:LIMIT] == before and len(after) == LIMIT + 1  # only the new prompt was sampled
    other = xkd("best-of-n", "--model", POLICY, "--reward-model", "rm", "--n", N, "--task", TASK, "--limit", LIMIT,
                *SAMPLING, "--temperature", "0.5", "--runs-dir", workspace)
    assert other.code == 2 and "other settings (" in other.err and "temperature" in other.err


def test_n_1_is_plain_sampling(workspace, xkd):
    common = ["--task", TASK, "--limit", "2", "--temperature", "1.0", "--seed", "7", *SAMPLING, "--runs-dir", workspace]
    one = xkd("best-of-n", "--model", POLICY, "--reward-model", "rm", "--n", "1", "--name", "bon1", *common, "--json")
    assert one.code == 0, one.err
    plain = xkd("eval", "--model", POLICY, "--name", "plain", *common, "--json")
    assert plain.code == 0, plain.err
    rows, sampled = answers(workspace, "bon1"), answers(workspace, "plain", "validation-t1-p1-n1")
    assert [r["prediction"] for r in rows] == [r["prediction"] for r in sampled]
    assert all(r["chosen"] == 0 and r["samples"] == [r["prediction"]] for r in rows)
    found = one.json()
    assert found["reward_model_score"]["gain"]["mean"] == 0 and found["chosen_first"] == 2
    assert found["metric"]["chosen"] == plain.json()["metrics"]["rouge2"] == found["metric"]["first"]


# -- eval, judge and report take the answers ---------------------------------------------------------------------


def test_eval_scores_the_answers_as_they_are(workspace, xkd):
    rows = answers(workspace)[:LIMIT]
    result = xkd("eval", "--model", BON, "--task", TASK, "--limit", LIMIT, "--reward-model", "rm",
                 "--runs-dir", workspace, "--json")
    assert result.code == 0, result.err
    found = result.json()
    assert found["run"] == BON and found["decoding"] == f"best-of-{N} t1-p1" and found["examples"] == LIMIT
    assert found["reward_model"]["mean"] == pytest.approx(np.mean([max(r["rewards"]) for r in rows]), abs=1e-6)
    assert found["reward_model"]["low"] <= found["reward_model"]["mean"] <= found["reward_model"]["high"]
    assert answers(workspace)[:LIMIT] == rows  # nothing generated, nothing rewritten
    summary = json.loads((workspace / TASK / BON / "best_of_n.json").read_text())
    assert found["metrics"]["rouge2"] == pytest.approx(summary["metric"]["chosen"])
    # the report reads the answers' evaluation as a model's greedy one
    cell = greedy_eval(RunInfo(TASK, BON, workspace / TASK / BON, {}), workspace)
    assert cell["value"] == pytest.approx(found["metrics"]["rouge2"]) and cell["metric"] == "rouge2"

    table = xkd("eval", "--model", BON, "--task", TASK, "--limit", LIMIT, "--reward-model", "rm",
                "--runs-dir", workspace)
    assert "reward-model score (rm, ava-p, last; 95% interval)" in table.out

    answered = len(answers(workspace))
    every = xkd("eval", "--model", BON, "--task", TASK, "--runs-dir", workspace, "--json")  # no --limit: all answered
    assert every.code == 0 and every.json()["examples"] == answered, every.err
    for args, words in ((["--temperature", "1"], "samples nothing"), (["--split", "test"], "--split validation"),
                        (["--limit", "9"], f"pass --limit {answered}"), (["--name", "elsewhere"], "drop --name")):
        refused = xkd("eval", "--model", BON, "--task", TASK, "--runs-dir", workspace, *args)
        assert refused.code == 2 and words in refused.err and refused.err.count("\n") == 1, (args, refused.err)


# -- eval --reward-model: one score by hand ----------------------------------------------------------------------


def test_eval_reward_model_score_by_hand(workspace, xkd):
    result = xkd("eval", "--model", POLICY, "--task", TASK, "--limit", "2", "--reward-model", "rm", *SAMPLING,
                 "--runs-dir", workspace, "--json")
    assert result.code == 0, result.err
    found = result.json()["reward_model"]
    rows = [json.loads(line) for line in open(found["scores"])]
    predictions = [json.loads(line) for line in open(result.json()["predictions"])]
    assert [r["id"] for r in rows] == [p["id"] for p in predictions]
    assert found["mean"] == pytest.approx(np.mean([r["rewards"][0] for r in rows]))

    # By hand: the T5 reward model reads the prompt + eos, and the response + eos as decoder labels, each cut to
    # its run's lengths (64 and 16 tokens, the end token kept); μ is row 0 of the head's projection of the last
    # decoder state.
    rm = workspace / TASK / "rm"
    tok = AutoTokenizer.from_pretrained(rm / "model")
    model = T5ForConditionalGeneration.from_pretrained(rm / "model").eval()
    head = load_file(rm / "reward_head.safetensors")
    prompt, response = predictions[0]["prompt"], predictions[0]["prediction"]
    source = tok(prompt, add_special_tokens=False)["input_ids"][:63] + [tok.eos_token_id]
    target = tok(response, add_special_tokens=False)["input_ids"][:15] + [tok.eos_token_id]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([source]), labels=torch.tensor([target]), output_hidden_states=True)
    h = out.decoder_hidden_states[-1][0, -1]
    mu = float(head["proj.weight"][0] @ h + head["proj.bias"][0])
    assert rows[0]["rewards"][0] == pytest.approx(mu, abs=1e-5)
    assert not math.isclose(mu, float(head["proj.bias"][0]), abs_tol=1e-9)  # the state counts, not only the bias


def test_judge_takes_the_answers(workspace, xkd, server, key):
    # B: the policy's greedy answers (made by the test above, or by the judge itself when run alone)
    server.responder = lambda request: "[[1]]"
    result = xkd("judge", "--a", BON, "--b", POLICY, "--task", TASK, "--limit", LIMIT,
                 "--base-url", server.url, "--runs-dir", workspace, "--json")
    assert result.code == 0, result.err
    found = result.json()
    assert found["predictions"]["a"].endswith(f"{BON}/eval/validation-greedy/predictions.jsonl")
    items = found["items"]
    assert items == min(LIMIT, found["predictions_b"]) >= 2 and found["judged"] == items
    assert found["tie"] == items  # "[[1]]" in both orders: position bias, so a tie each
    shown = [m["content"] for r in server.requests for m in r["json"]["messages"]]
    judged = {json.loads(line)["id"] for line in open(found["predictions"]["b"])}
    chosen = [row["prediction"] for row in answers(workspace) if row["id"] in judged]
    assert len(chosen) == items and all(any(text in shown_text for shown_text in shown) for text in chosen)


# -- refusals, before torch --------------------------------------------------------------------------------------

PROBE = ("import json, sys\n"
         "from xkd_cli.cli.app import main\n"
         "for args in json.loads(sys.argv[1]):\n"
         "    sys.stderr.write('CASE\\n')\n"
         "    try:\n"
         "        main(args)\n"
         "    except SystemExit as exc:\n"
         "        sys.stderr.write(f'EXIT={exc.code}\\n')\n"
         "sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules))\n")


def test_refusals_before_torch(tmp_path):
    root = tmp_path / "runs"
    sft = create_run(root, TASK, "sft-run", kind="sft", config={}, seed=0)
    sft.update_record(status="completed")
    distilled = create_run(root, TASK, "sxkd", kind="distill", config={}, seed=0, extra={"method": "sxkd"})
    (distilled.path / "reward_head.safetensors").write_bytes(b"")
    create_run(root, "synth-mt", "twin", kind="reward-model", config={}, seed=0)
    create_run(root, "synth-sum", "twin", kind="reward-model", config={}, seed=0)
    bon = ["best-of-n", "--model", POLICY, "--task", TASK, "--runs-dir", str(root)]
    cases = [
        ([*bon, "--reward-model", "nope"], "--reward-model nope: no run of that name"),
        ([*bon, "--reward-model", "sft-run"], "is an sft run, not a reward model (has no reward head"),
        ([*bon, "--reward-model", "sxkd"], "is an sxkd run, not a reward model (its reward head models per-token"),
        ([*bon, "--reward-model", "twin"], "runs of that name exist under several tasks (synth-mt, synth-sum)"),
        ([*bon, "--reward-model", str(tmp_path / "missing")], "no run directory there"),
        ([*bon, "--reward-model", "rm", "--n", "0"], "--n must be at least 1, got 0"),
        ([*bon, "--reward-model", "rm", "--n", "4", "--temperature", "0"], "--temperature 0 is greedy"),
        (["best-of-n", "--model", POLICY, "--task", "nope", "--reward-model", "rm", "--runs-dir", str(root)], "nope"),
        (["best-of-n", "--task", TASK, "--reward-model", "rm", "--runs-dir", str(root)], "--model is required"),
        (["best-of-n", "--model", POLICY, "--task", TASK, "--runs-dir", str(root)], "--reward-model is required"),
        (["eval", "--model", POLICY, "--task", TASK, "--reward-model", "sft-run", "--runs-dir", str(root)],
         "is an sft run, not a reward model"),
    ]
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps([c[0] for c in cases])], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "XKD_RUNS_DIR": str(root)})
    assert proc.stderr.rstrip().endswith("TORCH=False"), proc.stderr
    outputs = proc.stderr.split("CASE\n")[1:]
    assert len(outputs) == len(cases), proc.stderr
    for (args, words), text in zip(cases, outputs):
        message, _, code = text.partition("EXIT=")
        assert code.startswith("2\n"), (args, text)
        assert message.startswith("error: ") and message.count("\n") == 1 and words in message, (args, message)


def test_help(xkd):
    shown = xkd("best-of-n", "--help")
    assert shown.code == 0
    for words in ("Examples", "--model", "--reward-model", "--n", "--task", "--temperature", "--top-p",
                  "--max-new-tokens", "--limit", "--seed", "--name", "--runs-dir", "--json", "--overwrite", "xkd judge"):
        assert words in shown.out, words
    assert "--reward-model" in xkd("eval", "--help").out
