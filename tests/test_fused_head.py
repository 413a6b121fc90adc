"""--fused-head: the losses from hidden states and the output head (xkd_cli.models.head) equal the losses from
logits made whole, for every model kind and method, and no B x T x V tensor is ever made."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (Gemma2Config, Gemma2ForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
                          T5Config, T5ForConditionalGeneration)

from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import IGNORE, Batch
from xkd_cli.models.forward import forward
from xkd_cli.models.head import HeadLogits, output_head, recognise_head
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.objectives.ava import AVAParams, DPOParams, dpo_sum, sequence_logprob
from xkd_cli.objectives import row_pass
from xkd_cli.objectives.chunked import kd_sum, nll_sum, nll_term, term_columns, token_logprobs
from xkd_cli.objectives.divergences import (DivergenceParams, divergence_sum, divergence_term, teacher_topk,
                                            topk_divergence_term)
from xkd_cli.objectives.experiential import ExperientialParams, kd_experiential_sum, q_term
from xkd_cli.objectives.minillm import MiniLLMParams
from xkd_cli.objectives.reward_model import RewardModelObjective
from xkd_cli.objectives.steps import KDObjective, MiniLLMObjective, NLLObjective

V, VOCAB = 64, 60  # head width, tokenizer size (T5 pads its embedding the same way)
NAMES = ["jsd", "fkl", "rkl", "mix", "tvd"]


def close(a, b):
    torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


# -- the engine: HeadLogits against the logits it stands for ---------------------------------------------


def _head_case(seed=0, softcap=None, bias=True):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 6, 8, generator=g).requires_grad_()
    weight = torch.randn(V, 8, generator=g).requires_grad_()
    b = torch.randn(V, generator=g).requires_grad_() if bias else None
    labels = torch.randint(0, VOCAB, (3, 6), generator=g)
    labels[0, 4:] = IGNORE
    labels[1, 2] = IGNORE
    teacher = HeadLogits(torch.randn(3, 6, 5, generator=g), torch.randn(V, 5, generator=g), None, softcap)
    return HeadLogits(hidden, weight, b, softcap), teacher, labels


def _made(x: HeadLogits) -> torch.Tensor:
    return x.rows(x.hidden)  # the whole B x T x V logits, as the model would make them


def _terms(teacher, labels):
    t_full = _made(teacher) if isinstance(teacher, HeadLogits) else teacher
    topk = teacher_topk(t_full.detach(), 7, vocab_size=VOCAB)
    return {"nll": nll_term(), "q": q_term(0.5), "topk-jsd": topk_divergence_term("jsd", *topk),
            **{name: divergence_term(name, teacher, beta=0.3) for name in NAMES}}


@pytest.mark.parametrize("softcap,bias,chunk_size", [(None, True, None), (0.7, False, 2), (0.7, True, 1)])
def test_head_logits_give_the_values_and_gradients_of_the_made_logits(softcap, bias, chunk_size):
    student, teacher, labels = _head_case(softcap=softcap, bias=bias)
    leaves = [t for t in (student.hidden, student.weight, student.bias) if t is not None]
    for name in _terms(teacher, labels):
        results = []
        for fused in (True, False):
            s = student if fused else _made(student)
            t = teacher if fused else _made(teacher)
            total = kd_sum(_terms(t, labels)[name], s, labels, vocab_size=VOCAB, chunk_size=chunk_size).total
            results.append((total.detach(), torch.autograd.grad(total, leaves)))
        close(results[0][0], results[1][0])
        for a, b in zip(results[0][1], results[1][1]):
            close(a, b)


def test_token_logprobs_and_no_grad_path_take_head_logits():
    student, _, labels = _head_case(softcap=0.7)
    close(token_logprobs(student, labels, vocab_size=VOCAB, chunk_size=3),
          token_logprobs(_made(student), labels, vocab_size=VOCAB))
    with torch.no_grad():
        close(nll_sum(student, labels, vocab_size=VOCAB).total, nll_sum(_made(student), labels, vocab_size=VOCAB).total)


def _count_late_passes(monkeypatch):
    """How many times the backward makes the chunks' logits again (row_pass.late_gradients is called)."""
    calls = []
    late = row_pass.late_gradients
    monkeypatch.setattr(row_pass, "late_gradients", lambda *a, **k: calls.append(1) or late(*a, **k))
    return calls


@pytest.mark.parametrize("lam,late_passes", [(0.0, 0), (0.4, 1)])
def test_a_summed_kd_column_takes_its_gradient_in_the_forward(monkeypatch, lam, late_passes):
    """The KD sum's gradient is taken while the forward has each chunk's logits: its backward makes no logits
    again (neither the student's nor the teacher's), unless F_ex's Q column needs them (λ > 0). Values and
    gradients are those of the made logits."""
    student, teacher, labels = _head_case(softcap=0.7)
    mu, log_sigma = torch.zeros(labels.shape), torch.zeros(labels.shape)
    leaves = [student.hidden, student.weight, student.bias]
    term = divergence_term("jsd", teacher, beta=0.3)
    calls = _count_late_passes(monkeypatch)
    kd, ex = kd_experiential_sum(term, student, labels, mu, log_sigma, lam=lam, vocab_size=VOCAB, chunk_size=4)
    fused = torch.autograd.grad(kd.total * 0.3 + ex.total, leaves)
    assert len(calls) == late_passes
    s = _made(student)
    kd, ex = kd_experiential_sum(divergence_term("jsd", _made(teacher), beta=0.3), s, labels, mu, log_sigma, lam=lam,
                                 vocab_size=VOCAB, chunk_size=4)
    for a, b in zip(fused, torch.autograd.grad(kd.total * 0.3 + ex.total, leaves)):
        close(a, b)
    calls.clear()
    torch.autograd.grad(kd_sum(nll_term(), student, labels, vocab_size=VOCAB).total, leaves)
    assert not calls


def test_a_summed_column_with_an_uneven_upstream_still_gets_its_gradient(monkeypatch):
    """A column said to be summed but weighted position by position goes through the backward's pass: the
    gradient is still the made logits'."""
    student, teacher, labels = _head_case()
    leaves = [student.hidden, student.weight, student.bias]
    calls = _count_late_passes(monkeypatch)
    grads = []
    for s in (student, _made(student)):
        (values,), _ = term_columns([nll_term()], s, labels, vocab_size=VOCAB, chunk_size=3, summed=(0,))
        weights = torch.linspace(0.1, 2.0, values.numel())
        grads.append(torch.autograd.grad((values * weights).sum(), leaves))
        assert len(calls) == 1  # made again in the backward (made logits have no early path: always so)
        calls.clear()
    for a, b in zip(*grads):
        close(a, b)


def test_nonfinite_teacher_rows_are_refused_chunk_by_chunk():
    student, teacher, labels = _head_case()
    bad = teacher._replace(hidden=teacher.hidden.clone(), nonfinite_error="the teacher is broken")
    bad.hidden[1, 3, 0] = float("nan")
    with pytest.raises(XKDError, match="the teacher is broken"):
        divergence_sum("fkl", student, bad, labels, vocab_size=VOCAB)
    bad.hidden[1, 3, 0] = 0.0  # finite again: the same check passes
    divergence_sum("fkl", student, bad, labels, vocab_size=VOCAB)


# -- the models the project loads ---------------------------------------------------------------------------


def _t5(seed):
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(T5Config(vocab_size=V, d_model=16, d_kv=8, num_heads=2, d_ff=32, num_layers=1,
                                               num_decoder_layers=1, feed_forward_proj="relu", dropout_rate=0.0,
                                               tie_word_embeddings=True, decoder_start_token_id=0))


def _gpt2(seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def _llama(seed, tied=False):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                        num_key_value_heads=2, num_hidden_layers=1, tie_word_embeddings=tied))


def _gemma2(seed):
    torch.manual_seed(seed)
    return Gemma2ForCausalLM(Gemma2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                          num_key_value_heads=1, head_dim=8, num_hidden_layers=1,
                                          final_logit_softcapping=0.5, attn_implementation="eager"))


def _lora(seed):
    from peft import LoraConfig, get_peft_model
    model = _llama(seed, tied=True)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, config)


def _quantised(seed, bits):
    """QLoRA: the Llama's weights loaded in 8 or 4 bits (bitsandbytes, CPU), LoRA adapters on top."""
    pytest.importorskip("bitsandbytes")
    import tempfile
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig
    from xkd_cli.models.quantization import quantization_config
    with tempfile.TemporaryDirectory() as folder:
        _llama(seed, tied=True).save_pretrained(folder)
        model = LlamaForCausalLM.from_pretrained(folder, device_map="cpu",
                                                 quantization_config=quantization_config(bits, torch.float32))
    assert isinstance(quantization_config(bits, torch.float32), BitsAndBytesConfig)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))


KINDS = {"t5": _t5, "gpt2": _gpt2, "llama": _llama, "gemma2": _gemma2, "lora": _lora,
         "8bit": lambda seed: _quantised(seed, "8bit"), "4bit": lambda seed: _quantised(seed, "4bit")}


def _loaded(model, name):
    return LoadedModel(model, None, name, "test", name, model.config.is_encoder_decoder)


def _batch(kind, rows=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, VOCAB, (rows, 5), generator=g)
    labels[0, 3:] = IGNORE
    labels[rows - 1, :1] = IGNORE  # a masked prompt position, a padded end
    if kind == "t5":
        ids = torch.randint(3, VOCAB, (rows, 4), generator=g)
        dec = torch.cat([torch.zeros(rows, 1, dtype=torch.long), labels[:, :-1].clamp_min(0)], 1)
        return Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": dec}, labels)
    prompt = torch.randint(3, VOCAB, (rows, 3), generator=g)
    ids = torch.cat([prompt, labels.clamp_min(0)], 1)[:, :-1]
    return Batch({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels, keep=5)


def _split(batch, rows):
    return Batch({k: v[rows] for k, v in batch.inputs.items()}, batch.labels[rows], keep=batch.keep)


def _grads(modules):
    return [p.grad.clone() if p.grad is not None else None for m in modules for p in m.parameters() if p.requires_grad]


def _run(make_objective, batch, micro):
    """The loss of one optimizer step over ``micro`` (lists of row indices), each term over the whole step's
    count as the training loop adds them, and the gradients of the model and the objective's modules."""
    objective = make_objective()
    modules = [_model_of(objective), *objective.modules().values()]
    for m in modules:
        m.zero_grad(set_to_none=True)
    total = 0.0
    for rows in micro:
        part = _split(batch, rows)
        counts = objective.counts(batch)
        loss = sum(value / max(counts[key], 1) for value, key in objective.terms(part).values())
        loss.backward()
        total += loss.detach()
    return total, _grads(modules)


def _model_of(objective):
    if hasattr(objective, "loaded"):
        return objective.loaded.model
    return objective.student.model if hasattr(objective, "student") else objective.model


def _objectives(kind):
    student = _loaded(KINDS[kind](1), "s")
    assert recognise_head(student.model)[0] is not None  # fused indeed: its head is known
    adapted = kind in ("lora", "8bit", "4bit")
    teacher = _loaded(_llama(2, tied=True) if adapted else KINDS[kind](2), "t")  # a LoRA student's base

    def with_random_head(objective):
        for p in objective.modules().get("reward_head", torch.nn.Linear(1, 1)).parameters():
            p.data = 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
        return objective

    ex = ExperientialParams(lam=0.5, gamma=0.9, reward_position="current")
    return {
        "sft": lambda f: NLLObjective(student.model, fused_head=f),
        "seqxkd": lambda f: with_random_head(KDObjective(student, None, vocab_size=VOCAB, divergence=None,
                                                         experiential=ex, fused_head=f)),
        "gkd": lambda f: KDObjective(student, teacher, vocab_size=VOCAB, divergence=DivergenceParams("jsd", 0.3),
                                     experiential=None, fused_head=f),
        "gxkd-rkl": lambda f: with_random_head(KDObjective(student, teacher, vocab_size=VOCAB,
                                                           divergence=DivergenceParams("rkl"), experiential=ex,
                                                           fused_head=f)),
        "minillm": lambda f: MiniLLMObjective(student, teacher, vocab_size=VOCAB, params=MiniLLMParams(whiten=False),
                                              fused_head=f),
        "minillm-whiten": lambda f: MiniLLMObjective(student, teacher, vocab_size=VOCAB, params=MiniLLMParams(),
                                                     fused_head=f),
        "ava-p": lambda f: with_random_head(RewardModelObjective(student, "ava-p", params=AVAParams(experiential=ex),
                                                                 vocab_size=VOCAB, fused_head=f)),
        "bt": lambda f: with_random_head(RewardModelObjective(student, "bt", params=None, vocab_size=VOCAB,
                                                              fused_head=f)),
        "ava-d": lambda f: with_random_head(RewardModelObjective(student, "ava-d", params=AVAParams(experiential=ex),
                                                                 vocab_size=VOCAB, fused_head=f)),
    }


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_method_fused_equals_made_logits_with_and_without_accumulation(kind):
    batch = _batch(kind)
    for method, make in _objectives(kind).items():
        plain_loss, plain_grads = _run(lambda: make("off"), batch, [[0, 1, 2, 3]])
        for micro in ([[0, 1, 2, 3]], [[0, 1], [2, 3]]):
            if method in ("ava-p", "bt", "minillm-whiten") and len(micro) > 1:
                continue  # a preference batch's rows are pairs (i, P + i); whitening is over the micro-batch
            loss, grads = _run(lambda: make("on"), batch, micro)
            close(loss, plain_loss)
            assert len(grads) == len(plain_grads)
            for a, b in zip(grads, plain_grads):
                assert (a is None) == (b is None), method
                if a is not None:
                    close(a, b)


@pytest.mark.parametrize("kind", ["t5", "gemma2"])
def test_dpo_sequence_logprobs_fused(kind):
    model, ref = KINDS[kind](1), KINDS[kind](2)
    batch = _batch(kind)
    results = []
    for mode in ("on", "off"):
        model.zero_grad(set_to_none=True)
        logits, _ = forward(model, batch, head=output_head(model, mode))
        with torch.no_grad():
            ref_logits, _ = forward(ref, batch, head=output_head(ref, mode))
        policy = sequence_logprob(logits, batch.labels, vocab_size=VOCAB)
        reference = sequence_logprob(ref_logits, batch.labels, vocab_size=VOCAB)
        loss = dpo_sum(policy[:2], policy[2:], reference[:2], reference[2:], params=DPOParams()).total
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        close(a, b)


def test_tied_weights_get_both_gradients():
    """T5 and the tied Llama: the one embedding matrix gets its input and its output gradient, fused or not."""
    for model in (_t5(1), _llama(1, tied=True)):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        batch = _batch("t5" if model.config.is_encoder_decoder else "llama")
        grads = []
        for mode in ("on", "off"):
            model.zero_grad(set_to_none=True)
            NLLObjective(model, fused_head=mode).terms(batch)["nll"][0].backward()
            grads.append(model.get_input_embeddings().weight.grad.clone())
        close(grads[0], grads[1])


def test_lambda_zero_is_the_baseline_bit_for_bit_within_the_fused_path():
    student, teacher = _loaded(_llama(1), "s"), _loaded(_llama(2), "t")
    batch = _batch("llama")
    grads = []
    for ex in (None, ExperientialParams(lam=0.0)):
        objective = KDObjective(student, teacher, vocab_size=VOCAB, divergence=DivergenceParams("jsd"),
                                experiential=ex, fused_head="on")
        student.model.zero_grad(set_to_none=True)
        terms = objective.terms(batch)
        sum(value / 13 for value, _ in terms.values()).backward()
        grads.append((terms["kd"][0].detach(), [p.grad.clone() for p in student.model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_teacher_cache_topk_serves_a_fused_teacher(tmp_path):
    from xkd_cli.objectives.teacher_cache import TeacherCache
    student, teacher = _loaded(_llama(1), "s"), _loaded(_llama(2), "t")
    batch = _batch("llama")
    batch.off_policy = True
    values = []
    for mode in ("on", "off"):
        cache = TeacherCache(tmp_path / mode, {"mode": "topk", "k": 8, "vocab_size": VOCAB})
        objective = KDObjective(student, teacher, vocab_size=VOCAB, divergence=DivergenceParams("fkl"),
                                experiential=None, cache=cache, fused_head=mode)
        first = objective.terms(batch)["kd"][0].detach()
        second = objective.terms(batch)["kd"][0].detach()  # served from disk
        assert cache.hits == 4 and cache.misses == 4
        values.append((first, second))
    for fused, plain in zip(*values):
        close(fused, plain)


# -- recognising heads, and the memory ------------------------------------------------------------------


def test_unknown_heads_fall_back_with_one_line(capsys):
    from peft import LoraConfig, get_peft_model
    on_head = get_peft_model(_llama(1), LoraConfig(r=2, target_modules=["lm_head"]))
    assert output_head(on_head, "on", name="the student") is None
    other = copy.deepcopy(_llama(1))
    other.config.model_type = "cohere"  # a head that scales its logits: not one xkd knows
    assert recognise_head(other)[0] is None
    assert output_head(_llama(1), "off") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "the student keeps its full logits" in lines[0] and "Linear" in lines[0]
    batch = _batch("llama")
    plain = NLLObjective(on_head, fused_head="off").terms(batch)["nll"][0]
    close(NLLObjective(on_head, fused_head="on").terms(batch)["nll"][0], plain)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("mode,made", [("on", False), ("off", True)])
def test_no_batch_by_length_by_vocabulary_tensor_is_made(mode, made):
    """A gxkd step, forward and backward: fused, no tensor reaches B·T·V elements (chunks of 4 rows)."""
    big = 4096
    student = LlamaForCausalLM(LlamaConfig(vocab_size=big, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                           num_key_value_heads=2, num_hidden_layers=1))
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=big, hidden_size=8, intermediate_size=16, num_attention_heads=2,
                                           num_key_value_heads=2, num_hidden_layers=1))
    batch = _batch("llama")
    objective = KDObjective(_loaded(student, "s"), _loaded(teacher, "t"), vocab_size=big,
                            divergence=DivergenceParams("jsd"), experiential=ExperientialParams(), fused_head=mode)
    import xkd_cli.objectives.chunked as chunked
    old, chunked.CHUNK_ELEMENTS = chunked.CHUNK_ELEMENTS, 4 * big
    try:
        with _LargestTensor() as seen:
            sum(value for value, _ in objective.terms(batch).values()).backward()
    finally:
        chunked.CHUNK_ELEMENTS = old
    btv = batch.labels.numel() * big
    assert (seen.largest >= btv) == made
    if not made:
        assert seen.largest <= big * 16  # the weight (V x H) and its gradient are the largest


def test_mixed_precision_makes_the_head_under_the_same_autocast():
    """--mixed-precision bf16: the fused head's matmul runs in bf16 as the model's own head does, in the forward
    and again in the backward; loss and gradients agree with the made logits to bf16 rounding."""
    model, batch = _gemma2(1), _batch("llama")
    results = []
    for mode in ("on", "off"):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = forward(model, batch, head=output_head(model, mode))
            loss = nll_sum(logits, batch.labels, vocab_size=VOCAB).total
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-2, atol=0)
    flat = [torch.cat([g.flatten() for g in grads]) for _, grads in results]
    assert (flat[0] - flat[1]).norm() / flat[1].norm() < 2e-2


def test_the_head_is_put_back_after_a_fused_forward():
    """After a fused forward (also one that raised) the model makes its logits as before, soft-cap included, and a
    forward set on the head instance (as accelerate's hooks do) is kept."""
    model, batch = _gemma2(1), _batch("llama")
    head = output_head(model)
    before = forward(model, batch)[0]
    with pytest.raises(IndexError):  # an empty input: the model itself fails inside the fused forward
        forward(model, Batch({"input_ids": batch.inputs["input_ids"][:, :0]}, batch.labels, keep=5), head=head)
    calls = []
    original = model.lm_head.forward
    model.lm_head.forward = lambda x: calls.append(1) or original(x)
    fused = forward(model, batch, head=head)[0]
    assert not calls and isinstance(fused, HeadLogits)
    assert torch.equal(forward(model, batch)[0], before) and calls == [1]
    assert model.config.final_logit_softcapping == 0.5
