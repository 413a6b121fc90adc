"""Distillation across tokenizers: the character-offset alignment, ULD and the shared-vocabulary term, the
objective on real tiny models with two different vocabularies, and the CLI's refusals (xkd distill
--cross-tokenizer)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import T5TokenizerFast

from xkd_cli.config.training import DistillConfig, SFTConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import IGNORE, make_batch
from xkd_cli.data.tasks import Example
from xkd_cli.models.zoo import UNIGRAM_TOKENIZER_FILE, build_tiny_model, builtin_tokenizer
from xkd_cli.objectives import reference
from xkd_cli.objectives.alignment import (
    Retokenizer,
    TokenMap,
    align_positions,
    encode_with_ends,
    same_pieces,
    token_ends_by_decoding,
)
from xkd_cli.objectives.cross_tokenizer import CrossTokenizerObjective, shared_vocab_term, uld_distance, uld_term
from xkd_cli.objectives.divergences import DivergenceParams, divergence_term
from xkd_cli.objectives.chunked import kd_sum
from xkd_cli.objectives.experiential import kd_experiential_sum
from xkd_cli.objectives.steps import KDObjective
from xkd_cli.training.distill import run_distill
from xkd_cli.training.sources import EncodedSet
from xkd_cli.training.sft import run_sft

TEXT = "The committee met, Ünïcode 日本 ok."


# --------------------------------------------------------------------------------------------- alignment


def test_align_hand_built_merges_and_splits():
    # text "abcd": student a|bc|d, teacher ab|c|d. Positions predict the next token after the same characters.
    student_ends, teacher_ends = [1, 3, 4], [2, 3, 4]
    aligned = align_positions(student_ends, teacher_ends, student_positions=4, teacher_positions=4)
    # s0 after "" ↔ t0; s1 after "a" has no teacher partner (the teacher merged "ab"); s2 after "abc" ↔ t2;
    # s3 (eos) after "abcd" ↔ t3 (eos)
    assert aligned == [0, None, 2, 3]


def test_align_byte_fallback_and_zero_width_tokens():
    # text "xé" (2 characters): student x|<C3>|<A9> (bytes end inside "é": None), teacher ▁(0)|x|é
    student_ends, teacher_ends = [1, None, 2], [0, 1, 2]
    aligned = align_positions(student_ends, teacher_ends, student_positions=4, teacher_positions=4)
    # s0 ↔ the teacher position after the zero-width "▁" (the last one at boundary 0 wins), s1 ↔ t2,
    # s2 starts inside "é": none, s3 (eos) ↔ t3
    assert aligned == [1, 2, None, 3]


def test_same_pieces_where_both_predict_the_same_text_next():
    # "abcd": student a|bc|d, teacher ab|c|d; s0 ↔ t0 predict "a" and "ab"; s2 ↔ t2 both "d"; s3 ↔ t3 both eos
    student_ends, teacher_ends = [1, 3, 4], [2, 3, 4]
    partners = align_positions(student_ends, teacher_ends, student_positions=4, teacher_positions=4)
    assert same_pieces(student_ends, teacher_ends, partners) == [False, False, True, True]
    # a piece that ends inside a character never matches, even beside a partner
    assert same_pieces([1, None, 2], [0, 1, 2], [1, 2, None, 3]) == [True, False, False, True]


def test_align_student_without_eos_and_teacher_shorter():
    aligned = align_positions([2, 5], [5], student_positions=2, teacher_positions=1)
    assert aligned == [0, None]  # the teacher's only position predicts its one token; nothing after "ab"


def _check_aligned_prefixes(student_tok, teacher_tok, text):
    ids = student_tok(text, add_special_tokens=False)["input_ids"]
    decoded = student_tok.decode(ids)
    student_ends = token_ends_by_decoding(student_tok, ids, decoded)
    teacher_ids, teacher_ends = encode_with_ends(teacher_tok, decoded)
    aligned = align_positions(student_ends, teacher_ends, student_positions=len(ids) + 1,
                              teacher_positions=len(teacher_ids) + 1)
    assert sum(j is not None for j in aligned) >= len(ids) // 3  # most word starts align
    for i, j in enumerate(aligned):
        if j is None:
            continue
        # both have read exactly the same characters before the aligned positions
        before_student = decoded[: student_ends[i - 1]] if i else ""
        before_teacher = decoded[: teacher_ends[j - 1]] if j else ""
        assert before_student == before_teacher
        assert (i == len(ids)) == (j == len(teacher_ids))  # eos only with eos
    return aligned


def test_align_real_bpe_against_unigram_with_byte_fallback():
    bpe, unigram = builtin_tokenizer("bpe"), builtin_tokenizer("unigram")
    aligned = _check_aligned_prefixes(bpe, unigram, TEXT)
    assert None in aligned  # merges, splits and partial bytes leave some positions without a partner
    _check_aligned_prefixes(unigram, bpe, TEXT)


def test_align_t5_sentencepiece_tokenizer_against_byte_level_bpe():
    # A T5TokenizerFast (SentencePiece Unigram, "▁" boundaries, </s>, sentinel tokens) over the builtin Unigram
    # model: the real t5-small vocabulary would need a download.
    t5 = T5TokenizerFast(tokenizer_file=str(UNIGRAM_TOKENIZER_FILE), extra_ids=4, eos_token="</s>",
                         pad_token="<pad>", unk_token="<unk>")
    bpe = builtin_tokenizer("bpe")
    _check_aligned_prefixes(bpe, t5, "Summarize:  two  spaces, <extra_id_0> and é.")
    _check_aligned_prefixes(t5, bpe, TEXT)


def test_same_tokenizer_aligns_every_position_but_inside_a_character():
    tok = builtin_tokenizer()
    assert None not in _check_aligned_prefixes(tok, tok, "The committee met, ok.")
    # offsets count characters: a position after one byte of "Ü" has no character boundary to share
    assert _check_aligned_prefixes(tok, tok, TEXT).count(None) == 6  # Ü, ï: one inner byte each; 日, 本: two


def test_token_map_pairs_tokens_spelled_alike():
    bpe, unigram = builtin_tokenizer("bpe"), builtin_tokenizer("unigram")
    shared = TokenMap.build(bpe, unigram, student_vocab=len(bpe), teacher_vocab=len(unigram))
    assert 100 < len(shared.student_ids) < len(unigram)
    pairs = dict(zip(shared.student_ids.tolist(), shared.teacher_ids.tolist()))
    the_bpe = bpe.convert_tokens_to_ids("Ġthe")
    assert unigram.convert_ids_to_tokens(pairs[the_bpe]) == "▁the"
    assert pairs[bpe.eos_token_id] == unigram.eos_token_id
    # word-internal pieces pair with word-internal pieces, word-initial with word-initial (the Unigram "▁m"
    # once spelled like "m" and took its place, leaving the Unigram "m", "0", "A" outside the map)
    for inner in ("m", "0", "A"):
        assert unigram.convert_ids_to_tokens(pairs[bpe.convert_tokens_to_ids(inner)]) == inner
    unigram_ids = set(shared.teacher_ids.tolist())
    assert all(unigram.convert_tokens_to_ids(inner) in unigram_ids for inner in ("m", "0", "A"))


# --------------------------------------------------------------------------------------------- ULD


def test_uld_hand_computed():
    p_s = torch.tensor([[0.2, 0.5, 0.3]])
    p_t = torch.tensor([[0.4, 0.6]])
    # sorted: (0.5, 0.3, 0.2) vs (0.6, 0.4, 0): 0.1 + 0.1 + 0.2
    assert uld_distance(p_s, p_t).item() == pytest.approx(0.4)
    assert reference.uld(p_s, p_t).item() == pytest.approx(0.4)
    assert uld_distance(p_t, p_s).item() == pytest.approx(0.4)  # symmetric
    permuted = p_s[:, [2, 0, 1]]
    assert uld_distance(permuted, p_s).item() == 0.0  # blind to which token carries which probability


def test_uld_matches_reference_on_random_rows():
    g = torch.Generator().manual_seed(0)
    p_s = torch.randn(7, 11, generator=g).softmax(-1)
    p_t = torch.randn(7, 5, generator=g).softmax(-1)
    torch.testing.assert_close(uld_distance(p_s, p_t), reference.uld(p_s, p_t))


def _pair(seed=0, B=2, T=6, Vs=11, Vt=7):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, T, Vs, generator=g, requires_grad=True)
    teacher = torch.randn(B, T, Vt, generator=g, requires_grad=True)
    labels = torch.randint(0, Vs, (B, T), generator=g)
    labels[1, 4:] = IGNORE
    aligned = torch.rand(B, T, generator=g) > 0.3
    return student, teacher, labels, aligned


@pytest.mark.parametrize("with_nll", [False, True])
def test_uld_term_against_reference_and_gradients_reach_only_the_student(with_nll):
    student, teacher, labels, aligned = _pair()
    total = kd_sum(uld_term(teacher, aligned, teacher_vocab=7, with_nll=with_nll), student, labels).total
    valid = labels != IGNORE
    p_s, p_t = student.softmax(-1), teacher.softmax(-1)
    expected = (reference.uld(p_s[valid & aligned], p_t[valid & aligned])).sum()
    if with_nll:
        expected = expected + reference.token_nll(p_s[valid], labels[valid]).sum()
    torch.testing.assert_close(total, expected)
    total.backward()
    assert teacher.grad is None and student.grad is not None
    assert student.grad[valid].abs().sum() > 0 and student.grad[~valid].abs().sum() == 0


@pytest.mark.parametrize("with_nll", [False, True])
def test_shared_is_the_divergence_over_shared_tokens_and_the_rest_where_pieces_match(with_nll):
    student, teacher, labels, aligned = _pair(seed=1)
    matched = aligned & (torch.arange(labels.shape[1]) % 2 == 0)
    shared = TokenMap(torch.tensor([0, 3, 5]), torch.tensor([2, 0, 6]))
    term = shared_vocab_term("fkl", teacher, matched, shared, teacher_vocab=7, beta=0.5, with_nll=with_nll)
    total = kd_sum(term, student, labels).total
    valid = labels != IGNORE
    p_s, p_t = student.softmax(-1), teacher.softmax(-1)
    s, t = p_s[valid & matched], p_t[valid & matched]
    # coarsened: the three shared tokens, then "anything else" (student 8 tokens, teacher 4)
    coarse_s = torch.cat([s[:, [0, 3, 5]], s[:, [1, 2, 4, 6, 7, 8, 9, 10]].sum(-1, keepdim=True)], -1)
    coarse_t = torch.cat([t[:, [2, 0, 6]], t[:, [1, 3, 4, 5]].sum(-1, keepdim=True)], -1)
    expected = reference.forward_kl(coarse_s, coarse_t).sum()
    if with_nll:  # the data's token wherever the teacher cannot say which token: unmatched or unaligned
        expected = expected + reference.token_nll(p_s[valid & ~matched], labels[valid & ~matched]).sum()
    torch.testing.assert_close(total, expected)
    total.backward()
    assert teacher.grad is None
    assert student.grad[~valid].abs().sum() == 0
    assert (student.grad[valid & ~matched].abs().sum() > 0) == with_nll


def test_shared_does_not_push_the_student_off_its_own_segmentation():
    # The text goes on " could": the student's tokenizer spells it " cou" + "ld", the teacher's " could".
    # The student puts its mass on " cou" (its own next piece); the teacher on " could", which the student's
    # vocabulary also has. Compared token by token, the student right on its own tokenisation would be
    # pushed towards " could"; the pieces differ, so the position gets no teacher term.
    student = torch.log(torch.tensor([[[0.9, 0.05, 0.05]]])).requires_grad_()  # " cou", " could", "x"
    teacher = torch.log(torch.tensor([[[0.9, 0.1]]]))                            # " could", "y"
    shared = TokenMap(torch.tensor([1]), torch.tensor([0]))  # " could" in both vocabularies
    labels, here = torch.tensor([[0]]), torch.tensor([[True]])
    as_if_matched = kd_sum(shared_vocab_term("fkl", teacher, here, shared, teacher_vocab=2, beta=0.5),
                           student, labels).total
    assert as_if_matched.item() > 2  # " could" at 0.05 against 0.9
    unmatched = kd_sum(shared_vocab_term("fkl", teacher, ~here, shared, teacher_vocab=2, beta=0.5),
                       student, labels).total
    assert unmatched.item() == 0.0


@pytest.mark.parametrize("name", ["fkl", "jsd"])
def test_shared_with_identical_tokenizers_is_the_ordinary_divergence_bit_for_bit(name):
    student, teacher, labels, _ = _pair(seed=2, Vt=11)
    everywhere = torch.ones_like(labels, dtype=torch.bool)
    ours = kd_sum(shared_vocab_term(name, teacher, everywhere, TokenMap.same(11), teacher_vocab=11, beta=0.5,
                                    with_nll=True),  # the NLL anchor is for different vocabularies only
                  student, labels).total
    (grad_ours,) = torch.autograd.grad(ours, student)
    plain = kd_sum(divergence_term(name, teacher, beta=0.5), student, labels).total
    (grad_plain,) = torch.autograd.grad(plain, student)
    assert torch.equal(ours, plain) and torch.equal(grad_ours, grad_plain)


def _terms(teacher, aligned):
    """Both cross-tokenizer terms, with the NLL anchor, on a hand-built shared vocabulary."""
    matched = aligned & (torch.arange(aligned.shape[1]) % 2 == 1)
    shared = TokenMap(torch.tensor([1, 4, 5]), torch.tensor([0, 3, 2]))
    return {"uld": uld_term(teacher, aligned, teacher_vocab=7, with_nll=True),
            "shared": shared_vocab_term("jsd", teacher, matched, shared, teacher_vocab=7, beta=0.5, with_nll=True)}


@pytest.mark.parametrize("method", ["uld", "shared"])
def test_chunked_equals_unchunked(method):
    student, teacher, labels, aligned = _pair(seed=3)
    term = _terms(teacher, aligned)[method]
    whole = kd_sum(term, student, labels).total
    (grad_whole,) = torch.autograd.grad(whole, student)
    chunked = kd_sum(term, student, labels, chunk_size=2).total
    (grad_chunked,) = torch.autograd.grad(chunked, student)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
    assert torch.equal(grad_chunked, grad_whole)


@pytest.mark.parametrize("method", ["uld", "shared"])
def test_experiential_term_composes_and_lambda_zero_is_the_baseline_bit_for_bit(method):
    student, teacher, labels, aligned = _pair(seed=4)
    term = _terms(teacher, aligned)[method]
    base = kd_sum(term, student, labels).total
    (grad_base,) = torch.autograd.grad(base, student)
    zeros = torch.zeros(labels.shape, requires_grad=True)
    kd, ex = kd_experiential_sum(term, student, labels, zeros, zeros, lam=0.0)
    (grad_x,) = torch.autograd.grad(kd.total + ex.total, student)
    assert torch.equal(kd.total, base) and ex.total.item() == 0.0 and torch.equal(grad_x, grad_base)
    kd, ex = kd_experiential_sum(term, student, labels, zeros, zeros, lam=0.5)  # λ > 0: F_ex moves the student
    (grad_x,) = torch.autograd.grad(kd.total + ex.total, student)
    assert not torch.equal(grad_x, grad_base)


# --------------------------------------------------------------------------------------------- the objective


EXAMPLES = [Example("a", "Summarize: the committee met on Tuesday.", "The committee met.", ""),
            Example("b", "Summarize: Ünïcode text 日本.", "Ünïcode ok.", "")]


def _objective(student, teacher, method, **kw):
    data = EncodedSet(EXAMPLES, student, max_input_len=64, max_output_len=32)
    prompts = {e.id: e.prompt for e in EXAMPLES}
    objective = CrossTokenizerObjective(
        student, teacher, vocab_size=len(student.tokenizer), experiential=None, method=method,
        divergence=DivergenceParams("fkl") if method == "shared" else None,
        teacher_vocab=len(teacher.tokenizer), prompt_text=prompts.get, prompt_ids=lambda b: data.prompts,
        max_input_len=64, keep_end=False,
        same_layout=kw.get("same_layout", False))
    batch = data.batch([0, 1])
    batch.off_policy = True
    return objective, batch


@pytest.mark.parametrize("method", ["uld", "shared"])
def test_objective_across_tokenizers_trains_the_student_only(method):
    student, teacher = build_tiny_model("tiny-gpt-uni"), build_tiny_model("tiny-t5-small")
    objective, batch = _objective(student, teacher, method)
    view = objective.retokenize(batch, [])
    assert view.aligned.any() and view.batch.labels.max() < len(teacher.tokenizer)
    assert view.batch.inputs["input_ids"].shape[0] == 2 and "decoder_input_ids" in view.batch.inputs  # T5 layout
    student.model.train()
    terms = objective.terms(batch)
    (value, norm), = terms.values()
    assert norm == "tokens" and torch.isfinite(value)
    value.backward()
    metrics = objective.step_metrics()
    assert 0.3 < metrics["aligned_fraction"] < 1.0  # merges and splits leave some out
    if method == "shared":  # of those, only the positions whose partner predicts the same piece
        assert 0 < metrics["matched_fraction"] < metrics["aligned_fraction"]
    assert all(p.grad is None for p in teacher.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.model.parameters())


def test_objective_with_identical_tokenizers_equals_the_ordinary_one():
    student, teacher = build_tiny_model("tiny-gpt-small"), build_tiny_model("tiny-gpt-large")
    objective, batch = _objective(student, teacher, "shared", same_layout=True)
    plain = KDObjective(student, teacher, vocab_size=len(student.tokenizer), divergence=DivergenceParams("fkl"),
                        experiential=None)
    ours, theirs = objective.terms(batch)["kd"][0], plain.terms(batch)["kd"][0]
    assert torch.equal(ours, theirs)
    # re-tokenising the text (as for a teacher of another layout) pairs every position but those inside a
    # character (the Ü and ï of the second example), each with its own twin
    objective, batch = _objective(student, teacher, "shared", same_layout=False)
    view = objective.retokenize(batch, [])
    assert int((~view.aligned[batch.labels != IGNORE]).sum()) == 2
    assert torch.equal(view.batch.labels, batch.labels)
    ours = objective.terms(batch)["kd"][0]
    assert 0 < ours < theirs


# --------------------------------------------------------------------------------------------- the job


def test_config_refusals():
    cases = {
        ("seqkd", "uld", "off", None): "sequence-level methods read the teacher's samples as text",
        ("minillm", "uld", "off", None): "does not support minillm",
        ("skd", "uld", "full", None): "pass --teacher-cache off",
        ("skd", "uld", "off", "jsd"): "--cross-tokenizer shared",
        ("skd", "bpe", "off", None): "--cross-tokenizer must be one of off, uld, shared",
    }
    for (method, cross, cache, divergence), message in cases.items():
        with pytest.raises(XKDError, match=message.replace("-", r"\-")):
            DistillConfig(task="synth-sum", method=method, cross_tokenizer=cross, teacher_cache=cache,
                          divergence=divergence)
    DistillConfig(task="synth-sum", method="gxkd", cross_tokenizer="shared", divergence="jsd")


def _cfg(**kw):
    base = dict(task="synth-sum", max_steps=1, batch_size=2, max_output_len=16, max_input_len=64, train_fraction=0.02,
                log_every=1, device="cpu")
    return DistillConfig(**{**base, **kw})


def test_mismatch_without_the_flag_is_refused_and_names_it(runs):
    with pytest.raises(XKDError, match="--cross-tokenizer uld"):
        run_distill(_cfg(method="skd", teacher="tiny-gpt-large", student="tiny-gpt-uni"), runs_root=runs)
    assert not (runs / "synth-sum" / "skd").exists()  # nothing ran, nothing written


def test_sft_teacher_distils_into_a_student_of_another_tokenizer(runs):
    run_sft(SFTConfig(task="synth-sum", model="tiny-gpt-large", role="teacher", max_steps=1, batch_size=2,
                      train_fraction=0.02, device="cpu"), runs_root=runs)
    result = run_distill(_cfg(method="gxkd", alpha=1.0, cross_tokenizer="uld", student="tiny-gpt-uni"),
                         runs_root=runs)
    assert result["teacher"] == "sft-tiny-gpt-large"
    record = json.loads((runs / "synth-sum" / "gxkd" / "run.json").read_text())
    assert record["cross_tokenizer"] == "uld"


def test_seqkd_reads_samples_of_a_teacher_with_another_tokenizer(runs, tmp_path):
    bpe, unigram = builtin_tokenizer("bpe"), builtin_tokenizer("unigram")
    rows = [{"id": f"x{i}", "sample": 0, "prompt": f"Summarize: item {i} costs 5 euros.", "response": "Ünïcode ok.",
             "task": "synth-sum", "teacher": "tiny-gpt-large", "tokenizer_sha": "a-bpe-teacher"} for i in range(4)]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    result = run_distill(_cfg(method="seqxkd", student="tiny-gpt-uni", teacher_data=str(samples)), runs_root=runs)
    assert result["method"] == "seqxkd" and result["student"] == "tiny-gpt-uni"
    # the samples' text, encoded with the student's own tokenizer (not the teacher's ids)
    data = EncodedSet([Example("x0", rows[0]["prompt"], rows[0]["response"], "")], build_tiny_model("tiny-gpt-uni"),
                      max_input_len=64, max_output_len=16)
    assert data.targets[0] == unigram("Ünïcode ok.", add_special_tokens=False)["input_ids"] + [unigram.eos_token_id]
    assert data.targets[0][:-1] != bpe("Ünïcode ok.", add_special_tokens=False)["input_ids"]


def test_retokenizer_rebuilds_prompt_text_from_ids_when_the_example_is_unknown():
    student, teacher = build_tiny_model("tiny-gpt-uni"), build_tiny_model("tiny-gpt-small")
    data = EncodedSet(EXAMPLES, student, max_input_len=64, max_output_len=32)
    retokenize = Retokenizer(student, teacher, prompt_text=lambda _: None, max_input_len=64)
    batch = make_batch(data.prompts, data.targets, is_encoder_decoder=False, pad_id=data.pad_id,
                       decoder_start_id=data.start_id, ids=["a", "b"])
    view = retokenize(batch, data.prompts)
    known = Retokenizer(student, teacher, prompt_text={e.id: e.prompt for e in EXAMPLES}.get, max_input_len=64)
    assert torch.equal(view.batch.inputs["input_ids"], known(batch, []).batch.inputs["input_ids"])


def test_cli_distils_across_tokenizers_with_the_shared_vocabulary(xkd, runs):
    result = xkd("distill", "--task", "synth-sum", "--method", "gkd", "--cross-tokenizer", "shared",
                 "--teacher", "tiny-gpt-large", "--student", "tiny-gpt-uni", "--max-steps", "2", "--batch-size", "2",
                 "--max-output-len", "12", "--train-fraction", "0.02", "--log-every", "1", "--device", "cpu",
                 "--json")
    assert result.code == 0, result.err
    assert result.json()["method"] == "gkd"
    run = runs / "synth-sum" / "gkd"
    assert json.loads((run / "run.json").read_text())["cross_tokenizer"] == "shared"
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "matched_fraction" in s]
    assert logged and all(0 <= s["matched_fraction"] <= s["aligned_fraction"] <= 1 for s in logged)
