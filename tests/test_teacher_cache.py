"""The teacher cache (``xkd distill --teacher-cache full|topk``): exact in full mode, reused across epochs
and runs, never reused for another teacher / length / tokenizer, never used for on-policy batches,
and safe against damaged files; the top-k bucket divergence checked by hand and against the full one."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from xkd_cli.objectives import divergences as losses
from xkd_cli.models.zoo import build_tiny_model
from xkd_cli.training.sources import EncodedSet
from xkd_cli.data.taskfile import get_task
from xkd_cli.objectives.teacher_cache import CACHE_DIRNAME, KEY_FILE, cache_fields, fields_key, row_tokens

T5_PAIR = ["--teacher", "tiny-t5-base", "--student", "tiny-t5-small"]
GPT_PAIR = ["--teacher", "tiny-gpt-large", "--student", "tiny-gpt-small"]
# 6 training examples; batch 1 × accumulation 2 = 3 steps per epoch, so 9 steps are 3 epochs.
EPOCHS_3 = ["--task", "synth-mt", "--method", "skd", "--train-fraction", "0.003", "--batch-size", "1",
            "--grad-accum", "2", "--max-steps", "9", "--max-input-len", "48", "--max-output-len", "12",
            "--log-every", "1", "--warmup-steps", "1", "--device", "cpu", "--json"]


def weights(runs, name):
    return load_file(runs / "synth-mt" / name / "model" / "model.safetensors")


def log(runs, name):
    return [json.loads(line) for line in (runs / "synth-mt" / name / "train_log.jsonl").read_text().splitlines()]


def entries(runs):
    return sorted((runs / "synth-mt" / CACHE_DIRNAME).rglob("*.safetensors"))


def distill(xkd, *args):
    result = xkd("distill", *args)
    assert result.code == 0, result.err
    return result.json()


# -- full mode: exact, reused across epochs and runs -----------------------------------------------------


def test_full_cache_is_exact_and_serves_later_epochs_and_later_runs(xkd, runs):
    plain = distill(xkd, *T5_PAIR, *EPOCHS_3, "--name", "plain")
    first = distill(xkd, *T5_PAIR, *EPOCHS_3, "--name", "first", "--teacher-cache", "full")
    again = distill(xkd, *T5_PAIR, *EPOCHS_3, "--name", "again", "--teacher-cache", "full")
    assert plain.get("teacher_cache") is None

    # Same losses at every step and the same final weights, bit for bit (batch of one: no padding, so the
    # stored logits are exactly the ones a run without the cache recomputes each epoch).
    expected = [row["loss"] for row in log(runs, "plain")]
    assert [row["loss"] for row in log(runs, "first")] == expected
    assert [row["loss"] for row in log(runs, "again")] == expected
    a = weights(runs, "plain")
    for name in ("first", "again"):
        b = weights(runs, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Teacher passes: 2 per step without the cache; with it, only the first epoch's 6 (one per example)...
    assert [row["teacher_forwards"] for row in log(runs, "plain")] == [2 * s for s in range(1, 10)]
    assert [row["teacher_forwards"] for row in log(runs, "first")] == [2, 4, 6] + [6] * 6
    assert [row["teacher_cache_hits"] for row in log(runs, "first")] == [0, 0, 0, 2, 4, 6, 8, 10, 12]
    assert first["teacher_cache"] | {"dir": None, "stored_bytes": None} == {
        "mode": "full", "k": None, "dir": None, "hits": 12, "misses": 6, "corrupt": 0, "stored_bytes": None}
    # ...and a second run reuses the first run's cache from its first step: no teacher pass at all.
    assert all(row["teacher_forwards"] == 0 for row in log(runs, "again"))
    assert (again["teacher_cache"]["hits"], again["teacher_cache"]["misses"]) == (18, 0)
    assert again["teacher_cache"]["dir"] == first["teacher_cache"]["dir"]
    record = json.loads((runs / "synth-mt" / "again" / "run.json").read_text())
    assert record["teacher_cache"]["hits"] == 18
    # One entry per training example; the key is spelled out beside them.
    assert len(entries(runs)) == 6
    key = json.loads((runs / "synth-mt" / CACHE_DIRNAME / first["teacher_cache"]["dir"].split("/")[-1] / KEY_FILE)
                     .read_text())
    assert key["mode"] == "full" and key["task"] == "synth-mt" and key["max_output_len"] == 12


def test_full_cache_with_padded_batches_matches_within_float_noise(xkd, runs):
    """Decoder-only, batch 4: each epoch reshuffles which rows share a batch and so the padding widths;
    the cached logits are those of the first epoch's batch. The teacher's float arithmetic may differ
    in the last bits between batch layouts, so here only float noise is allowed (1e-5 relative)."""
    args = [*GPT_PAIR, *EPOCHS_3, "--batch-size", "4", "--grad-accum", "1", "--train-fraction", "0.004"]
    distill(xkd, *args, "--name", "plain")
    info = distill(xkd, *args, "--name", "cached", "--teacher-cache", "full")
    assert (info["teacher_cache"]["hits"], info["teacher_cache"]["misses"]) == (28, 8)  # 2 batches / epoch
    expected = [row["loss"] for row in log(runs, "plain")]
    got = [row["loss"] for row in log(runs, "cached")]
    assert got == pytest.approx(expected, rel=1e-5)
    a, b = weights(runs, "plain"), weights(runs, "cached")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-5) for k in a)


# -- keys ---------------------------------------------------------------------------------------------------


def test_another_teacher_or_length_does_not_hit(xkd, runs):
    distill(xkd, *T5_PAIR, *EPOCHS_3, "--max-steps", "3", "--name", "base", "--teacher-cache", "full")
    other_teacher = distill(xkd, "--teacher", "tiny-t5-large", "--student", "tiny-t5-small", *EPOCHS_3,
                            "--max-steps", "3", "--name", "large", "--teacher-cache", "full")
    assert other_teacher["teacher_cache"]["hits"] == 0 and log(runs, "large")[-1]["teacher_forwards"] == 6
    # Another length limit is another key, even for sequences whose ids it does not change.
    other_length = distill(xkd, *T5_PAIR, *EPOCHS_3, "--max-steps", "3", "--max-output-len", "11", "--name", "len",
                           "--teacher-cache", "full")
    assert other_length["teacher_cache"]["hits"] == 0
    other_input = distill(xkd, *T5_PAIR, *EPOCHS_3, "--max-steps", "3", "--max-input-len", "200", "--name", "inp",
                          "--teacher-cache", "full")
    assert other_input["teacher_cache"]["hits"] == 0
    top = distill(xkd, *T5_PAIR, *EPOCHS_3, "--max-steps", "3", "--name", "topk", "--teacher-cache", "topk")
    assert top["teacher_cache"]["hits"] == 0  # another mode is another directory
    dirs = {info["teacher_cache"]["dir"] for info in (other_teacher, other_length, other_input, top)}
    assert len(dirs) == 4 and len(list((runs / "synth-mt" / CACHE_DIRNAME).iterdir())) == 5


def key_of(model, tokenizer, **over):
    values = dict(teacher=model, tokenizer=tokenizer, task="synth-mt", max_input_len=48, max_output_len=12,
                  vocab_size=len(tokenizer), is_encoder_decoder=True, mode="topk", k=64) | over
    return fields_key(cache_fields(**values))


def test_key_covers_weights_tokenizer_lengths_and_mode():
    loaded = build_tiny_model("tiny-t5-small")
    model, tok = loaded.model, loaded.tokenizer
    base = key_of(model, tok)
    assert key_of(model, tok) == base == key_of(build_tiny_model("tiny-t5-small").model, tok)  # stable
    changed = build_tiny_model("tiny-t5-small").model
    with torch.no_grad():  # the smallest possible change of one weight
        w = changed.lm_head.weight if not changed.config.tie_word_embeddings else changed.shared.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(math.inf))
    assert key_of(changed, tok) != base
    assert key_of(build_tiny_model("tiny-t5-small").model.to(torch.bfloat16), tok) != base
    other_tok = build_tiny_model("tiny-t5-small").tokenizer
    other_tok.add_tokens(["<extra-token>"])
    assert key_of(model, other_tok, vocab_size=len(tok)) != base
    for field, value in (("max_input_len", 49), ("max_output_len", 13), ("task", "synth-sum"), ("k", 32),
                         ("mode", "full"), ("vocab_size", 2000)):
        assert key_of(model, tok, **{field: value}) != base, field
    assert key_of(model, tok, k=10**6) == key_of(model, tok, k=len(tok))  # k is capped at V


@pytest.mark.parametrize("name", ["tiny-t5-small", "tiny-gpt-small"])
def test_row_key_ignores_batch_layout_but_not_tokens(name):
    loaded = build_tiny_model(name)
    examples = get_task("synth-mt").load("train", limit=6)
    data = EncodedSet(examples, loaded, max_input_len=48, max_output_len=12)
    together = data.batch([0, 1, 2, 3])  # other rows and other padding widths
    alone = data.batch([2])
    assert torch.equal(row_tokens(together, 2), row_tokens(alone, 0))
    assert not torch.equal(row_tokens(together, 1), row_tokens(together, 2))
    shorter = EncodedSet(examples, loaded, max_input_len=48, max_output_len=6).batch([2])
    assert not torch.equal(row_tokens(shorter, 0), row_tokens(alone, 0))


# -- on-policy batches and bad input ------------------------------------------------------------------------


def test_on_policy_batches_never_use_the_cache(xkd, runs):
    args = [*T5_PAIR, *EPOCHS_3, "--method", "gkd", "--max-steps", "4", "--teacher-cache", "full"]
    always = distill(xkd, *args, "--alpha", "1", "--name", "onpolicy")
    assert (always["teacher_cache"]["hits"], always["teacher_cache"]["misses"]) == (0, 0)
    assert log(runs, "onpolicy")[-1]["teacher_forwards"] == 8 and not entries(runs)
    mixed = distill(xkd, *args, "--alpha", "0.5", "--name", "mixed")
    last = log(runs, "mixed")[-1]
    looked_up = mixed["teacher_cache"]["hits"] + mixed["teacher_cache"]["misses"]
    # Every micro-batch of one row is either a student sample or a cache look-up, never both.
    assert 0 < last["student_samples"] < 8 and looked_up + last["student_samples"] == 8
    assert last["teacher_forwards"] == last["student_samples"] + mixed["teacher_cache"]["misses"]


@pytest.mark.parametrize("args,words", [
    (["--teacher-cache", "yes"], ["--teacher-cache", "off, full, topk"]),
    (["--teacher-cache", "topk", "--teacher-cache-k", "0"], ["--teacher-cache-k"]),
    (["--teacher-cache", "full", "--method", "minillm"], ["minillm", "--teacher-cache off"]),
])
def test_bad_cache_options(xkd, runs, args, words):
    result = xkd("distill", *T5_PAIR, *EPOCHS_3, *args)
    assert result.code == 2 and result.err.count("\n") == 1
    assert all(word in result.err for word in words)
    assert not (runs / "synth-mt").exists()


def test_damaged_entries_are_recomputed_and_replaced(xkd, runs):
    args = [*T5_PAIR, *EPOCHS_3, "--max-steps", "3", "--teacher-cache", "full"]
    distill(xkd, *args, "--name", "clean")
    files = entries(runs)
    truncated, flipped, garbage = files[0], files[1], files[2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: the header still parses, the checksum does not match
    flipped.write_bytes(bytes(data))
    garbage.write_bytes(b"not a safetensors file")
    key_file = files[0].parent.parent / KEY_FILE
    key_file.write_text("{ broken")
    result = xkd("distill", *args, "--name", "repaired")
    assert result.code == 0, result.err
    info = result.json()
    assert (info["teacher_cache"]["corrupt"], info["teacher_cache"]["hits"]) == (3, 3)
    assert result.err.count("warning: teacher cache entry") == 1  # said once, then counted
    assert [r["loss"] for r in log(runs, "repaired")] == [r["loss"] for r in log(runs, "clean")]
    assert json.loads(key_file.read_text())["mode"] == "full"
    healed = distill(xkd, *args, "--name", "healed")
    assert (healed["teacher_cache"]["corrupt"], healed["teacher_cache"]["hits"]) == (0, 6)


# -- top-k mode ------------------------------------------------------------------------------------------


def test_bucket_divergence_by_hand():
    """Teacher p = (0.5, 0.3, 0.15, 0.05), k = 2: buckets {0}, {1}, tail = {2, 3} with teacher mass
    (0.5, 0.3, 0.2); a uniform student has (0.25, 0.25, 0.5)."""
    teacher = torch.tensor([0.5, 0.3, 0.15, 0.05]).log().view(1, 1, 4)
    student = torch.zeros(1, 1, 4)
    labels = torch.zeros(1, 1, dtype=torch.long)
    logprobs, ids, tail = losses.teacher_topk(teacher, 2)
    assert ids.tolist() == [[[0, 1]]] and tail.exp().item() == pytest.approx(0.2, abs=1e-7)
    hand = {
        "fkl": 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5),
        "rkl": 0.25 * math.log(0.25 / 0.5) + 0.25 * math.log(0.25 / 0.3) + 0.5 * math.log(0.5 / 0.2),
        "tvd": 0.5 * (0.25 + 0.05 + 0.3),
    }
    m = [0.5 * (0.5 + 0.25), 0.5 * (0.3 + 0.25), 0.5 * (0.2 + 0.5)]
    hand["jsd"] = 0.5 * sum(p * math.log(p / q) for p, q in zip([0.5, 0.3, 0.2], m)) + \
        0.5 * sum(p * math.log(p / q) for p, q in zip([0.25, 0.25, 0.5], m))
    hand["mix"] = 0.5 * hand["fkl"] + 0.5 * hand["rkl"]
    for name, value in hand.items():
        got = losses.topk_divergence_sum(name, student, logprobs, ids, tail, labels, beta=0.5).total
        assert got.item() == pytest.approx(value, rel=1e-6), name


@pytest.mark.parametrize("name", losses.DIVERGENCES.names())
def test_topk_with_k_equal_to_vocabulary_is_the_full_divergence(name):
    torch.manual_seed(0)
    student = torch.randn(2, 5, 40, requires_grad=True)
    teacher = 3 * torch.randn(2, 5, 40)
    labels = torch.randint(0, 40, (2, 5))
    labels[1, 3:] = -100
    full = losses.divergence_sum(name, student, teacher, labels, beta=0.3).total
    (g_full,) = torch.autograd.grad(full, student)
    top = losses.topk_divergence_sum(name, student, *losses.teacher_topk(teacher, 40), labels, beta=0.3).total
    (g_top,) = torch.autograd.grad(top, student)  # an empty tail must not turn the gradient into NaN
    assert top.item() == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(g_top, g_full, atol=1e-6)
    # Fewer buckets never see more divergence (coarse-graining), and a smaller k loses more of it.
    by_k = [losses.topk_divergence_sum(name, student, *losses.teacher_topk(teacher, k), labels, beta=0.3).total.item()
            for k in (2, 8, 32)]
    assert by_k[0] <= by_k[1] + 1e-6 <= by_k[2] + 2e-6 <= full.item() + 3e-6


def test_topk_forward_kl_gap_is_the_tail_term():
    """fkl over buckets + p_T(tail)·KL(p_T(·|tail) ‖ p_S(·|tail)) = the full fkl, exactly (chain rule)."""
    torch.manual_seed(1)
    s, t = torch.randn(1, 1, 30), 2 * torch.randn(1, 1, 30)
    labels = torch.zeros(1, 1, dtype=torch.long)
    logprobs, ids, tail = losses.teacher_topk(t, 6)
    bucket = losses.topk_divergence_sum("fkl", s, logprobs, ids, tail, labels).total.item()
    rest = torch.ones(30, dtype=torch.bool)
    rest[ids.view(-1)] = False
    p_rest, q_rest = t.view(-1)[rest].softmax(-1), s.view(-1)[rest].softmax(-1)
    gap = tail.exp().item() * float((p_rest * (p_rest / q_rest).log()).sum())
    full = losses.divergence_sum("fkl", s, t, labels).total.item()
    assert bucket + gap == pytest.approx(full, rel=1e-5)


def test_topk_cache_loss_error_shrinks_with_k(xkd, runs):
    """Step 1 (same student everywhere): the loss from the float16 top-k cache against the exact one.
    k = V is exact up to float16 rounding; smaller k lose the tail's inner structure. These tiny teachers
    are random, hence nearly uniform: the worst case for top-k (a trained teacher is far more peaked)."""
    args = [*T5_PAIR, *EPOCHS_3, "--max-steps", "1"]
    distill(xkd, *args, "--name", "exact")
    exact = log(runs, "exact")[0]["loss"]
    errors = {}
    for k in (8, 512, 2048):
        distill(xkd, *args, "--name", f"k{k}", "--teacher-cache", "topk", "--teacher-cache-k", str(k))
        errors[k] = abs(log(runs, f"k{k}")[0]["loss"] - exact) / exact
    assert errors[2048] < 1e-4 < errors[512] < errors[8]
    stored = [load_file(str(p)) for p in entries(runs)]
    assert {e["logprobs"].dtype for e in stored} == {torch.float16} and {e["ids"].dtype for e in stored} == {torch.int32}
