"""Token-level losses for distillation: pure functions of tensors (no I/O, no models).

Conventions (METHOD.md, "Notation for one batch")
-------------------------------------------------
* ``student_logits`` / ``teacher_logits`` are ``B x T x V`` in any dtype; every loss is computed in
  float32.  ``labels`` is ``B x T`` and aligned with the logits: ``labels[:, t]`` is the token that
  ``logits[:, t]`` predicts, ``-100`` (:data:`IGNORE_INDEX`) marks a position that does not count.
* Every loss returns a **sum over counted positions together with their count** (:class:`TokenSum`,
  :class:`ExperientialParts`), never a mean.  The trainer divides the sums of all micro-batches of
  one optimizer step by the number of counted positions of that whole step (:func:`valid_mask`,
  :func:`td_mask` count them from the labels before any forward pass), so gradient accumulation and
  data parallelism give exactly the loss of one big batch.
* Teacher logits are constants: they are detached.  Gradients flow to the student logits (and to
  ``mu`` / ``log_sigma`` of the reward head).
* ``vocab_size``: when the logits are wider than the tokenizer (T5 pads its embedding to 32128
  while the tokenizer has 32100 entries) pass the tokenizer size; the logits are sliced to
  ``[..., :vocab_size]`` before any softmax.  Teacher and student logits of different widths
  without ``vocab_size`` are a ``ValueError``, never a silent truncation.
* Memory: only valid positions are gathered, in chunks of ``chunk_size`` rows (default ``None``:
  ``CHUNK_ELEMENTS // V`` rows, i.e. 16 MiB per float32 ``N x V`` intermediate); each chunk is
  recomputed in the backward (as under activation checkpointing), so only the float32
  intermediates of one chunk are alive at a time (forward and backward) instead of several float32
  copies of the whole ``B x T x V`` tensor.  Between forward and backward nothing but references to
  the logits is kept.  The backward writes each chunk's gradient into the logits' gradient (one
  ``B x T x V`` in the logits' dtype), the only full-size tensor it creates (``bench/loss_memory.py``
  measures it).  Chunked and unchunked results agree.

Public API
----------
``IGNORE_INDEX``, ``CHUNK_ELEMENTS``
``TokenSum(total, tokens)``                     sum over positions + count; ``.mean(denominator=None)``
``valid_mask(labels)`` / ``td_mask(labels)``   ``B x T`` / ``B x (T-1)`` bool masks of counted positions
``token_logprobs(logits, labels, ...)``         ``B x T`` float32 log p(y_t), 0 where ignored
``KDTerm``                                      a per-position loss ready for the chunked pass:
                                                ``nll_term()``, ``divergence_term(name, teacher_logits, ...)``,
                                                ``topk_divergence_term(name, logprobs, ids, tail, ...)``,
                                                ``q_term(tau)`` (Eq. 28's Q)
``kd_sum(term, student_logits, labels, ...)``   Σ of a term over valid positions -> ``TokenSum``
``kd_experiential_sum(term, student_logits, labels, mu, log_sigma, ...)``
                                                the term and F_ex in one pass (the X-variants):
                                                one gradient buffer for both, same values bit for bit
``nll_sum(student_logits, labels, ...)``        NLL of the labels (sft / seqkd, Eq. 1/18)
``DIVERGENCES``                                 Registry name -> row function ``(s, t, beta) -> N``
                                                on float32 ``N x V`` logits: jsd, fkl, rkl, mix, tvd
``divergence_sum(name, student_logits, teacher_logits, labels, ...)``
``teacher_topk(teacher_logits, k)`` / ``topk_divergence_sum(name, student_logits, logprobs, ids, tail, labels, ...)``
                                                the same divergences against a top-k + tail teacher
``experiential_sum(student_logits, labels, mu, log_sigma, ...)`` -> ``ExperientialParts(total, tokens,
stats)`` (F_ex, Eq. 20; ``.mean(denominator=None)``, ``.summary()``)
``summarize_stats(stats, tokens)``              means / stds of the experiential statistics
``hparam_problems(...)`` / ``check_hparams(...)`` range checks (XKDError with the fix)
MiniLLM baseline: ``minillm_rewards``, ``minillm_advantages``, ``masked_whiten``,
``teacher_mixed_logprobs``, ``mixed_sampling_weights``, ``ppo_clip_sum``; its single-step term
Σ_v p_S log(p_S / p_T) is ``divergence_sum("rkl", ...)`` (unweighted, as in MiniLLM's ``_reg_loss``).

Divergences (all per position, summed over positions; p_T teacher, p_S student)
-------------------------------------------------------------------------------
* ``fkl``  KL(p_T ‖ p_S)                                   (Eq. 2/3, supervised KD)
* ``rkl``  KL(p_S ‖ p_T)
* ``jsd``  generalized JSD(β) (Eq. 5, GKD/TRL): M = β·p_T + (1-β)·p_S built in log space,
  β·KL(p_T ‖ M) + (1-β)·KL(p_S ‖ M); β = 0 is ``fkl`` and β = 1 is ``rkl`` (the limits of
  JSD_β/β and JSD_β/(1-β)).
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

The experiential term (METHOD.md "The experiential term"; Eq. 14, 16, 20, 28)
-----------------------------------------------------------------------------
Q[b,t] = τ'·P[b,t,y_t] − logsumexp_v τ'·P[b,t,v] with P = softmax(student logits)   (Eq. 28)
δ[b,t] = Q[b,t] − γ·Q[b,t+1] on m_td[b,t] = m[b,t] & m[b,t+1]                       (Eq. 16)
KL_t = 0.5·(σ² + μ² − 1) − log σ       (KL(N(μ,σ²) ‖ N(0,1)), the Gaussian prior of Table 7)
log q_t = −0.5·log 2π − log σ − (δ_t − μ)² / (2σ²)
F_ex = Σ m_td·(KL_t − λ·log q_t)                                                       (Eq. 20)
With λ = 0 and the head at its zero init (μ = 0, log σ = 0) the value and every gradient of F_ex
are exactly 0, so adding it leaves the baseline's gradients bit for bit unchanged.

Hyperparameter checks
---------------------
Each public function checks its own hyperparameters and raises :class:`~xkd_cli.core.errors.XKDError`.
The CLI can collect every problem at once with :func:`hparam_problems` (a list of one-line
messages) or raise them together with :func:`check_hparams`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from xkd_cli.core.errors import XKDError
from xkd_cli.core.registry import Registry

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 2**22  # default chunk: this many float32 entries per N x V intermediate
NEG_INF = float("-inf")
LOG_2PI = math.log(2 * math.pi)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class TokenSum(NamedTuple):
    """A loss summed over counted positions, and how many positions it sums over."""

    total: Tensor  # scalar float32, differentiable
    tokens: Tensor  # scalar int64

    def mean(self, denominator: Tensor | int | None = None) -> Tensor:
        """``total / denominator`` (default: this batch's own count); 0 when nothing counts."""
        return _safe_div(self.total, self.tokens if denominator is None else denominator)


def _safe_div(total: Tensor, denominator: Tensor | int) -> Tensor:
    return total / torch.as_tensor(denominator, device=total.device).clamp_min(1)


@dataclass(frozen=True)
class ExperientialParts:
    """F_ex of one batch (Eq. 20), as sums over the TD positions (``m_td``).

    ``total``   Σ m_td·(KL_t − λ·log q_t), scalar float32, differentiable.
    ``tokens``  number of TD positions, scalar int64 (== ``td_mask(labels).sum()``).
    ``stats``   detached float32 scalar sums over the TD positions, so micro-batches add up:
                ``kl`` (Σ KL_t), ``logq`` (Σ log q_t), ``delta``, ``delta_sq``, ``mu``, ``mu_sq``,
                ``sigma``, ``sigma_sq`` (first and second moments).  See :func:`summarize_stats`.
    """

    total: Tensor
    tokens: Tensor
    stats: dict[str, Tensor]

    def mean(self, denominator: Tensor | int | None = None) -> Tensor:
        """``total / denominator`` (default: this batch's TD count); 0 when nothing counts."""
        return _safe_div(self.total, self.tokens if denominator is None else denominator)

    def summary(self) -> dict[str, float]:
        return summarize_stats(self.stats, self.tokens)


def summarize_stats(stats: dict[str, Tensor | float], tokens: Tensor | int) -> dict[str, float]:
    """Means of ``kl`` / ``logq`` and mean/std of ``delta`` / ``mu`` / ``sigma`` from summed moments
    (possibly added over several micro-batches).  Everything is 0.0 when ``tokens`` is 0."""
    n = float(tokens)
    if n == 0:
        keys = ("kl", "logq", "delta_mean", "delta_std", "mu_mean", "mu_std", "sigma_mean", "sigma_std")
        return dict.fromkeys(keys, 0.0)
    out = {"kl": float(stats["kl"]) / n, "logq": float(stats["logq"]) / n}
    for name in ("delta", "mu", "sigma"):
        mean = float(stats[name]) / n
        out[f"{name}_mean"] = mean
        out[f"{name}_std"] = math.sqrt(max(float(stats[f"{name}_sq"]) / n - mean * mean, 0.0))
    return out


# --------------------------------------------------------------------------------------------
# Masks and hyperparameters
# --------------------------------------------------------------------------------------------


def valid_mask(labels: Tensor) -> Tensor:
    """``B x T`` bool: the positions every token loss counts."""
    return labels != IGNORE_INDEX


def td_mask(labels: Tensor) -> Tensor:
    """``B x (T-1)`` bool: m_td[b,t] = m[b,t] & m[b,t+1] (Eq. 16 needs the next action)."""
    m = valid_mask(labels)
    return m[:, :-1] & m[:, 1:]


def hparam_problems(
    *,
    beta: float | None = None,
    temperature: float | None = None,
    lam: float | None = None,
    gamma: float | None = None,
    tau: float | None = None,
    chunk_size: int | None = None,
    mix: float | None = None,
    clip: float | None = None,
    discount: float | None = None,
) -> list[str]:
    """One line per out-of-range hyperparameter (those given as None are not checked)."""
    checks = [  # (name, value, ok, requirement)
        ("beta", beta, lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1] (0 = forward KL, 1 = reverse KL)"),
        ("temperature", temperature, lambda v: v > 0.0, "must be > 0 (1.0 leaves the logits as they are)"),
        ("lambda", lam, lambda v: v >= 0.0, "(experiential weight) must be >= 0 (paper: 0.001; 0 = baseline)"),
        ("gamma", gamma, lambda v: 0.0 <= v <= 1.0, "(TD discount) must lie in [0, 1] (paper: 1.0)"),
        ("tau", tau, lambda v: v > 0.0, "(Boltzmann temperature tau') must be > 0 (paper: 1.0)"),
        ("chunk_size", chunk_size, lambda v: v >= 1 and float(v).is_integer(), "must be a positive integer"),
        ("mix", mix, lambda v: 0.0 <= v <= 1.0, "(teacher-mixed sampling) must lie in [0, 1] (MiniLLM: 0.2)"),
        ("clip", clip, lambda v: 0.0 <= v < 1.0, "(PPO clip range) must lie in [0, 1) (MiniLLM: 0.2)"),
        ("discount", discount, lambda v: 0.0 <= v <= 1.0, "(return discount) must lie in [0, 1] (MiniLLM: 0.95)"),
    ]
    problems = []
    for name, value, ok, requirement in checks:
        if value is None:
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            problems.append(f"{name} {requirement}, got {value!r}")
    return problems


def check_hparams(**hparams: float | int | None) -> None:
    """Raise one :class:`XKDError` naming every out-of-range hyperparameter (see :func:`hparam_problems`)."""
    problems = hparam_problems(**hparams)
    if problems:
        raise XKDError("; ".join(problems) + ".")


# --------------------------------------------------------------------------------------------
# Chunked evaluation over valid positions
# --------------------------------------------------------------------------------------------

RowFn = Callable[[Sequence[Tensor], Tensor], Tensor]  # (float32 N x V rows per logits tensor, N targets) -> N


def _shared_vocab(logits: Sequence[Tensor], vocab_size: int | None) -> int:
    widths = sorted({x.shape[-1] for x in logits})
    if vocab_size is None:
        if len(widths) > 1:
            raise ValueError(
                f"teacher and student logits have different vocabulary sizes {widths}; pass vocab_size="
                "<the shared tokenizer size> to slice both (a different tokenizer is not supported)"
            )
        return widths[0]
    if not 1 <= vocab_size <= widths[0]:
        raise ValueError(f"vocab_size={vocab_size} must lie in [1, {widths[0]}] (the narrowest logits)")
    return vocab_size


def _map_valid_rows(
    row_fn: RowFn,
    logits: Sequence[Tensor],
    labels: Tensor,
    *,
    vocab_size: int | None,
    chunk_size: int | None,
    uses_targets: bool,
    extras: Sequence[Tensor] = (),
) -> tuple[Tensor, Tensor]:
    """Apply ``row_fn`` to the valid positions of ``logits`` in float32 chunks of ``chunk_size`` rows
    (None: ``CHUNK_ELEMENTS // V``).

    ``extras`` are further ``B x T x ...`` tensors (any width and dtype, no gradient) whose rows are
    handed to ``row_fn`` after the logits' rows, as they are: neither sliced to the vocabulary nor cast.

    Returns the per-position values (``N`` float32, N = number of valid positions; ``N x K`` when
    ``row_fn`` returns K values per row) and the flat indices ``b*T + t`` of those positions.  With no valid position ``row_fn`` still runs once on
    ``0 x V`` rows, so the (zero) result stays connected to the logits and backward gives zeros.
    """
    check_hparams(chunk_size=chunk_size)
    shape = labels.shape
    if labels.ndim != 2:
        raise ValueError(f"labels must be B x T, got shape {tuple(shape)}")
    for x in logits:
        if x.shape[:-1] != shape:
            raise ValueError(f"logits of shape {tuple(x.shape)} do not match labels of shape {tuple(shape)}")
    for x in extras:
        if x.shape[:2] != shape:
            raise ValueError(f"a tensor of shape {tuple(x.shape)} does not match labels of shape {tuple(shape)}")
    vocab = _shared_vocab(logits, vocab_size)
    flat_labels = labels.reshape(-1)  # BT
    idx = valid_mask(flat_labels).nonzero().squeeze(1)  # N
    targets = flat_labels.index_select(0, idx)  # N
    if uses_targets and targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(
            f"labels hold token ids outside [0, {vocab}): ids {int(targets.min())}..{int(targets.max())}; "
            "labels must be ids of the (shared) tokenizer or -100"
        )
    # Views, not copies: reshaping a sliced tensor such as logits[:, :-1] would copy all of it. A slice
    # that keeps every column is left out: its backward would copy the whole gradient once more.
    sliced = [x if x.shape[-1] == vocab else x[..., :vocab] for x in logits]  # B x T x V each
    per_chunk = chunk_size if chunk_size is not None else max(1, CHUNK_ELEMENTS // vocab)
    chunks = list(zip(idx.split(per_chunk), targets.split(per_chunk)))
    plan = _RowPlan(row_fn, chunks, shape[-1], len(sliced))
    if torch.is_grad_enabled() and any(x.requires_grad for x in sliced):
        return _ChunkedRows.apply(plan, *sliced, *extras), idx
    return torch.cat([plan.run(i, [*sliced, *extras]) for i in range(len(chunks))]), idx


class _RowPlan(NamedTuple):
    row_fn: RowFn
    chunks: list[tuple[Tensor, Tensor]]  # (flat positions b*T + t, their targets) per chunk
    steps: int  # T
    n_logits: int  # the first n_logits tensors are logits (rows cast to float32), the rest extras

    def rows(self, i: int, tensors: Sequence[Tensor]) -> list[Tensor]:
        chunk = self.chunks[i][0]
        where = (chunk // self.steps, chunk % self.steps)
        return [x[where].float() if k < self.n_logits else x[where] for k, x in enumerate(tensors)]  # N x V each

    def run(self, i: int, tensors: Sequence[Tensor]) -> Tensor:
        return self.row_fn(self.rows(i, tensors), self.chunks[i][1])


class _ChunkedRows(torch.autograd.Function):
    """``row_fn`` over the valid rows, one chunk at a time, with a gradient for the logits.

    Forward keeps nothing but references to its inputs. Backward recomputes one chunk at a time (so the
    float32 intermediates of one chunk are alive at once, as under activation checkpointing) and writes
    each chunk's row gradients straight into one ``B x T x V`` buffer per logits tensor that needs a
    gradient. Checkpointing each chunk instead gave every chunk a full-size zero gradient of its own,
    added up chunk after chunk: a second ``B x T x V`` tensor at the peak and O(chunks · B·T·V) memory
    traffic. The values and gradients are the same bit for bit (each position's gradient comes from its
    one chunk; adding zeros changed nothing).
    """

    @staticmethod
    def forward(ctx, plan: _RowPlan, *tensors: Tensor) -> Tensor:
        ctx.plan = plan
        ctx.save_for_backward(*tensors)
        return torch.cat([plan.run(i, tensors) for i in range(len(plan.chunks))])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values: Tensor):
        plan, tensors = ctx.plan, ctx.saved_tensors
        wanted = [k for k in range(plan.n_logits) if ctx.needs_input_grad[1 + k]]
        grads: list[Tensor | None] = [None] * len(tensors)
        for k in wanted:
            grads[k] = torch.zeros_like(tensors[k])
        offset = 0
        for i, (chunk, targets) in enumerate(plan.chunks):
            with torch.enable_grad():
                rows = [r.detach().requires_grad_(k in wanted) for k, r in enumerate(plan.rows(i, tensors))]
                leaves = [rows[k] for k in wanted]
                out = plan.row_fn(rows, targets)  # N
                del rows  # the rows that need no gradient (the teacher's) are not needed by the backward
                upstream = grad_values[offset:offset + len(chunk)]
                found = torch.autograd.grad(out, leaves, upstream, allow_unused=True) \
                    if out.requires_grad else [None] * len(wanted)
            where = (chunk // plan.steps, chunk % plan.steps)
            for k, g in zip(wanted, found):
                if g is not None:
                    grads[k][where] = g.to(grads[k].dtype)
            del leaves, out, found  # free this chunk's rows and gradients before the next chunk's
            offset += len(chunk)
        return (None, *grads)


def _scatter(values: Tensor, idx: Tensor, shape: torch.Size) -> Tensor:
    """Place per-position ``values`` (N) at flat ``idx`` of a zero ``B x T`` float32 tensor (differentiable)."""
    return values.new_zeros(shape.numel()).index_copy(0, idx, values).view(shape)


@dataclass(frozen=True)
class KDTerm:
    """A per-position KD loss, ready for the chunked pass over the valid positions.

    ``row_fn([student rows, *logits rows, *extras rows], targets) -> N``: the student's rows first
    (float32, sliced to the vocabulary), then those of ``logits`` (other ``B x T x V`` logits, treated
    alike: the teacher's), then those of ``extras`` (``B x T x ...``, as they are).  ``check(labels,
    vocab)`` validates the inputs before any work.  Build one with :func:`nll_term`,
    :func:`divergence_term` or :func:`topk_divergence_term`; sum it with :func:`kd_sum`, or together with
    F_ex in one pass with :func:`kd_experiential_sum`.
    """

    row_fn: RowFn
    logits: tuple[Tensor, ...] = ()
    extras: tuple[Tensor, ...] = ()
    uses_targets: bool = False
    check: Callable[[Tensor, int], None] | None = None


def _term_columns(
    terms: Sequence[KDTerm], student_logits: Tensor, labels: Tensor, *, vocab_size: int | None,
    chunk_size: int | None,
) -> tuple[list[Tensor], Tensor]:
    """The per-position values of several terms over the same student logits, from one chunked pass:
    each chunk's student rows are gathered and cast once, and one backward writes one gradient for the
    logits (separate passes would each write a ``B x T x V`` gradient, then add them).  Returns one
    contiguous ``N`` float32 tensor per term and the flat indices of the valid positions."""
    logits = [student_logits] + [x for term in terms for x in term.logits]
    vocab = _shared_vocab(logits, vocab_size)
    for term in terms:
        if term.check is not None:
            term.check(labels, vocab)
    # The rows each term reads, by index into the pass's rows: the student's, then its own logits' and extras'.
    picks, first_logit, first_extra = [], 1, len(logits)
    for term in terms:
        picks.append([0, *range(first_logit, first_logit + len(term.logits)),
                      *range(first_extra, first_extra + len(term.extras))])
        first_logit += len(term.logits)
        first_extra += len(term.extras)

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        columns = [term.row_fn([rows[i] for i in pick], targets) for term, pick in zip(terms, picks)]
        return torch.stack(columns, -1)  # N x terms

    values, idx = _map_valid_rows(
        row_fn, logits, labels, vocab_size=vocab, chunk_size=chunk_size,
        uses_targets=any(term.uses_targets for term in terms), extras=[x for term in terms for x in term.extras],
    )
    # Contiguous columns: a strided sum may round differently, and the λ = 0 runs must match bit for bit.
    return [column.contiguous() for column in values.unbind(-1)], idx


def kd_sum(term: KDTerm, student_logits: Tensor, labels: Tensor, *, vocab_size: int | None = None,
           chunk_size: int | None = None) -> TokenSum:
    """Σ of ``term`` over the valid positions, with their count."""
    (values,), _ = _term_columns([term], student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size)
    return TokenSum(values.sum(), valid_mask(labels).sum())


# --------------------------------------------------------------------------------------------
# Likelihood
# --------------------------------------------------------------------------------------------


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``B x T`` float32 log p(y_t) under softmax(logits / temperature); 0 at ignored positions.
    Differentiable w.r.t. ``logits`` (detach the result for rewards / old log-probs)."""
    check_hparams(temperature=temperature)

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        scaled = rows[0] if temperature == 1.0 else rows[0] / temperature  # skip an N x V copy at 1.0
        return scaled.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # N

    values, idx = _map_valid_rows(
        row_fn, [logits], labels, vocab_size=vocab_size, chunk_size=chunk_size, uses_targets=True
    )
    return _scatter(values, idx, labels.shape)


def nll_term() -> KDTerm:
    """−log p_S(y_t) per position (sft on ground truth, seqkd on teacher samples; Eq. 1/18)."""

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        return -rows[0].log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # N

    return KDTerm(row_fn, uses_targets=True)


def nll_sum(
    student_logits: Tensor,
    labels: Tensor,
    *,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> TokenSum:
    """Σ −log p_S(y_t) over valid positions (sft on ground truth, seqkd on teacher samples; Eq. 1/18)."""
    return kd_sum(nll_term(), student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size)


# --------------------------------------------------------------------------------------------
# Divergences between teacher and student token distributions
# --------------------------------------------------------------------------------------------

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
    β = 0 and β = 1 are the limits JSD_β/β → KL(p_T ‖ p_S) and JSD_β/(1−β) → KL(p_S ‖ p_T)."""
    if beta == 0.0:
        return forward_kl(s, t)
    if beta == 1.0:
        return reverse_kl(s, t)
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)  # N x V each
    if not (torch.isneginf(ls).any() or torch.isneginf(lt).any()):
        # Full support on both sides (the usual case): every guard below is the identity, bit for bit,
        # value and gradient, but they double the cost of this function (bench/, issue 6).
        log_m = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))  # N x V
        return beta * _kl_full_support(lt, log_m) + (1.0 - beta) * _kl_full_support(ls, log_m)
    # log M = logaddexp(log β + log p_T, log(1−β) + log p_S).  Where both are -inf M is 0 and no KL
    # term uses it; fill those entries with 0 first because logaddexp's backward at (-inf, -inf) is NaN.
    both_zero = (ls == NEG_INF) & (lt == NEG_INF)
    log_m = torch.logaddexp(  # N x V
        lt.masked_fill(both_zero, 0.0) + math.log(beta), ls.masked_fill(both_zero, 0.0) + math.log1p(-beta)
    )
    return beta * _kl(lt, log_m) + (1.0 - beta) * _kl(ls, log_m)


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


def divergence_term(name: str, teacher_logits: Tensor, *, beta: float = 0.5, temperature: float = 1.0) -> KDTerm:
    """D_name(p_T ‖ p_S) per position, both distributions softmax(logits / temperature); the teacher is
    detached.  Sum it with :func:`kd_sum` (or with F_ex in one pass, :func:`kd_experiential_sum`)."""
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
    logp = logits.log_softmax(-1)  # N x V
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


# --------------------------------------------------------------------------------------------
# The experiential term F_ex (Eq. 14, 16, 20, 28)
# --------------------------------------------------------------------------------------------


def experiential_sum(
    student_logits: Tensor,
    labels: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    *,
    lam: float = 0.001,
    gamma: float = 1.0,
    tau: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> ExperientialParts:
    """F_ex of one batch (Eq. 20) from the student logits and the reward head's ``mu``, ``log_sigma``
    (``B x T`` each, the outputs of :class:`xkd_cli.objectives.reward.RewardHead`).  See the module docstring."""
    return kd_experiential_sum(None, student_logits, labels, mu, log_sigma, lam=lam, gamma=gamma, tau=tau,
                               vocab_size=vocab_size, chunk_size=chunk_size)[1]


def q_term(tau: float = 1.0) -> KDTerm:
    """Q(s_t, y_t) per position (Eq. 28), the student's own value estimate that F_ex's δ is made of."""
    check_hparams(tau=tau)

    def row_fn(rows: Sequence[Tensor], targets: Tensor) -> Tensor:
        # Eq. 28: Q(s_t, y_t) = log softmax_v(τ'·P_v)[y_t] — a softmax over probabilities, not logits.
        probs = rows[0].softmax(-1)  # N x V
        scaled = probs if tau == 1.0 else tau * probs  # 1·x is x exactly: skip an N x V copy
        return scaled.gather(-1, targets[:, None]).squeeze(-1) - scaled.logsumexp(-1)  # N

    return KDTerm(row_fn, uses_targets=True)


def kd_experiential_sum(
    term: KDTerm | None,
    student_logits: Tensor,
    labels: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    *,
    lam: float = 0.001,
    gamma: float = 1.0,
    tau: float = 1.0,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> tuple[TokenSum | None, ExperientialParts]:
    """The X-variants' two losses in one chunked pass: Σ of the KD ``term`` (as :func:`kd_sum`; None when
    ``term`` is None) and F_ex (as :func:`experiential_sum`), the same values and gradients as computing
    them apart, but each chunk's student rows are read once and a single ``B x T x V`` gradient is written
    (apart, the two gradients meet in a second full-size buffer: ``bench/loss_memory.py``)."""
    check_hparams(lam=lam, gamma=gamma, tau=tau)
    if mu.shape != labels.shape or log_sigma.shape != labels.shape:
        raise ValueError(
            f"mu {tuple(mu.shape)} and log_sigma {tuple(log_sigma.shape)} must have the labels' shape {tuple(labels.shape)}"
        )
    terms = [q_term(tau)] if term is None else [term, q_term(tau)]
    columns, idx = _term_columns(terms, student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size)
    kd = None if term is None else TokenSum(columns[0].sum(), valid_mask(labels).sum())
    q_values = columns[-1]
    q = _scatter(q_values, idx, labels.shape)  # B x T, 0 at ignored positions (never read: m_td)

    m_td = td_mask(labels)  # B x (T-1)
    delta = q[:, :-1] - gamma * q[:, 1:]  # B x (T-1), Eq. 16; gradients flow through both Q terms
    mu = mu[:, :-1].float()  # B x (T-1)
    log_sigma = log_sigma[:, :-1].float()  # B x (T-1)
    sigma_sq = torch.exp(2.0 * log_sigma)
    # KL(N(μ, σ²) ‖ N(0, 1)); at μ = 0, log σ = 0 both it and its gradient (μ, σ² − 1) are exactly 0.
    kl = 0.5 * (sigma_sq + mu * mu - 1.0) - log_sigma
    # log q_φ(δ_t) under N(μ, σ²); it enters only through λ·log q, so λ = 0 gives exact zero gradients.
    log_q = -0.5 * LOG_2PI - log_sigma - (delta - mu) ** 2 / (2.0 * sigma_sq)
    per_position = kl - lam * log_q  # Eq. 20

    def masked_sum(x: Tensor) -> Tensor:
        return torch.where(m_td, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()

    with torch.no_grad():
        sigma = log_sigma.exp()
        stats = {
            "kl": masked_sum(kl), "logq": masked_sum(log_q),
            "delta": masked_sum(delta), "delta_sq": masked_sum(delta * delta),
            "mu": masked_sum(mu), "mu_sq": masked_sum(mu * mu),
            "sigma": masked_sum(sigma), "sigma_sq": masked_sum(sigma * sigma),
        }
    return kd, ExperientialParts(total=masked_sum(per_position), tokens=m_td.sum(), stats=stats)


# --------------------------------------------------------------------------------------------
# MiniLLM baseline (Gu et al., 2024; microsoft/LMOps minillm/losses.py and sampler.py)
# --------------------------------------------------------------------------------------------


def minillm_rewards(teacher_logprobs: Tensor, old_logprobs: Tensor, labels: Tensor) -> Tensor:
    """Per-token reward r_t = log p_T(y_t) − log p_old(y_t) (``B x T``, detached, 0 where ignored).
    ``old_logprobs`` are the student's at sampling time (MiniLLM's ``t_rewards + ent_rewards``)."""
    r = teacher_logprobs.detach().float() - old_logprobs.detach().float()
    return torch.where(valid_mask(labels), r, torch.zeros_like(r))


def minillm_advantages(rewards: Tensor, labels: Tensor, *, discount: float = 0.95) -> Tensor:
    """Length-normalised discounted return A_t = (Σ_{k≥t} discount^{k−t} r_k) / (#valid positions ≥ t)
    (``B x T``, detached, 0 where ignored), as MiniLLM's ``_get_advantages_and_returns``.
    MiniLLM additionally whitens the result over the batch by default: see :func:`masked_whiten`."""
    check_hparams(discount=discount)
    m = valid_mask(labels)
    r = torch.where(m, rewards.detach().float(), torch.zeros((), device=rewards.device))  # B x T
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])  # B
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + discount * running
        returns[:, t] = running
    remaining = m.flip(1).cumsum(1).flip(1).clamp_min(1)  # B x T, valid positions from t to the end
    return torch.where(m, returns / remaining, torch.zeros_like(returns))


def masked_whiten(values: Tensor, labels: Tensor, eps: float = 1e-8) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the valid positions (0 elsewhere).  MiniLLM whitens its
    advantages like this (over all positions, padding included); note it couples the examples of a
    batch, so a whitened loss is not invariant to how a step is split into micro-batches."""
    m = valid_mask(labels)
    x = values.detach().float()
    n = m.sum().clamp_min(1)
    mean = torch.where(m, x, 0.0).sum() / n
    var = torch.where(m, (x - mean) ** 2, 0.0).sum() / n
    return torch.where(m, (x - mean) * torch.rsqrt(var + eps), torch.zeros_like(x))


def _log_mixture(ls: Tensor, lt: Tensor, mix: float) -> Tensor:
    """log((1 − mix)·p_S + mix·p_T) from log-probabilities (exact at mix = 0 and mix = 1)."""
    if mix == 0.0:
        return ls
    if mix == 1.0:
        return lt
    return torch.logaddexp(ls + math.log1p(-mix), lt + math.log(mix))


def teacher_mixed_logprobs(student_logits: Tensor, teacher_logits: Tensor, *, mix: float = 0.2) -> Tensor:
    """log((1 − mix)·p_S + mix·p_T) over the last dimension (float32): MiniLLM's teacher-mixed
    sampling distribution (sample the next token from its exp).  Shapes ``... x V``; no gradient."""
    check_hparams(mix=mix)
    ls = student_logits.detach().float().log_softmax(-1)  # ... x V
    lt = teacher_logits.detach().float().log_softmax(-1)  # ... x V
    return _log_mixture(ls, lt, mix)


def mixed_sampling_weights(
    student_logprobs: Tensor, teacher_logprobs: Tensor, labels: Tensor, *, mix: float = 0.2
) -> Tensor:
    """Importance weight of teacher-mixed samples w_t = p_S(y_t) / ((1 − mix)·p_S(y_t) + mix·p_T(y_t))
    from the sampled tokens' log-probs (``B x T``, detached, 1 where ignored).  As in MiniLLM's
    sampler the weight itself is not clipped; :func:`ppo_clip_sum` clips the product ratio·w."""
    check_hparams(mix=mix)
    ls, lt = student_logprobs.detach().float(), teacher_logprobs.detach().float()  # B x T each
    log_w = ls - _log_mixture(ls, lt, mix)
    return torch.where(valid_mask(labels), log_w.exp(), torch.ones_like(log_w))


def ppo_clip_sum(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    labels: Tensor,
    *,
    weights: Tensor | None = None,
    clip: float = 0.2,
) -> TokenSum:
    """Σ over valid positions of max(−A·ρ, −A·clip(ρ, 1 − clip, 1 + clip)), ρ = exp(log p − log p_old)·w
    (MiniLLM's ``_pg_loss``; ``w`` from :func:`mixed_sampling_weights`, 1 if None).  Gradients flow
    through ``logprobs`` only."""
    check_hparams(clip=clip)
    m = valid_mask(labels)
    log_ratio = torch.where(m, logprobs.float() - old_logprobs.detach().float(), 0.0)  # B x T
    ratio = log_ratio.exp()
    if weights is not None:
        ratio = ratio * weights.detach().float()
    adv = advantages.detach().float()
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip, 1.0 + clip))  # B x T
    return TokenSum(torch.where(m, loss, 0.0).sum(), m.sum())
