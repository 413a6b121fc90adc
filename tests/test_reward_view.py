"""``xkd reward``: the per-token reward of an X-KD run, through the real CLI on a tiny sxkd run trained here; its
numbers against a direct computation (the saved head on the saved student, one example at a time), its views
(terminal, HTML, PNG), a given prompt and response, and the refusals before torch loads."""

import html
import json
import os
import subprocess
import sys

import pytest
import torch
from test_refusals import PROBE  # asks the process, at exit, whether torch was imported

from xkd_cli.cli.app import main
from xkd_cli.data.taskfile import get_task
from xkd_cli.models.forward import forward
from xkd_cli.models.loading import load_model
from xkd_cli.objectives import reference
from xkd_cli.objectives.reward import RewardHead
from xkd_cli.training.sources import EncodedSet

# A few steps at a high rate, so the head has moved away from its zero init and μ differs from token to token.
TRAIN = ["distill", "--method", "sxkd", "--task", "synth-mt", "--max-steps", "3", "--batch-size", "4",
         "--max-input-len", "48", "--max-output-len", "12", "--teacher", "tiny-t5-base", "--student", "tiny-t5-small",
         "--warmup-steps", "1", "--lr", "0.01", "--lam", "0.5", "--name", "sxkd", "--json"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A runs directory with one finished sxkd run (trained once for the whole module)."""
    root = tmp_path_factory.mktemp("reward-view") / "runs"
    try:
        main([*TRAIN, "--runs-dir", str(root)])
    except SystemExit as exc:
        assert not exc.code, "training the tiny sxkd run failed"
    return root


def view(xkd, root, *args):
    result = xkd("reward", *args, "--runs-dir", root)
    assert result.code == 0, result.err
    return result


def test_records_match_a_direct_computation(xkd, trained, tmp_path):
    out = tmp_path / "views"
    info = view(xkd, trained, "sxkd", "--task", "synth-mt", "--limit", "3", "--out", out, "--json").json()
    run = trained / "synth-mt" / "sxkd"
    assert info["scorer"]["method"] == "sxkd" and info["scorer"]["reward_position"] == "next"
    assert info["scorer"]["lam"] == 0.5 and info["responses"] == "reference" and len(info["examples"]) == 3

    student = load_model(str(run / "model"), for_training=False)
    head = RewardHead.load(run / "reward_head.safetensors")
    examples = get_task("synth-mt").load("validation", limit=3)
    data = EncodedSet(examples, student, max_input_len=48, max_output_len=12)
    assert len({len(t) for t in data.targets}) > 1  # rows of several lengths: padding could leak into a short one
    for k, record in enumerate(info["examples"]):
        tokens = record["tokens"]
        assert [t["id"] for t in tokens] == data.targets[k]  # one record per response token, eos included
        assert [t["position"] for t in tokens] == list(range(len(tokens)))
        assert "".join(t["token"] for t in tokens) == student.tokenizer.decode(data.targets[k])
        # By hand: the saved student and head on this example alone, in a batch of one.
        with torch.no_grad():
            logits, hidden = forward(student.model, data.batch([k]), hidden=True)
            mu, log_sigma = head(hidden)
        probs = logits[..., :len(student.tokenizer)].float().softmax(-1)
        q = reference.q_values(probs, data.batch([k]).labels)[0]
        expected_delta = [float(q[t] - q[t + 1]) for t in range(len(tokens) - 1)] + [None]
        assert [t["mu"] for t in tokens] == pytest.approx(mu[0].tolist(), abs=1e-5)
        assert [t["sigma"] for t in tokens] == pytest.approx(log_sigma[0].exp().tolist(), abs=1e-5)
        assert [t["q"] for t in tokens] == pytest.approx(q.tolist(), abs=1e-5)
        assert [t["delta"] for t in tokens[:-1]] == pytest.approx(expected_delta[:-1], abs=1e-5)
        assert tokens[-1]["delta"] is None
        assert all(t["sigma"] > 0 for t in tokens)
        assert record["reward_last"] == tokens[-1]["mu"]
        assert record["reward_sum"] == pytest.approx(sum(t["mu"] for t in tokens))
    mus = [t["mu"] for r in info["examples"] for t in r["tokens"]]
    assert max(mus) > min(mus)  # the head moved: the check above compares real numbers, not zeros
    # next: the last token reads no state, so it shows the head's biases, whatever the batch around it
    bias_mu, bias_log_sigma = head.proj.bias.tolist()
    assert all(r["tokens"][-1]["mu"] == pytest.approx(bias_mu, abs=1e-6) for r in info["examples"])
    assert all(r["tokens"][-1]["sigma"] == pytest.approx(torch.tensor(bias_log_sigma).exp().item(), abs=1e-6)
               for r in info["examples"])

    page = (out / "reward.html").read_text(encoding="utf-8")
    for token in (t for r in info["examples"] for t in r["tokens"]):
        assert html.escape(token["token"]) in page
    assert "</s>" not in page and "&lt;/s&gt;" in page  # eos is shown, as text
    assert "S-XKD" in page and "λ" in page and "reward position" in page and "<script" not in page
    for png in info["files"]["png"]:
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(info["files"]["png"]) == 3 and json.loads((out / "reward.json").read_text())["examples"] == info["examples"]


def test_terminal_view_and_default_place(xkd, trained):
    result = view(xkd, trained, "sxkd", "--task", "synth-mt", "--limit", "2", "--table")
    run = trained / "synth-mt" / "sxkd"
    assert "example 1 · id" in result.out and "example 2 · id" in result.out and "example 3" not in result.out
    assert "μ" in result.out and "δ" in result.out and "S-XKD" in result.out
    assert sorted(p.name for p in (run / "reward").iterdir()) == ["reward-1.png", "reward-2.png", "reward.html",
                                                                 "reward.json"]
    (run / "reward" / "reward-notes.png").write_bytes(b"not ours")
    view(xkd, trained, "sxkd", "--task", "synth-mt", "--limit", "1")  # a smaller view leaves no stale figure
    assert sorted(p.name for p in (run / "reward").glob("*.png")) == ["reward-1.png", "reward-notes.png"]


def test_a_given_prompt_and_response(xkd, trained, tmp_path):
    prompt, response = "translate English to German: <b>cats & dogs</b>", "<script>alert(1)</script> Katzen & Hunde"
    run_dir = trained / "synth-mt" / "sxkd"  # a run given by its path needs no --task
    info = view(xkd, trained, run_dir, "--prompt", prompt, "--response", response, "--out", tmp_path, "--json").json()
    (record,) = info["examples"]
    assert info["responses"] == "given" and record["prompt"] == prompt and record["response"] == response
    student = load_model(str(run_dir / "model"), for_training=False)
    ids = student.tokenizer(response, add_special_tokens=False)["input_ids"] + [student.tokenizer.eos_token_id]
    assert [t["id"] for t in record["tokens"]] == ids
    page = (tmp_path / "reward.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>cats" not in page and "&lt;b&gt;cats &amp; dogs&lt;/b&gt;" in page
    generated = view(xkd, trained, run_dir, "--prompt", prompt, "--generate", "--max-output-len", "5", "--out",
                     tmp_path, "--json").json()
    assert generated["responses"] == "generated" and 1 <= len(generated["examples"][0]["tokens"]) <= 5


def _fake_run(root, name, kind, method=None):
    run = root / "synth-mt" / name
    run.mkdir(parents=True)
    record = {"kind": kind, "status": "completed", "task": "synth-mt", "name": name, "method": method}
    (run / "run.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps({"task": "synth-mt", "method": method}))
    return run


@pytest.mark.parametrize("args, words", [
    (["skd"], "'skd' ({runs}/synth-mt/skd) is an skd run and has no reward head"),
    (["sft-tiny-t5-small"], "is an sft run and has no reward head"),
    (["{runs}/synth-mt/skd"], "pass an sxkd, gxkd or seqxkd run"),
    (["nope"], "no run 'nope' for task 'synth-mt'"),
    (["skd", "--response", "Hund"], "--response needs --prompt"),
    (["skd", "--prompt", "hi"], "--prompt needs --response TEXT, or --generate"),
    ([], "RUN is required"),
    (["skd", "--out", "{runs}/synth-mt/skd/run.json"], "is a file: pass a directory"),
])
def test_refused_before_torch(tmp_path, args, words):
    runs = tmp_path / "runs"
    _fake_run(runs, "skd", "distill", "skd")
    _fake_run(runs, "sft-tiny-t5-small", "sft")
    argv = ["reward", *[a.replace("{runs}", str(runs)) for a in args], "--task", "synth-mt"]
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "XKD_RUNS_DIR": str(runs)})
    assert proc.returncode == 2, proc.stderr
    assert words.replace("{runs}", str(runs)) in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert "TORCH=False" in proc.stderr, f"torch was imported before refusing: {argv}"


def test_help(xkd):
    result = xkd("reward", "--help")
    assert result.code == 0 and "RUN" in result.out and "Examples" in result.out and "--prompt" in result.out
