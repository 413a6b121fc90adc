"""The chunked evaluation every token loss runs on: per-position row functions evaluated over the counted
positions of ``B x T x V`` logits, in float32 chunks, with a gradient for the logits.

Conventions (docs/method.md, "Notation")
----------------------------------------
* ``student_logits`` / ``teacher_logits`` are ``B x T x V`` in any dtype; every loss is computed in
  float32.  ``labels`` is ``B x T`` and aligned with the logits: ``labels[:, t]`` is the token that
  ``logits[:, t]`` predicts, ``-100`` (:data:`xkd_cli.data.batches.IGNORE`) marks a position that does
  not count.
* Every loss returns a **sum over counted positions together with their count** (:class:`TokenSum`,
  :class:`~xkd_cli.objectives.experiential.ExperientialParts`), never a mean.  The trainer divides the
  sums of all micro-batches of one optimizer step by the number of counted positions of that whole
  step (:func:`valid_mask`, :func:`td_mask` count them from the labels before any forward pass), so
  gradient accumulation and data parallelism give exactly the loss of one big batch.
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
* Fused head: wherever logits are taken, a :class:`~xkd_cli.models.head.HeadLogits` (last hidden states
  and output head, ``forward(..., head=...)``) may stand instead: each chunk's logits are then made from
  its hidden rows, in the forward and again in the backward, which writes the hidden states' gradient
  (``B x T x H``) and adds up the head's weight and bias gradients chunk by chunk; a KD sum's gradient is
  taken in the forward instead, and its backward makes no logits (:class:`ChunkedRows`).  No ``B x T x V``
  tensor exists at all (``bench/fused_head.py``); values and gradients equal the made logits' to float
  rounding.

Public API
----------
``CHUNK_ELEMENTS``
``Logits``                                      ``B x T x V`` tensor or ``HeadLogits`` (both are taken everywhere)
``TokenSum(total, tokens)``                     sum over positions + count; ``.mean(denominator=None)``
``valid_mask(labels)`` / ``td_mask(labels)``   ``B x T`` / ``B x (T-1)`` bool masks of counted positions
``KDTerm``                                      a per-position loss ready for the chunked pass (built by
                                                ``nll_term()`` here, ``divergence_term`` /
                                                ``topk_divergence_term`` in :mod:`.divergences`,
                                                ``q_term`` in :mod:`.experiential`)
``kd_sum(term, student_logits, labels, ...)``   Σ of a term over valid positions -> ``TokenSum``
``term_columns(terms, student_logits, labels, ...)``
                                                several terms' per-position values from one pass
``scatter_positions(values, idx, shape)``       per-position values back into a ``B x T`` tensor
``token_logprobs(logits, labels, ...)``         ``B x T`` float32 log p(y_t), 0 where ignored
``nll_term()`` / ``nll_sum(student_logits, labels, ...)``
                                                NLL of the labels (sft / seqkd, Eq. 1/18)

The same math without chunking or masking tricks, for reading and as the tests' oracle:
:mod:`xkd_cli.objectives.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from xkd_cli.data.batches import IGNORE
from xkd_cli.core.hparams import check_hparams
from xkd_cli.models.head import HeadLogits
from xkd_cli.objectives.row_pass import ChunkedRows, RowFn, RowPlan, Source

CHUNK_ELEMENTS = 2**22  # default chunk: this many float32 entries per N x V intermediate


# --------------------------------------------------------------------------------------------
# Results and masks
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


def valid_mask(labels: Tensor) -> Tensor:
    """``B x T`` bool: the positions every token loss counts."""
    return labels != IGNORE


def td_mask(labels: Tensor) -> Tensor:
    """``B x (T-1)`` bool: m_td[b,t] = m[b,t] & m[b,t+1] (Eq. 16 needs the next action)."""
    m = valid_mask(labels)
    return m[:, :-1] & m[:, 1:]


# --------------------------------------------------------------------------------------------
# Chunked evaluation over valid positions
# --------------------------------------------------------------------------------------------

Logits = Tensor | HeadLogits  # B x T x V logits, made or to be made chunk by chunk (--fused-head)


def _shared_vocab(logits: Sequence[Logits], vocab_size: int | None) -> int:
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
    logits: Sequence[Logits],
    labels: Tensor,
    *,
    vocab_size: int | None,
    chunk_size: int | None,
    uses_targets: bool,
    extras: Sequence[Tensor] = (),
    summed: tuple[int, ...] = (),
) -> tuple[Tensor, Tensor]:
    """Apply ``row_fn`` to the valid positions of ``logits`` in float32 chunks of ``chunk_size`` rows
    (None: ``CHUNK_ELEMENTS // V``). ``summed``: the columns of the values (0 for a one-column ``row_fn``) that
    the caller does nothing with but sum, so that their gradient may be taken in the forward pass.

    Each of ``logits`` is a ``B x T x V`` tensor or a :class:`~xkd_cli.models.head.HeadLogits` (hidden states
    and output head: each chunk's logits are made from its rows of the hidden states, and never all at once).
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
    sources: list[Source] = []
    tensors: list[Tensor | None] = []
    for x in logits:
        if isinstance(x, HeadLogits):
            x = x.narrow_vocab(vocab)
            sources.append(Source(len(tensors), x._replace(hidden=None, weight=None, bias=None)))
            tensors += [x.hidden, x.weight, x.bias]
        else:
            sources.append(Source(len(tensors)))
            tensors.append(x if x.shape[-1] == vocab else x[..., :vocab])  # B x T x V
    per_chunk = chunk_size if chunk_size is not None else max(1, CHUNK_ELEMENTS // vocab)
    chunks = list(zip(idx.split(per_chunk), targets.split(per_chunk)))
    plan = RowPlan(row_fn, chunks, shape[-1], sources, len(tensors), summed)
    if torch.is_grad_enabled() and any(x.requires_grad for x in logits):
        return ChunkedRows.apply(plan, *tensors, *extras), idx
    return torch.cat([plan.run(i, [*tensors, *extras]) for i in range(len(chunks))]), idx


def scatter_positions(values: Tensor, idx: Tensor, shape: torch.Size) -> Tensor:
    """Place per-position ``values`` (N) at flat ``idx`` of a zero ``B x T`` float32 tensor (differentiable)."""
    return values.new_zeros(shape.numel()).index_copy(0, idx, values).view(shape)


@dataclass(frozen=True)
class KDTerm:
    """A per-position KD loss, ready for the chunked pass over the valid positions.

    ``row_fn([student rows, *logits rows, *extras rows], targets) -> N``: the student's rows first
    (float32, sliced to the vocabulary), then those of ``logits`` (other ``B x T x V`` logits, treated
    alike: the teacher's), then those of ``extras`` (``B x T x ...``, as they are).  ``check(labels,
    vocab)`` validates the inputs before any work.  Build one with :func:`nll_term`,
    :func:`~xkd_cli.objectives.divergences.divergence_term` or
    :func:`~xkd_cli.objectives.divergences.topk_divergence_term`; sum it with :func:`kd_sum`, or together
    with F_ex in one pass with :func:`~xkd_cli.objectives.experiential.kd_experiential_sum`.
    """

    row_fn: RowFn
    logits: tuple[Tensor, ...] = ()
    extras: tuple[Tensor, ...] = ()
    uses_targets: bool = False
    check: Callable[[Tensor, int], None] | None = None


def term_columns(
    terms: Sequence[KDTerm], student_logits: Tensor, labels: Tensor, *, vocab_size: int | None,
    chunk_size: int | None, summed: tuple[int, ...] = (),
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
        summed=summed,
    )
    # Contiguous columns: a strided sum may round differently, and the λ = 0 runs must match bit for bit.
    return [column.contiguous() for column in values.unbind(-1)], idx


def kd_sum(term: KDTerm, student_logits: Tensor, labels: Tensor, *, vocab_size: int | None = None,
           chunk_size: int | None = None) -> TokenSum:
    """Σ of ``term`` over the valid positions, with their count."""
    (values,), _ = term_columns([term], student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size,
                                summed=(0,))
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
    return scatter_positions(values, idx, labels.shape)


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
