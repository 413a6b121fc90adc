"""Divergences between the teacher's and the student's token distributions (docs/method.md,
"Baselines" and "Generalised JSD"), as row functions for the chunked engine, and the same divergences
against a top-k teacher.

Divergences (all per position, summed over positions; p_T teacher, p_S student)
-------------------------------------------------------------------------------
* ``fkl``  KL(p_T ‖ p_S)                                   (Eq. 2/3, supervised KD)
* ``rkl``  KL(p_S ‖ p_T)
* ``jsd``  generalized JSD(β) (Eq. 5, GKD/TRL): M = β·p_T + (1-β)·p_S,
  β·KL(p_T ‖ M) + (1-β)·KL(p_S ‖ M) with log(M/p) taken from the log-ratio log p_T − log p_S through
  log1p/expm1 (precise near both endpoints); β = 0 is ``fkl`` and β = 1 is ``rkl`` (the limits of
  JSD_β/β and JSD_β/(1-β); JSD_β itself is discontinuous there by design).
* ``mix``  Appendix A.3's D_β = β·KL(π ‖ B) + (1-β)·KL(B ‖ π) = β·fkl + (1-β)·rkl.
* ``tvd``  0.5·Σ_v |p_T - p_S|.

Zero probabilities (``-inf`` logits, e.g. from top-k or a masked vocabulary) follow 0·log(0/q) = 0
exactly; no ``-inf`` ever meets a ``0`` (no NaN, forward or backward).  A KL(p ‖ q) with q = 0 < p
is +inf; for the reverse direction (KL(p_S ‖ p_T), i.e. ``rkl``, ``mix``'s reverse half and
``jsd`` at β = 1) the student distribution is therefore restricted to the teacher's support and
renormalised there, as MiniLLM does by applying the same ``-inf`` mask to both logits.  With a
teacher of full support (the normal case) this changes nothing, bit for bit.

Divergences against a top-k teacher (the teacher cache's ``topk`` mode)
-----------------------------------------------------------------------
``teacher_topk(teacher_logits, k)`` keeps, per position, the teacher's k most likely tokens
I = {i_1 … i_k} with their log-probabilities and the log of the tail mass p_T(tail) = Σ_{v∉I} p_T(v)
(-inf when k = V).  ``topk_divergence_sum(name, student_logits, logprobs, ids, tail, labels)`` then
compares two distributions over the same k + 1 buckets {i_1}, …, {i_k}, tail:
  teacher  (p_T(i_1), …, p_T(i_k), p_T(tail)), renormalised to sum to 1 (it absorbs the rounding of
           float16 storage);
  student  (p_S(i_1), …, p_S(i_k), p_S(tail)), p_S(tail) = Σ_{v∉I} p_S(v) (a logsumexp over the
           student's non-top-k logits, never 1 − Σ, so a tiny tail keeps its precision),
with the same row function as ``divergence_sum`` (every name in ``DIVERGENCES``).  With k = V the
tail is empty on both sides and the result is the full divergence (up to float rounding).  With
k < V it is the divergence of the coarse-grained distributions, which for fkl / rkl / jsd / mix / tvd
is never larger than the full one (data-processing inequality); for fkl the gap is exactly
p_T(tail)·KL(p_T(·|tail) ‖ p_S(·|tail)).  The student still gets a gradient on every token: the tail
bucket pushes its total tail mass towards the teacher's.

Public API
----------
``DIVERGENCES``                                 Registry name -> row function ``(s, t, beta) -> N``
                                                on float32 ``N x V`` logits: jsd, fkl, rkl, mix, tvd
``divergence_term(name, teacher_logits, ...)`` / ``divergence_sum(name, student_logits, teacher_logits, labels, ...)``
``teacher_topk(teacher_logits, k)`` / ``topk_divergence_term(name, logprobs, ids, tail, ...)`` /
``topk_divergence_sum(name, student_logits, logprobs, ids, tail, labels, ...)``
                                                the same divergences against a top-k + tail teacher
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import DIVERGENCE_NAMES, check_hparams
from xkd_cli.core.registry import Registry
from xkd_cli.objectives.chunked import KDTerm, TokenSum, kd_sum

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------
# Divergences between teacher and student token distributions
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DivergenceParams:
    """Which divergence compares the two distributions (``DIVERGENCES``) and its β (jsd and mix read it)."""

    name: str
    beta: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in DIVERGENCE_NAMES:
            raise XKDError(f"unknown divergence {self.name!r}; use one of: {', '.join(DIVERGENCE_NAMES)}.")
        check_hparams(beta=self.beta)


DivergenceFn = Callable[[Tensor, Tensor, float], Tensor]  # (student N x V, teacher N x V float32 logits, beta) -> N


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p ‖ q) per row from ``N x V`` log-probabilities, with 0·log(0/q) = 0 (xlogy convention).

    Entries with p_v = 0 are zeroed in both inputs before any arithmetic, so ``-inf`` never meets
    ``0`` (their term is exp(0)·(0 − 0) = 0 and masked_fill gives them zero gradient).
    """
    outside = logp == NEG_INF  # N x V
    if outside.any():  # otherwise the masking is the identity, bit for bit, at two more N x V passes
        logp = logp.masked_fill(outside, 0.0)
        logq = logq.masked_fill(outside, 0.0)
    return _kl_full_support(logp, logq)


def _kl_full_support(logp: Tensor, logq: Tensor) -> Tensor:
    """KL(p ‖ q) per row when no entry of ``logp`` is -inf."""
    return (logp.exp() * (logp - logq)).sum(-1)  # N


def _log_softmax_on_support(logits: Tensor, support_logits: Tensor) -> Tensor:
    """log_softmax of ``logits`` restricted to the entries where ``support_logits`` is not -inf
    (identical to ``logits.log_softmax(-1)`` when there is no such entry)."""
    return logits.masked_fill(support_logits == NEG_INF, NEG_INF).log_softmax(-1)


def forward_kl(s: Tensor, t: Tensor, beta: float = 0.5) -> Tensor:
    """KL(p_T ‖ p_S) per row (Eq. 3); ``beta`` is unused."""
    return _kl(t.log_softmax(-1), s.log_softmax(-1))


def reverse_kl(s: Tensor, t: Tensor, beta: float = 0.5) -> Tensor:
    """KL(p_S ‖ p_T) per row; the student is restricted to the teacher's support; ``beta`` is unused."""
    return _kl(_log_softmax_on_support(s, t), t.log_softmax(-1))


def generalized_jsd(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """JSD_β per row (Eq. 5, GKD): β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M), M = β·p_T + (1−β)·p_S.
    β = 0 and β = 1 are the limits JSD_β/β → KL(p_T ‖ p_S) and JSD_β/(1−β) → KL(p_S ‖ p_T).

    Both KLs are written with the log-ratios log(M/p_T) and log(M/p_S) computed from r = log p_T − log p_S
    by :func:`_log_mix_ratio`, never as a difference of two log-probabilities of about the same size:
    that difference lost float32 precision within ~1e-4 of either endpoint (relative error 4e-2 at
    β = 1e-7), where KL(p_S ‖ M) is O(β²) and log M − log p_S is O(β)."""
    if beta == 0.0:
        return forward_kl(s, t)
    if beta == 1.0:
        return reverse_kl(s, t)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)  # N x V each
    if not (torch.isneginf(ls).any() or torch.isneginf(lt).any()):
        # Full support on both sides (the usual case): the guards below are the identity, bit for bit,
        # value and gradient, but running them costs three more N x V passes.
        r = lt - ls  # N x V
    else:
        # Where both are -inf neither KL reads the entry: fill 0 first (-inf − -inf is NaN).  Where one
        # side is -inf, r = ±inf is clamped to a finite ±1e4, which gives the exact limits log β and
        # log(1−β) on the side that is read and a finite value (times p = 0) on the other, so no inf
        # meets a 0 forward or backward.
        both_zero = (ls == NEG_INF) & (lt == NEG_INF)
        r = (lt.masked_fill(both_zero, 0.0) - ls.masked_fill(both_zero, 0.0)).clamp(-_R_BOUND, _R_BOUND)
    log_m_over_t = _log_mix_ratio(-r, 1.0 - beta, math.log1p(-beta), math.log(beta))  # log(M / p_T)
    log_m_over_s = _log_mix_ratio(r, beta, math.log(beta), math.log1p(-beta))  # log(M / p_S)
    kl_t = -(lt.exp() * log_m_over_t).sum(-1)  # KL(p_T ‖ M), N
    kl_s = -(ls.exp() * log_m_over_s).sum(-1)  # KL(p_S ‖ M), N
    return beta * kl_t + (1.0 - beta) * kl_s


_R_BOUND = 1e4  # |log p_T − log p_S| beyond this is a zero probability on one side (see generalized_jsd)
_EXPM1_BOUND = 30.0  # expm1 is used up to here (e^30 ≈ 1e13, far from float32 overflow)


def _log_mix_ratio(x: Tensor, w: float, log_w: float, log_1mw: float) -> Tensor:
    """log(w·e^x + 1 − w) elementwise for w in (0, 1), precise whatever its size.  Where it is small,
    log1p(w·expm1(x)) keeps the relative precision of w·(e^x − 1).  Where w·(e^x − 1) < −½ (the result
    is below −log 2, so nothing cancels, but 1 − w·(1 − e^x) would: w close to 1, as 1−β near β = 1)
    or e^x would be huge, it is logaddexp(x + log w, log(1 − w)) with both logs taken in float64; that
    branch runs only when some entry needs it."""
    near_value = w * torch.expm1(x.clamp(max=_EXPM1_BOUND))
    far = (near_value < -0.5) | (x > _EXPM1_BOUND)
    near = torch.log1p(near_value.clamp(min=-0.5))  # the clamp only touches entries the far branch replaces
    if not far.any():
        return near
    return torch.where(far, torch.logaddexp(x + log_w, torch.full_like(x, log_1mw)), near)


def beta_mix_kl(s: Tensor, t: Tensor, beta: float) -> Tensor:
    """Appendix A.3's D_β = β·KL(π ‖ B) + (1−β)·KL(B ‖ π), π = teacher, B = student (per row)."""
    if beta == 1.0:
        return forward_kl(s, t)
    if beta == 0.0:
        return reverse_kl(s, t)
    return beta * forward_kl(s, t) + (1.0 - beta) * reverse_kl(s, t)


def total_variation(s: Tensor, t: Tensor, beta: float = 0.5) -> Tensor:
    """0.5·Σ_v |p_T − p_S| per row; ``beta`` is unused."""
    return 0.5 * (t.softmax(-1) - s.softmax(-1)).abs().sum(-1)


DIVERGENCES: Registry[DivergenceFn] = Registry("divergence")
DIVERGENCES.register("jsd", generalized_jsd)
DIVERGENCES.register("fkl", forward_kl)
DIVERGENCES.register("rkl", reverse_kl)
DIVERGENCES.register("mix", beta_mix_kl)
DIVERGENCES.register("tvd", total_variation)
# Configs validate --divergence against methods.py's names without importing torch: one list of names.
assert tuple(DIVERGENCES) == DIVERGENCE_NAMES, "core/hparams.py DIVERGENCE_NAMES must list DIVERGENCES"


def divergence_term(name: str, teacher_logits: Tensor, *, beta: float = 0.5, temperature: float = 1.0) -> KDTerm:
    """D_name(p_T ‖ p_S) per position, both distributions softmax(logits / temperature); the teacher is
    detached.  Sum it with :func:`kd_sum` (or with F_ex in one pass,
    :func:`~xkd_cli.objectives.experiential.kd_experiential_sum`)."""
    fn = DIVERGENCES.get(name)
    check_hparams(beta=beta, temperature=temperature)

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        s, t = rows  # N x V float32 each
        if temperature != 1.0:  # x / 1.0 is x exactly: skip two N x V copies per chunk in the usual case
            s, t = s / temperature, t / temperature
        return fn(s, t, beta)  # N

    return KDTerm(row_fn, logits=(teacher_logits.detach(),))


def divergence_sum(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> TokenSum:
    """Σ over valid positions of D_name(p_T ‖ p_S), both distributions softmax(logits / temperature).

    ``labels`` only select the positions (their ids are not used).  The teacher is detached.
    """
    term = divergence_term(name, teacher_logits, beta=beta, temperature=temperature)
    return kd_sum(term, student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size)


# --------------------------------------------------------------------------------------------
# Divergences against a top-k teacher (k buckets of single tokens plus one tail bucket)
# --------------------------------------------------------------------------------------------


def teacher_topk(teacher_logits: Tensor, k: int, *, vocab_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's distribution over ``... x V`` logits as its top ``k`` tokens plus a tail bucket:
    (``... x k`` float32 log p_T of the k most likely tokens, ``... x k`` int64 their ids, ``...`` float32
    log p_T(tail), -inf when k >= V).  ``k`` is capped at V (after slicing to ``vocab_size``)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    logits = teacher_logits.detach()
    logp = logits[..., : vocab_size or logits.shape[-1]].float().log_softmax(-1)  # ... x V
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)  # ... x k each
    return values, ids, _tail_logmass(logp, ids)


def _tail_logmass(logp: Tensor, ids: Tensor) -> Tensor:
    """log Σ_{v ∉ ids} exp(logp_v) per row (``...``), -inf when ``ids`` cover the row.  An empty tail is
    filled before the logsumexp: its backward at all -inf would be NaN even under a zero gradient."""
    rest = logp.scatter(-1, ids, NEG_INF)  # ... x V
    empty = (rest == NEG_INF).all(-1)  # ...
    tail = rest.masked_fill(empty[..., None], 0.0).logsumexp(-1)
    return tail.masked_fill(empty, NEG_INF)


def bucket_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """``N x (k+1)`` log-probabilities of softmax(``logits``) (``N x V``) over the buckets {ids_1}, …,
    {ids_k}, everything else (differentiable w.r.t. ``logits``)."""
    return logprob_buckets(logits.log_softmax(-1), ids)


def logprob_buckets(logp: Tensor, ids: Tensor) -> Tensor:
    """:func:`bucket_logprobs` from log-probabilities already computed (``N x V``)."""
    return torch.cat([logp.gather(-1, ids), _tail_logmass(logp, ids)[:, None]], dim=-1)


def topk_divergence_term(
    name: str, teacher_logprobs: Tensor, teacher_ids: Tensor, teacher_tail: Tensor, *, beta: float = 0.5
) -> KDTerm:
    """D_name between the teacher's and the student's distributions over the k + 1 buckets of the
    teacher's top-k tokens and the tail, per position (module docstring, "Divergences against a top-k
    teacher").  ``teacher_logprobs`` / ``teacher_ids`` are ``B x T x k`` (any float dtype / an integer
    dtype), ``teacher_tail`` is ``B x T`` (log tail mass), all as :func:`teacher_topk` makes them."""
    fn = DIVERGENCES.get(name)
    check_hparams(beta=beta)

    def check(labels: Tensor, vocab: int) -> None:
        if teacher_logprobs.shape != teacher_ids.shape or teacher_tail.shape != labels.shape:
            raise ValueError(f"top-k teacher shapes {tuple(teacher_logprobs.shape)}, {tuple(teacher_ids.shape)}, "
                             f"{tuple(teacher_tail.shape)} do not fit labels of shape {tuple(labels.shape)}")
        if teacher_ids.numel() and (int(teacher_ids.min()) < 0 or int(teacher_ids.max()) >= vocab):
            raise ValueError(f"top-k teacher ids must lie in [0, {vocab}), got "
                             f"{int(teacher_ids.min())}..{int(teacher_ids.max())}")

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        s, t_logp, t_ids, t_tail = rows  # N x V float32, N x k, N x k, N x 1
        teacher = torch.cat([t_logp.float(), t_tail.float()], dim=-1)  # N x (k+1); fn renormalises it
        return fn(bucket_logprobs(s, t_ids.long()), teacher, beta)  # N

    extras = (teacher_logprobs.detach(), teacher_ids, teacher_tail.detach()[..., None])
    return KDTerm(row_fn, extras=extras, check=check)


def topk_divergence_sum(
    name: str,
    student_logits: Tensor,
    teacher_logprobs: Tensor,
    teacher_ids: Tensor,
    teacher_tail: Tensor,
    labels: Tensor,
    *,
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> TokenSum:
    """Σ over valid positions of :func:`topk_divergence_term`."""
    term = topk_divergence_term(name, teacher_logprobs, teacher_ids, teacher_tail, beta=beta)
    return kd_sum(term, student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size)

