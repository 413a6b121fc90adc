"""Tests for the loss engine (xkd_cli.objectives.chunked, .divergences, .experiential, .minillm):
hand-computed values, properties, equivalences, gradients.

References are computed independently of the code under test: by hand, by plain NumPy float64 loops
(analytic gradients), or by xkd_cli.objectives.reference, the paper's math on full float64 tensors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import IGNORE
from xkd_cli.objectives import chunked, reference, row_pass
from xkd_cli.objectives.divergences import _R_BOUND, _log_mix_ratio  # private: the guarded path, spelled out
from xkd_cli.objectives.divergences import (
    DIVERGENCES,
    divergence_sum,
    divergence_term,
    teacher_topk,
    topk_divergence_term,
)
from xkd_cli.objectives.chunked import kd_sum, nll_sum, nll_term, td_mask, token_logprobs, valid_mask
from xkd_cli.objectives.experiential import experiential_sum, kd_experiential_sum, summarize_stats
from xkd_cli.core.hparams import check_hparams, hparam_problems
from xkd_cli.core.hparams import DIVERGENCE_NAMES
from xkd_cli.objectives.minillm import (
    masked_whiten,
    minillm_advantages,
    minillm_rewards,
    mixed_sampling_weights,
    ppo_clip_sum,
    teacher_mixed_logprobs,
)
from xkd_cli.objectives.reward import RewardHead

NAMES = ["jsd", "fkl", "rkl", "mix", "tvd"]
INF = float("inf")


def logits_of(*rows: list[float]) -> torch.Tensor:
    """1 x T x V logits whose softmax is exactly the given probability rows (log p; log 0 = -inf)."""
    return torch.tensor([[[math.log(p) if p > 0 else -INF for p in row] for row in rows]])


def rand_batch(b=3, t=6, v=11, seed=0, pad=True):
    g = torch.Generator().manual_seed(seed)
    s = (2 * torch.randn(b, t, v, generator=g)).requires_grad_()
    te = 2 * torch.randn(b, t, v, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    if pad:
        labels[0, 4:] = IGNORE  # padding at the end
        labels[1, 2] = IGNORE  # a hole in the middle
        labels[2, 0] = IGNORE  # masked prompt position at the start
    return s, te, labels


def grad_of(fn, *tensors):
    for x in tensors:
        x.grad = None
    fn().backward()
    return [x.grad.clone() for x in tensors]


# ------------------------------------------------------------------------------------------
# Hand-computed values
# ------------------------------------------------------------------------------------------

# p_T = [1/2, 1/4, 1/4], p_S = [1/8, 3/8, 1/2]; computed by hand:
# fkl = .5 ln 4 + .25 ln(2/3) + .25 ln(1/2)            = 0.693147 - 0.101366 - 0.173287 = 0.418494
# rkl = .125 ln(1/4) + .375 ln(3/2) + .5 ln 2          = -0.173287 + 0.152049 + 0.346574 = 0.325336
# M(β=.5) = [.3125, .3125, .375]
# KL(T‖M) = .5 ln 1.6 + .25 ln .8 + .25 ln(2/3)        = 0.235002 - 0.055786 - 0.101366 = 0.077850
# KL(S‖M) = .125 ln .4 + .375 ln 1.2 + .5 ln(4/3)      = -0.114536 + 0.068371 + 0.143841 = 0.097676
# jsd(.5) = .5 (0.077850 + 0.097676)                   = 0.087763
# mix(.5) = .5 (0.418494 + 0.325336)                   = 0.371915
# tvd     = .5 (.375 + .125 + .25)                     = 0.375
HAND = {"fkl": 0.418494, "rkl": 0.325336, "jsd": 0.087763, "mix": 0.371915, "tvd": 0.375}


@pytest.mark.parametrize("name", NAMES)
def test_divergence_hand_values(name):
    teacher = logits_of([0.5, 0.25, 0.25], [0.5, 0.25, 0.25])
    student = logits_of([0.125, 0.375, 0.5], [0.125, 0.375, 0.5])
    labels = torch.tensor([[0, IGNORE]])  # the second position does not count
    out = divergence_sum(name, student, teacher, labels, beta=0.5)
    assert out.tokens.item() == 1
    assert out.total.dtype == torch.float32
    assert out.total.item() == pytest.approx(HAND[name], abs=2e-6)


def test_nll_hand_value():
    # -ln(1/4) + -ln(1/2) = ln 4 + ln 2 = 2.079442; the ignored position (-100) adds nothing
    logits = logits_of([0.5, 0.25, 0.25], [0.125, 0.375, 0.5], [0.2, 0.3, 0.5])
    out = nll_sum(logits, torch.tensor([[1, 2, IGNORE]]))
    assert out.tokens.item() == 2
    assert out.total.item() == pytest.approx(math.log(4) + math.log(2), abs=1e-6)
    assert out.mean().item() == pytest.approx((math.log(4) + math.log(2)) / 2, abs=1e-6)


def test_temperature_scales_both_logits():
    s, t, labels = rand_batch()
    a = divergence_sum("fkl", s, t, labels, temperature=2.0)
    b = divergence_sum("fkl", s / 2.0, t / 2.0, labels)
    torch.testing.assert_close(a.total, b.total)


def test_the_reference_reproduces_the_hand_values():
    """The oracle itself (xkd_cli.objectives.reference) against the hand computations above."""
    p_t = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    p_s = torch.tensor([[0.125, 0.375, 0.5]], dtype=torch.float64)
    for name, value in HAND.items():
        assert reference.divergence(name, p_s, p_t, 0.5).item() == pytest.approx(value, abs=2e-6), name
    nll = reference.token_nll(torch.tensor([[0.5, 0.25, 0.25], [0.125, 0.375, 0.5]]), torch.tensor([1, 2]))
    assert nll.sum().item() == pytest.approx(math.log(4) + math.log(2), abs=1e-6)


# ------------------------------------------------------------------------------------------
# Properties
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_zero_when_teacher_equals_student(name, beta):
    s, _, labels = rand_batch()
    out = divergence_sum(name, s, s.detach().clone(), labels, beta=beta)
    assert abs(out.total.item()) < 1e-5
    (g,) = grad_of(lambda: divergence_sum(name, s, s.detach().clone(), labels, beta=beta).total, s)
    assert g.abs().max().item() < 1e-5


def test_jsd_endpoints_are_forward_and_reverse_kl():
    s, t, labels = rand_batch()
    fkl = divergence_sum("fkl", s, t, labels).total
    rkl = divergence_sum("rkl", s, t, labels).total
    assert torch.equal(divergence_sum("jsd", s, t, labels, beta=0.0).total, fkl)
    assert torch.equal(divergence_sum("jsd", s, t, labels, beta=1.0).total, rkl)
    assert torch.equal(divergence_sum("mix", s, t, labels, beta=1.0).total, fkl)
    assert torch.equal(divergence_sum("mix", s, t, labels, beta=0.0).total, rkl)
    assert not torch.allclose(fkl, rkl)  # the example distinguishes the two directions


def test_jsd_limits_near_the_endpoints():
    """JSD_β → 0 at both ends; JSD_β/β → KL(p_T‖p_S) as β → 0 and JSD_β/(1-β) → KL(p_S‖p_T) as β → 1."""
    s, t, labels = rand_batch(seed=3)
    fkl = divergence_sum("fkl", s, t, labels).total.item()
    rkl = divergence_sum("rkl", s, t, labels).total.item()
    jsd = lambda beta: divergence_sum("jsd", s, t, labels, beta=beta).total.item()  # noqa: E731
    errors_low, errors_high = [], []
    for eps in (1e-2, 1e-3, 1e-4, 1e-5):  # the relative error shrinks about like β·log(1/β)
        errors_low.append(abs(jsd(eps) / eps - fkl) / fkl)
        errors_high.append(abs(jsd(1 - eps) / eps - rkl) / rkl)
        assert jsd(eps) < 2 * eps * fkl and jsd(1 - eps) < 2 * eps * rkl
    assert errors_low[-1] < 1e-3 and errors_high[-1] < 1e-3
    assert errors_low == sorted(errors_low, reverse=True) and errors_high == sorted(errors_high, reverse=True)


def test_the_reference_jsd_endpoints_are_its_limits():
    g = torch.Generator().manual_seed(4)
    p_s = torch.randn(5, 9, generator=g, dtype=torch.float64).softmax(-1)
    p_t = torch.randn(5, 9, generator=g, dtype=torch.float64).softmax(-1)
    fkl, rkl = reference.forward_kl(p_s, p_t), reference.reverse_kl(p_s, p_t)
    assert torch.equal(reference.generalized_jsd(p_s, p_t, 0.0), fkl)
    assert torch.equal(reference.generalized_jsd(p_s, p_t, 1.0), rkl)
    eps = 1e-6
    torch.testing.assert_close(reference.generalized_jsd(p_s, p_t, eps) / eps, fkl, rtol=1e-4, atol=0)
    torch.testing.assert_close(reference.generalized_jsd(p_s, p_t, 1 - eps) / eps, rkl, rtol=1e-4, atol=0)
    torch.testing.assert_close(reference.beta_mix(p_s, p_t, 0.3), 0.3 * fkl + 0.7 * rkl)


@pytest.mark.parametrize("name", NAMES)
def test_divergences_are_nonnegative(name):
    s, t, labels = rand_batch(seed=5)
    assert divergence_sum(name, s, t, labels, beta=0.3).total.item() > 0


# ------------------------------------------------------------------------------------------
# Equivalences
# ------------------------------------------------------------------------------------------


def _all_losses(s, t, labels, chunk_size, mu, log_sigma):
    total = sum(divergence_sum(n, s, t, labels, beta=0.3, chunk_size=chunk_size).total for n in NAMES)
    total = total + nll_sum(s, labels, chunk_size=chunk_size).total
    ex = experiential_sum(s, labels, mu, log_sigma, lam=0.7, gamma=0.9, tau=2.0, chunk_size=chunk_size)
    return total + ex.total


@pytest.mark.parametrize("chunk_size", [1, 3, 10**6])
def test_chunked_equals_unchunked(chunk_size):
    s, t, labels = rand_batch()
    mu = (0.3 * torch.randn(labels.shape)).requires_grad_()
    log_sigma = (0.3 * torch.randn(labels.shape)).requires_grad_()
    ref = _all_losses(s, t, labels, 10**6, mu, log_sigma)
    ref_grads = grad_of(lambda: _all_losses(s, t, labels, 10**6, mu, log_sigma), s, mu, log_sigma)
    out = _all_losses(s, t, labels, chunk_size, mu, log_sigma)
    grads = grad_of(lambda: _all_losses(s, t, labels, chunk_size, mu, log_sigma), s, mu, log_sigma)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta,temperature", [(0.0, 1.0), (0.3, 1.0), (1.0, 1.0), (0.7, 2.0)])
def test_divergences_match_the_reference(name, beta, temperature):
    """The chunked, masked float32 divergence_sum against the reference on float64 full tensors of the
    counted rows: value and gradient (zero at the ignored positions)."""
    s, t, labels = rand_batch(seed=19)
    m = valid_mask(labels)

    def ref():
        p_s, p_t = (s[m].double() / temperature).softmax(-1), (t[m].double() / temperature).softmax(-1)
        return reference.divergence(name, p_s, p_t, beta).sum()

    def got():
        return divergence_sum(name, s, t, labels, beta=beta, temperature=temperature, chunk_size=4).total

    torch.testing.assert_close(got().double(), ref(), rtol=1e-5, atol=1e-6)
    (g_got,) = grad_of(got, s)
    (g_ref,) = grad_of(ref, s)
    torch.testing.assert_close(g_got.double(), g_ref.double(), rtol=1e-4, atol=1e-6)
    assert torch.equal(g_got[~m], torch.zeros_like(g_got[~m]))


def test_nll_and_token_logprobs_match_the_reference():
    s, _, labels = rand_batch(seed=21)
    m = valid_mask(labels)

    def ref():
        return reference.token_nll(s[m].double().softmax(-1), labels[m]).sum()

    torch.testing.assert_close(nll_sum(s, labels, chunk_size=4).total.double(), ref(), rtol=1e-5, atol=1e-6)
    (g_got,) = grad_of(lambda: nll_sum(s, labels, chunk_size=4).total, s)
    (g_ref,) = grad_of(ref, s)
    torch.testing.assert_close(g_got.double(), g_ref.double(), rtol=1e-4, atol=1e-6)
    logp = token_logprobs(s, labels, chunk_size=4)
    torch.testing.assert_close(logp[m].double(), -reference.token_nll(s[m].double().softmax(-1), labels[m]))
    assert torch.equal(logp[~m], torch.zeros_like(logp[~m]))


def test_default_chunking_follows_the_vocabulary(monkeypatch):
    s, t, labels = rand_batch(v=11)
    ref = divergence_sum("jsd", s, t, labels, chunk_size=10**6).total
    calls = []
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 22)  # 22 // V = 2 rows per chunk
    rows = row_pass.RowPlan.rows
    monkeypatch.setattr(row_pass.RowPlan, "rows", lambda plan, i, xs: calls.append(len(plan.chunks[i][0])) or rows(plan, i, xs))
    out = divergence_sum("jsd", s, t, labels).total  # forward: one call per chunk
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert calls and max(calls) == 2 and sum(calls) == int(valid_mask(labels).sum())


def test_sliced_logits_view_equals_contiguous_copy():
    """Decoder-only callers pass logits[:, :-1] (a non-contiguous view)."""
    s, t, labels = rand_batch(t=7)
    view_s, view_t, lab = s[:, :-1], t[:, :-1], labels[:, 1:]
    copy_s = view_s.detach().contiguous().requires_grad_()
    for name in NAMES:
        a = divergence_sum(name, view_s, view_t, lab, chunk_size=4).total
        b = divergence_sum(name, copy_s, view_t.contiguous(), lab, chunk_size=4).total
        torch.testing.assert_close(a, b)
    (g_view,) = grad_of(lambda: experiential_sum(view_s, lab, 0 * lab.float(), 0 * lab.float(), lam=1.0).total, s)
    (g_copy,) = grad_of(lambda: experiential_sum(copy_s, lab, 0 * lab.float(), 0 * lab.float(), lam=1.0).total, copy_s)
    torch.testing.assert_close(g_view[:, :-1], g_copy)
    assert torch.equal(g_view[:, -1], torch.zeros_like(g_view[:, -1]))


def test_chunking_works_without_grad():
    s, t, labels = rand_batch()
    with torch.no_grad():
        a = divergence_sum("jsd", s, t, labels, chunk_size=2).total
    torch.testing.assert_close(a, divergence_sum("jsd", s, t, labels).total.detach())


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_8_equals_two_accumulated_batches_of_4(name):
    s, t, labels = rand_batch(b=8, seed=7)
    labels[5, 1:] = IGNORE  # uneven token counts between the halves
    whole = divergence_sum(name, s, t, labels)
    n = whole.tokens
    (g_whole,) = grad_of(lambda: whole.total / n, s)
    s.grad = None
    halves = [divergence_sum(name, s[i : i + 4], t[i : i + 4], labels[i : i + 4]) for i in (0, 4)]
    assert sum(h.tokens for h in halves) == n
    for h in halves:  # gradient accumulation, normalised by the step's token count
        (h.total / n).backward()
    torch.testing.assert_close(sum(h.total for h in halves), whole.total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.grad, g_whole, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_computed_in_float32(dtype):
    s, t, labels = rand_batch()
    s_half = s.detach().to(dtype).requires_grad_()
    t_half = t.to(dtype)
    mu = torch.zeros(labels.shape)
    for name in NAMES:
        out = divergence_sum(name, s_half, t_half, labels)
        ref = divergence_sum(name, s_half.detach().float(), t_half.float(), labels)
        assert out.total.dtype == torch.float32
        torch.testing.assert_close(out.total, ref.total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(nll_sum(s_half, labels).total, nll_sum(s_half.detach().float(), labels).total)
    ex = experiential_sum(s_half, labels, mu, mu, lam=1.0)
    ex_ref = experiential_sum(s_half.detach().float(), labels, mu, mu, lam=1.0)
    torch.testing.assert_close(ex.total, ex_ref.total)
    (g,) = grad_of(lambda: divergence_sum("jsd", s_half, t_half, labels).total, s_half)
    assert g.dtype == dtype and torch.isfinite(g).all()


# ------------------------------------------------------------------------------------------
# -inf logits, all-masked batches, vocabulary handling, errors
# ------------------------------------------------------------------------------------------


def test_minus_inf_teacher_hand_values():
    # p_T = [1/2, 1/2, 0] (a -inf logit), p_S = [1/4, 1/4, 1/2]
    # fkl = 2 · .5 ln 2 = ln 2 (0·log 0 = 0); tvd = .5 (.25 + .25 + .5) = .5
    # rkl: the student is restricted to the teacher's support -> [1/2, 1/2] = p_T -> 0
    # jsd(.5): M = [3/8, 3/8, 1/4]; .5 (ln(4/3)) + .5 (.5 ln(2/3) + .5 ln 2) = 0.215762
    teacher = logits_of([0.5, 0.5, 0.0])
    student = logits_of([0.25, 0.25, 0.5]).requires_grad_()
    labels = torch.tensor([[0]])
    expected = {"fkl": math.log(2), "rkl": 0.0, "jsd": 0.215762, "tvd": 0.5, "mix": 0.5 * math.log(2)}
    for name, value in expected.items():
        out = divergence_sum(name, student, teacher, labels)
        assert out.total.item() == pytest.approx(value, abs=2e-6), name
        (g,) = grad_of(lambda: divergence_sum(name, student, teacher, labels).total, student)
        assert torch.isfinite(g).all(), name


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_minus_inf_logits_give_finite_losses_and_grads(name, beta):
    s, t, labels = rand_batch()
    t = t.clone()
    t[t < 0.5] = -INF  # a top-k style teacher: most of the vocabulary impossible
    t[..., 0] = 1.0  # every row keeps some support
    with torch.no_grad():
        s[0, 0, 1] = -80.0  # a student probability that underflows to 0 in float32
        s[1, 1, 2] = -INF  # a masked student entry
    out = divergence_sum(name, s, t, labels, beta=beta)
    assert torch.isfinite(out.total)
    (g,) = grad_of(lambda: divergence_sum(name, s, t, labels, beta=beta).total, s)
    assert torch.isfinite(g).all()


def test_all_masked_batch():
    s, t, labels = rand_batch()
    labels = torch.full_like(labels, IGNORE)
    mu = torch.zeros(labels.shape, requires_grad=True)
    log_sigma = torch.zeros(labels.shape, requires_grad=True)
    parts = [divergence_sum(n, s, t, labels) for n in NAMES] + [nll_sum(s, labels)]
    ex = experiential_sum(s, labels, mu, log_sigma)
    for p in parts:
        assert p.total.item() == 0.0 and p.tokens.item() == 0 and p.mean().item() == 0.0
    assert ex.total.item() == 0.0 and ex.tokens.item() == 0 and ex.mean().item() == 0.0
    assert all(v == 0.0 for v in ex.summary().values())
    loss = sum(p.mean() for p in parts) + ex.mean()
    loss.backward()
    for x in (s, mu, log_sigma):
        assert torch.equal(x.grad, torch.zeros_like(x))


def test_vocab_mismatch_needs_vocab_size():
    s, t, labels = rand_batch(v=9)
    wide_teacher = torch.cat([t, torch.randn(*t.shape[:2], 3)], dim=-1)  # V = 12 vs 9
    with pytest.raises(ValueError, match="vocab_size"):
        divergence_sum("fkl", s, wide_teacher, labels)
    out = divergence_sum("fkl", s, wide_teacher, labels, vocab_size=9)
    torch.testing.assert_close(out.total, divergence_sum("fkl", s, t, labels).total)
    # both sides padded (T5: 32128 logits for 32100 tokens): slicing drops the padded entries
    out = divergence_sum("fkl", s, wide_teacher[..., :9], labels, vocab_size=7)
    torch.testing.assert_close(out.total, divergence_sum("fkl", s[..., :7], t[..., :7], labels).total)
    with pytest.raises(ValueError, match="vocab_size"):
        divergence_sum("fkl", s, t, labels, vocab_size=10)


def test_labels_outside_the_vocabulary_are_an_error():
    s, _, labels = rand_batch(v=9)
    labels[0, 0] = 8
    with pytest.raises(ValueError, match="outside"):
        nll_sum(s, labels, vocab_size=8)


def test_unknown_divergence_lists_valid_names():
    s, t, labels = rand_batch()
    with pytest.raises(XKDError) as err:
        divergence_sum("jsdd", s, t, labels)
    assert "'jsd'" in str(err.value) and all(n in str(err.value) for n in NAMES)
    assert sorted(DIVERGENCES.names()) == sorted(NAMES)


def test_divergence_names_have_one_source():
    """Configs validate --divergence against methods.py's torch-free names: the registry holds exactly them."""
    assert tuple(DIVERGENCES.names()) == DIVERGENCE_NAMES


def test_hparam_checks():
    assert hparam_problems(beta=0.5, temperature=1.0, lam=0.001, gamma=1.0, tau=1.0, chunk_size=4) == []
    problems = hparam_problems(beta=1.5, lam=-1.0, tau=0.0, gamma=float("nan"))
    assert len(problems) == 4 and all("\n" not in p for p in problems)
    with pytest.raises(XKDError, match="beta"):
        check_hparams(beta=-0.1)
    s, t, labels = rand_batch()
    with pytest.raises(XKDError, match="lambda"):
        experiential_sum(s, labels, torch.zeros(labels.shape), torch.zeros(labels.shape), lam=-0.5)
    with pytest.raises(XKDError, match="temperature"):
        divergence_sum("fkl", s, t, labels, temperature=0.0)
    with pytest.raises(XKDError, match="chunk_size"):
        nll_sum(s, labels, chunk_size=0)


# ------------------------------------------------------------------------------------------
# Gradients: one plain-SGD step against independent references
# ------------------------------------------------------------------------------------------


def _np_softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _reference_grad(s, t, labels, beta, kind):
    """d(loss / N)/d logits by explicit per-position loops in float64 (analytic gradients):
    nll: p_S − onehot(y); fkl: p_S − p_T; jsd: p_S ⊙ (a − <p_S, a>), a = (1−β)·log(p_S / M)."""
    s, t, labels = s.detach().double().numpy(), t.double().numpy(), labels.numpy()
    grad = np.zeros_like(s)
    n = int((labels != IGNORE).sum())
    for b in range(s.shape[0]):
        for j in range(s.shape[1]):
            if labels[b, j] == IGNORE:
                continue
            ps, pt = _np_softmax(s[b, j]), _np_softmax(t[b, j])
            if kind == "nll":
                g = ps.copy()
                g[labels[b, j]] -= 1.0
            elif kind == "fkl":
                g = ps - pt
            else:
                a = (1 - beta) * np.log(ps / (beta * pt + (1 - beta) * ps))
                g = ps * (a - (ps * a).sum())
            grad[b, j] = g / n
    return torch.from_numpy(grad)


@pytest.mark.parametrize("kind", ["nll", "fkl", "jsd"])
def test_one_sgd_step_matches_independent_reference(kind):
    s, t, labels = rand_batch(seed=11)
    lr, beta = 0.5, 0.3
    start = s.detach().clone()
    if kind == "nll":
        part = nll_sum(s, labels, chunk_size=4)
    else:
        part = divergence_sum(kind, s, t, labels, beta=beta, chunk_size=4)
    opt = torch.optim.SGD([s], lr=lr)
    opt.zero_grad()
    part.mean().backward()  # normalised once, by the valid-token count
    opt.step()
    expected = start.double() - lr * _reference_grad(start, t, labels, beta, kind)
    torch.testing.assert_close(s.detach().double(), expected, rtol=0, atol=1e-6)
    assert torch.equal(s.detach()[labels == IGNORE], start[labels == IGNORE])


# ------------------------------------------------------------------------------------------
# The experiential term
# ------------------------------------------------------------------------------------------

# P rows [1/2, 1/4, 1/4], [1/8, 3/8, 1/2], [1/3, 1/3, 1/3]; labels y = [0, 2, 1]; τ' = 1
# Q_t = P[t, y_t] − ln Σ_v exp(P[t, v]):
#   Q_0 = .5 − ln(e^.5 + 2 e^.25) = −0.939070;  Q_1 = .5 − ln(e^.125 + e^.375 + e^.5) = −0.943823
#   Q_2 = 1/3 − ln(3 e^{1/3}) = −ln 3 = −1.098612
# μ = [.1, −.2, .3], log σ = [.2, −.1, 0], λ = .5
# γ = 1: δ = [0.004753, 0.154790]; KL = [0.050912, 0.029365]; log q = [−1.121979, −0.895811]
#        F_ex = Σ (KL − λ log q) = 1.089173
# γ = .5: δ = [−0.467159, −0.394517]; log q = [−1.226749, −0.842045]; F_ex = 1.114675
EX_P = ([0.5, 0.25, 0.25], [0.125, 0.375, 0.5], [1 / 3, 1 / 3, 1 / 3])
EX_MU = torch.tensor([[0.1, -0.2, 0.3]])
EX_LOG_SIGMA = torch.tensor([[0.2, -0.1, 0.0]])


@pytest.mark.parametrize(
    "gamma,expected,deltas", [(1.0, 1.089173, [0.004753, 0.154790]), (0.5, 1.114675, [-0.467159, -0.394517])]
)
def test_experiential_hand_value(gamma, expected, deltas):
    out = experiential_sum(logits_of(*EX_P), torch.tensor([[0, 2, 1]]), EX_MU, EX_LOG_SIGMA, lam=0.5, gamma=gamma)
    assert out.tokens.item() == 2
    assert out.total.item() == pytest.approx(expected, abs=2e-6)
    assert out.stats["kl"].item() == pytest.approx(0.050912 + 0.029365, abs=2e-6)
    summary = out.summary()
    assert summary["delta_mean"] == pytest.approx(sum(deltas) / 2, abs=2e-6)
    assert summary["delta_std"] == pytest.approx(abs(deltas[0] - deltas[1]) / 2, abs=2e-5)
    assert summary["mu_mean"] == pytest.approx(-0.05, abs=1e-6)
    assert summary["sigma_mean"] == pytest.approx((math.exp(0.2) + math.exp(-0.1)) / 2, abs=1e-6)


def test_last_valid_token_has_no_td_term():
    logits = logits_of(*EX_P)
    # y = [0, 2, pad]: only δ_0 = Q_0 − Q_1 counts, never Q_1 − 0
    out = experiential_sum(logits, torch.tensor([[0, 2, IGNORE]]), EX_MU, EX_LOG_SIGMA, lam=0.5)
    assert out.tokens.item() == 1
    assert out.total.item() == pytest.approx(0.050912 - 0.5 * -1.121979, abs=2e-6)
    # a hole in the middle: no position has a valid successor
    out = experiential_sum(logits, torch.tensor([[0, IGNORE, 1]]), EX_MU, EX_LOG_SIGMA, lam=0.5)
    assert out.tokens.item() == 0 and out.total.item() == 0.0
    assert td_mask(torch.tensor([[0, IGNORE, 1, 1]])).tolist() == [[False, False, True]]


def _experiential_reference(s, labels, mu, log_sigma, lam, gamma, tau):
    """F_ex by the reference (full float64 tensors, no chunking)."""
    return reference.experiential_objective(s.double().softmax(-1), labels, mu.double(), log_sigma.double(),
                                            lam=lam, gamma=gamma, tau=tau)


@pytest.mark.parametrize("gamma,expected", [(1.0, 1.089173), (0.5, 1.114675)])
def test_the_reference_reproduces_the_experiential_hand_value(gamma, expected):
    p = torch.tensor([EX_P], dtype=torch.float64)
    out = reference.experiential_objective(p, torch.tensor([[0, 2, 1]]), EX_MU.double(), EX_LOG_SIGMA.double(),
                                           lam=0.5, gamma=gamma)
    assert out.item() == pytest.approx(expected, abs=2e-6)


def test_experiential_matches_the_reference_with_gradients():
    s, _, labels = rand_batch(seed=13)
    mu = (0.5 * torch.randn(labels.shape)).requires_grad_()
    log_sigma = (0.5 * torch.randn(labels.shape)).requires_grad_()
    kw = dict(lam=0.3, gamma=0.9, tau=2.0)
    got = experiential_sum(s, labels, mu, log_sigma, chunk_size=2, **kw).total
    ref = _experiential_reference(s, labels, mu, log_sigma, **kw)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    g_got = grad_of(lambda: experiential_sum(s, labels, mu, log_sigma, chunk_size=2, **kw).total, s, mu, log_sigma)
    g_ref = grad_of(lambda: _experiential_reference(s, labels, mu, log_sigma, **kw), s, mu, log_sigma)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)
    # gradients flow through both Q terms: the logits of the second token of a TD pair get some
    assert s.grad is not None and g_got[0][0, 3].abs().sum() > 0  # row 0: valid 0..3, last TD pair (2, 3)


def test_large_vocab_logsumexp_is_about_log_v():
    v = 32000
    g = torch.Generator().manual_seed(0)
    logits = 0.1 * torch.randn(1, 4, v, generator=g)
    labels = torch.randint(0, v, (1, 4), generator=g)
    zeros = torch.zeros(1, 4)
    out = experiential_sum(logits, labels, zeros, zeros, lam=1.0, gamma=1.0)
    p = torch.softmax(logits, -1)
    py = p.gather(-1, labels[..., None]).squeeze(-1)[0]  # p(y_t)
    expected_delta = py[:-1] - py[1:]  # log V cancels between Q_t and Q_{t+1}
    assert out.tokens.item() == 3
    assert out.stats["delta"].item() == pytest.approx(expected_delta.sum().item(), abs=1e-6)
    assert abs(out.stats["delta"].item()) <= 3.0
    # with γ = 0, δ_t = Q_t ≈ p(y_t) − log V
    out0 = experiential_sum(logits, labels, zeros, zeros, gamma=0.0)
    assert out0.stats["delta"].item() / 3 == pytest.approx(py[:-1].mean().item() - math.log(v), abs=1e-4)


def test_lambda_zero_is_bitwise_the_baseline_gradient():
    """With λ = 0 and the head at its zero init, F_ex and all its gradients are exactly 0."""
    s, t, labels = rand_batch(b=4, t=7, v=13, seed=17)
    hidden = torch.randn(4, 7, 5, requires_grad=True)
    head = RewardHead(5)
    for name in NAMES:

        def losses(with_ex):
            kd = divergence_sum(name, s, t, labels, beta=0.4, chunk_size=3)
            loss = kd.mean()
            if with_ex:
                mu, log_sigma = head(hidden)
                ex = experiential_sum(s, labels, mu, log_sigma, lam=0.0, chunk_size=2)
                assert ex.total.item() == 0.0
                loss = loss + ex.mean()
            return loss

        base = losses(False)
        (g_base,) = grad_of(lambda: losses(False), s)
        both = losses(True)
        g_s, g_h, g_w, g_b = grad_of(lambda: losses(True), s, hidden, head.proj.weight, head.proj.bias)
        assert torch.equal(both, base)
        assert torch.equal(g_s, g_base)
        for g in (g_h, g_w, g_b):
            assert torch.equal(g, torch.zeros_like(g))


def _kd_terms(t):
    """One term of each kind: NLL, every full-teacher divergence, a top-k teacher."""
    terms = {"nll": nll_term(), "topk-jsd": topk_divergence_term("jsd", *teacher_topk(t, 4), beta=0.3)}
    terms.update({name: divergence_term(name, t, beta=0.3) for name in NAMES})
    return terms


@pytest.mark.parametrize("chunk_size", [2, None])
@pytest.mark.parametrize("kind", ["nll", "topk-jsd", *NAMES])
def test_one_pass_equals_the_two_terms_apart_bit_for_bit(kind, chunk_size):
    """kd_experiential_sum is the KD sum plus F_ex in one chunked pass: the same values and the same
    gradients (student logits, μ, log σ) as kd_sum and experiential_sum called one after the other."""
    s, t, labels = rand_batch(b=3, t=7, v=13, seed=5)
    mu = (0.3 * torch.randn(labels.shape)).requires_grad_()
    log_sigma = (0.3 * torch.randn(labels.shape)).requires_grad_()
    term = _kd_terms(t)[kind]
    hp = dict(lam=0.7, gamma=0.9, tau=2.0, chunk_size=chunk_size)

    def apart():
        kd = kd_sum(term, s, labels, chunk_size=chunk_size)
        ex = experiential_sum(s, labels, mu, log_sigma, **hp)
        return kd, ex

    def together():
        return kd_experiential_sum(term, s, labels, mu, log_sigma, **hp)

    (kd_a, ex_a), (kd_t, ex_t) = apart(), together()
    assert torch.equal(kd_a.total, kd_t.total) and torch.equal(ex_a.total, ex_t.total)
    assert int(kd_a.tokens) == int(kd_t.tokens) and int(ex_a.tokens) == int(ex_t.tokens)
    for key in ex_a.stats:
        assert torch.equal(ex_a.stats[key], ex_t.stats[key])
    weights = (0.37, 1.91)  # different upstream weights, so a swapped or dropped gradient would show
    g_apart = grad_of(lambda: weights[0] * apart()[0].total + weights[1] * apart()[1].total, s, mu, log_sigma)
    g_together = grad_of(lambda: weights[0] * together()[0].total + weights[1] * together()[1].total,
                         s, mu, log_sigma)
    for a, b in zip(g_apart, g_together):
        assert torch.equal(b, a)  # the same two addends meet in the same row gradient
    assert torch.count_nonzero(g_together[0]) > 0


def test_one_pass_without_a_kd_term_is_experiential_sum():
    s, _, labels = rand_batch(seed=2)
    mu, log_sigma = 0.2 * torch.randn(labels.shape), 0.1 * torch.randn(labels.shape)
    kd, ex = kd_experiential_sum(None, s, labels, mu, log_sigma, lam=0.5)
    assert kd is None
    assert torch.equal(ex.total, experiential_sum(s, labels, mu, log_sigma, lam=0.5).total)


def test_one_pass_at_lambda_zero_is_bitwise_the_baseline():
    """The trainer's X-variants go through kd_experiential_sum: at λ = 0 and the head at its zero init
    their value and student gradient equal the baseline's kd_sum bit for bit."""
    s, t, labels = rand_batch(b=4, t=7, v=13, seed=17)
    hidden = torch.randn(4, 7, 5, requires_grad=True)
    head = RewardHead(5)
    for kind, term in _kd_terms(t).items():
        def baseline():
            return kd_sum(term, s, labels, chunk_size=3).mean()

        def fused():
            kd, ex = kd_experiential_sum(term, s, labels, *head(hidden), lam=0.0, chunk_size=3)
            return kd.mean() + ex.mean()

        assert torch.equal(fused(), baseline()), kind
        (g_base,) = grad_of(baseline, s)
        g_s, g_h = grad_of(fused, s, hidden)
        assert torch.equal(g_s, g_base), kind
        assert torch.count_nonzero(g_h) == 0


def test_lambda_zero_trains_identically_with_adam():
    """A tiny 'student' (embedding -> hidden -> logits) + head: three Adam steps with and without
    F_ex (λ = 0) end with bit-identical student weights and an unchanged zero head."""

    def run(with_ex):
        torch.manual_seed(0)
        emb, lm_head, head = torch.nn.Embedding(13, 8), torch.nn.Linear(8, 13), RewardHead(8)
        params = [*emb.parameters(), *lm_head.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, lr=1e-2, weight_decay=0.1)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            ids = torch.randint(0, 13, (4, 6), generator=g)
            labels = ids.roll(-1, 1)
            labels[:, -1] = IGNORE
            teacher = torch.randn(4, 6, 13, generator=g)
            h = emb(ids)
            logits = lm_head(h)
            loss = divergence_sum("jsd", logits, teacher, labels).mean()
            if with_ex:
                mu, log_sigma = head(h)
                loss = loss + experiential_sum(logits, labels, mu, log_sigma, lam=0.0).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return [p.detach().clone() for p in params]

    base, ex = run(False), run(True)
    for a, b in zip(base, ex):
        assert torch.equal(a, b)
    assert torch.count_nonzero(ex[-2]) == 0 and torch.count_nonzero(ex[-1]) == 0


def test_lambda_positive_changes_the_gradient():
    s, _, labels = rand_batch()
    zeros = torch.zeros(labels.shape)
    (g,) = grad_of(lambda: experiential_sum(s, labels, zeros, zeros, lam=0.1).total, s)
    assert g.abs().sum() > 0


def test_summarize_stats_adds_up_over_micro_batches():
    s, _, labels = rand_batch(b=4, seed=2)
    mu, log_sigma = 0.2 * torch.randn(labels.shape), 0.2 * torch.randn(labels.shape)
    whole = experiential_sum(s, labels, mu, log_sigma)
    halves = [experiential_sum(s[i : i + 2], labels[i : i + 2], mu[i : i + 2], log_sigma[i : i + 2]) for i in (0, 2)]
    stats = {k: halves[0].stats[k] + halves[1].stats[k] for k in whole.stats}
    merged = summarize_stats(stats, halves[0].tokens + halves[1].tokens)
    for k, v in whole.summary().items():
        assert merged[k] == pytest.approx(v, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------------------------------
# MiniLLM pieces
# ------------------------------------------------------------------------------------------


def test_token_logprobs():
    logits = logits_of([0.5, 0.25, 0.25], [0.125, 0.375, 0.5])
    lp = token_logprobs(logits, torch.tensor([[1, IGNORE]]))
    torch.testing.assert_close(lp, torch.tensor([[math.log(0.25), 0.0]]))
    assert valid_mask(torch.tensor([[1, IGNORE]])).tolist() == [[True, False]]


def test_minillm_rewards_and_advantages_by_hand():
    labels = torch.tensor([[1, 1, 1], [1, 1, IGNORE]])
    teacher_lp = torch.log(torch.tensor([[0.5, 0.25, 0.5], [0.5, 0.5, 0.9]]))
    old_lp = torch.log(torch.tensor([[0.25, 0.25, 0.125], [0.5, 0.25, 0.1]]))
    r = minillm_rewards(teacher_lp, old_lp, labels)  # ln 2, 0, ln 4 | 0, ln 2, (ignored) 0
    torch.testing.assert_close(r, torch.tensor([[math.log(2), 0.0, math.log(4)], [0.0, math.log(2), 0.0]]))
    rewards = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 99.0]])
    # discount .5, row 0: R = [1 + .5·3.5, 2 + .5·3, 3] = [2.75, 3.5, 3]; / remaining [3, 2, 1]
    # row 1 (last ignored): R = [1 + .5·2, 2] = [2, 2]; / remaining [2, 1]
    adv = minillm_advantages(rewards, labels, discount=0.5)
    torch.testing.assert_close(adv, torch.tensor([[2.75 / 3, 1.75, 3.0], [1.0, 2.0, 0.0]]))
    w = masked_whiten(adv, labels)
    valid = w[valid_mask(labels)]
    assert valid.mean().abs() < 1e-6 and (valid.pow(2).mean() - 1).abs() < 1e-5
    assert w[1, 2] == 0.0


def test_whitening_by_hand():
    """Over the valid positions only (1, 2, 3, 3, 1: mean 2, population variance 0.8); ignored ones stay 0,
    whatever they held."""
    labels = torch.tensor([[1, 1, 1], [1, 1, IGNORE]])
    values = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 99.0]])
    s = 1 / math.sqrt(0.8 + 1e-8)
    torch.testing.assert_close(masked_whiten(values, labels), torch.tensor([[-s, 0.0, s], [s, -s, 0.0]]))


def test_teacher_mixed_sampling():
    student = logits_of([0.5, 0.25, 0.25])
    teacher = logits_of([0.25, 0.25, 0.5])
    mixed = teacher_mixed_logprobs(student, teacher, mix=0.2).exp()
    torch.testing.assert_close(mixed, torch.tensor([[[0.45, 0.25, 0.30]]]))  # .8 p_S + .2 p_T
    labels = torch.tensor([[0, 2, IGNORE]])
    s_lp = torch.log(torch.tensor([[0.5, 0.25, 0.3]]))
    t_lp = torch.log(torch.tensor([[0.25, 0.5, 0.3]]))
    # w = p_S / (.8 p_S + .2 p_T): .5 / .45 = 1.111111; .25 / .3 = 0.833333; ignored -> 1
    w = mixed_sampling_weights(s_lp, t_lp, labels, mix=0.2)
    torch.testing.assert_close(w, torch.tensor([[0.5 / 0.45, 0.25 / 0.3, 1.0]]))
    assert torch.equal(mixed_sampling_weights(s_lp, t_lp, labels, mix=0.0), torch.ones(1, 3))


def test_ppo_clip_by_hand():
    labels = torch.tensor([[0, 0, 0, IGNORE]])
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    logprobs = torch.log(torch.tensor([[0.75, 0.75, 0.5, 0.1]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    weights = torch.tensor([[1.0, 1.0, 1.1, 1.0]])
    # pos 0: ρ = 1.5, A = 1  -> max(−1.5, −1.2) = −1.2 (clipped: no gradient)
    # pos 1: ρ = 1.5, A = −1 -> max(1.5, 1.2) = 1.5    (gradient −A·ρ = 1.5)
    # pos 2: ρ = 1·1.1, A = 2 -> max(−2.2, −2.2) = −2.2 (gradient −A·ρ = −2.2)
    out = ppo_clip_sum(logprobs, old, adv, labels, weights=weights, clip=0.2)
    assert out.tokens.item() == 3
    assert out.total.item() == pytest.approx(-1.2 + 1.5 - 2.2, abs=1e-6)
    out.total.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 1.5, -2.2, 0.0]]))


def test_single_step_reverse_kl_is_the_rkl_divergence():
    # MiniLLM's single-step term Σ_v p_S log(p_S / p_T) on the hand example: 0.325336
    teacher = logits_of([0.5, 0.25, 0.25])
    student = logits_of([0.125, 0.375, 0.5])
    out = divergence_sum("rkl", student, teacher, torch.tensor([[0]]))
    assert out.total.item() == pytest.approx(0.325336, abs=2e-6)


def _guarded_jsd(s, t, beta):
    """The generalized JSD with its -inf guards always applied (the formula without the full-support fast path)."""
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    both_zero = (ls == -math.inf) & (lt == -math.inf)
    r = (lt.masked_fill(both_zero, 0.0) - ls.masked_fill(both_zero, 0.0)).clamp(-_R_BOUND, _R_BOUND)
    kl_t = -(lt.exp() * _log_mix_ratio(-r, 1 - beta, math.log1p(-beta), math.log(beta))).sum(-1)
    kl_s = -(ls.exp() * _log_mix_ratio(r, beta, math.log(beta), math.log1p(-beta))).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def _plain_jsd64(p_s, p_t, beta):
    """JSD_β straight from its definition in float64, Σ p·log p − Σ p·log M; its cancellation near the
    endpoints costs float64 about 1e-9 relative at β = 1e-7, far below what the float32 test asks."""
    m = beta * p_t + (1 - beta) * p_s
    return beta * (p_t.xlogy(p_t) - p_t.xlogy(m)).sum(-1) + (1 - beta) * (p_s.xlogy(p_s) - p_s.xlogy(m)).sum(-1)


@pytest.mark.parametrize("beta", [1e-5, 1e-7, 1 - 1e-5, 1 - 1e-7])
def test_jsd_near_the_endpoints_against_float64(beta):
    """Computing log(M/p) from the log-ratio keeps float32's precision where JSD_β = O(β) or O(1−β)
    (the plain Σ p·log p − Σ p·log M lost it: relative error 3e-4 at β = 1e-5, 8e-2 at 1e-7)."""
    g = torch.Generator().manual_seed(11)
    s, t = 2 * torch.randn(4, 8, 50, generator=g), 2 * torch.randn(4, 8, 50, generator=g)
    labels = torch.zeros(4, 8, dtype=torch.long)
    want = _plain_jsd64(s.double().softmax(-1), t.double().softmax(-1), beta)  # 4 x 8
    got = divergence_sum("jsd", s, t, labels, beta=beta).total.double()
    assert abs(got - want.sum()) / want.sum() < 1e-5
    ref = reference.generalized_jsd(s.double().softmax(-1), t.double().softmax(-1), beta)
    torch.testing.assert_close(ref, want, rtol=1e-8, atol=0)
    rows = DIVERGENCES.get("jsd")(s.view(-1, 50), t.view(-1, 50), beta).double()
    torch.testing.assert_close(rows, want.view(-1), rtol=1e-5, atol=0)  # every row, not only the sum


def test_jsd_with_a_one_sided_zero_probability_near_the_endpoints():
    """A token only one side can emit: its ±inf log-ratio gives the exact limits log β / log(1−β)."""
    s = torch.tensor([[0.0, 1.0, -math.inf]])
    t = torch.tensor([[0.5, -math.inf, 0.0]])
    for beta in (1e-7, 0.5, 1 - 1e-7):
        want = _plain_jsd64(s.double().softmax(-1), t.double().softmax(-1), beta)
        got = DIVERGENCES.get("jsd")(s.clone().requires_grad_(), t, beta)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
        torch.testing.assert_close(reference.generalized_jsd(s.double().softmax(-1), t.double().softmax(-1), beta),
                                   want, rtol=1e-8, atol=0)


@pytest.mark.parametrize("zeros", [False, True])
def test_jsd_fast_path_is_bit_identical_to_the_guarded_formula(zeros):
    # Skipping the guards when every probability is > 0 must change nothing, value and gradient, bit for bit;
    # with zero probabilities the guarded path runs (and stays free of NaN).
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(16, 300, generator=generator) * 4, torch.randn(16, 300, generator=generator) * 4
    if zeros:
        teacher[:, :40] = -math.inf
        student[:4, 20:60] = -math.inf
    for beta in (0.2, 0.5, 0.9):
        got, want = student.clone().requires_grad_(), student.clone().requires_grad_()
        value, expected = DIVERGENCES.get("jsd")(got, teacher, beta), _guarded_jsd(want, teacher, beta)
        value.sum().backward()
        expected.sum().backward()
        assert torch.equal(value, expected) and torch.equal(got.grad, want.grad)
        assert not got.grad.isnan().any()
