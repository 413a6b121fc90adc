"""The experiential term F_ex of X-KD (docs/method.md, "The experiential term"; Eq. 14, 16, 20, 28).

Q[b,t] = τ'·P[b,t,y_t] − logsumexp_v τ'·P[b,t,v] with P = softmax(student logits)   (Eq. 28)
δ[b,t] = Q[b,t] − γ·Q[b,t+1] on m_td[b,t] = m[b,t] & m[b,t+1]                       (Eq. 16)
KL_t = 0.5·(σ² + μ² − 1) − log σ       (KL(N(μ,σ²) ‖ N(0,1)), the Gaussian prior of Table 7)
log q_t = −0.5·log 2π − log σ − (δ_t − μ)² / (2σ²)
F_ex = Σ m_td·(KL_t − λ·log q_t)                                                       (Eq. 20)
With λ = 0 and the head at its zero init (μ = 0, log σ = 0) the value and every gradient of F_ex
are exactly 0, so adding it leaves the baseline's gradients bit for bit unchanged.

μ and log σ come from the reward head (:class:`xkd_cli.objectives.reward.RewardHead`); Q's V-wide
part runs on the chunked engine (:mod:`xkd_cli.objectives.chunked`), the rest on ``B x T`` tensors.

Public API
----------
``q_term(tau)``                                 Eq. 28's Q as a :class:`~xkd_cli.objectives.chunked.KDTerm`
``experiential_sum(student_logits, labels, mu, log_sigma, ...)`` -> ``ExperientialParts(total, tokens,
stats)`` (F_ex, Eq. 20; ``.mean(denominator=None)``, ``.summary()``)
``kd_experiential_sum(term, student_logits, labels, mu, log_sigma, ...)``
                                                the KD term and F_ex in one pass (the X-variants):
                                                one gradient buffer for both, same values bit for bit
``experiential_from_q(q, labels, mu, log_sigma, ...)``
                                                F_ex from ``B x T`` Q-values already computed (AVA reuses them)
``summarize_stats(stats, tokens)``              means / stds of the experiential statistics
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import REWARD_POSITIONS, check_hparams
from xkd_cli.objectives.chunked import KDTerm, TokenSum, scatter_positions, td_mask, term_columns, valid_mask

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class ExperientialParams:
    """The experiential term's hyperparameters (Eq. 20, 28; docs/method.md): the weight λ, the TD discount γ,
    Q's τ′, and which hidden state the reward head reads (``reward_position``, :class:`RewardHead`)."""

    lam: float = 0.001
    gamma: float = 1.0
    tau: float = 1.0
    reward_position: str = "next"

    def __post_init__(self) -> None:
        check_hparams(lam=self.lam, gamma=self.gamma, tau=self.tau)
        if self.reward_position not in REWARD_POSITIONS:
            raise XKDError(f"reward_position must be one of {', '.join(REWARD_POSITIONS)}, got {self.reward_position!r}.")


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
        return TokenSum(self.total, self.tokens).mean(denominator)

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
    """The X-variants' two losses in one chunked pass: Σ of the KD ``term`` (as
    :func:`~xkd_cli.objectives.chunked.kd_sum`; None when ``term`` is None) and F_ex (as
    :func:`experiential_sum`), the same values and gradients as computing them apart, but each chunk's
    student rows are read once and a single ``B x T x V`` gradient is written (apart, the two gradients
    meet in a second full-size buffer: ``bench/loss_memory.py``)."""
    check_hparams(lam=lam, gamma=gamma, tau=tau)
    check_reward_shapes(labels, mu, log_sigma)
    terms = [q_term(tau)] if term is None else [term, q_term(tau)]
    # The KD column is only summed. At λ = 0 the Q column has no gradient, and the KD column's, taken in the
    # forward, is all (the baseline's own, bit for bit); at λ > 0 the backward's pass for Q gives it anyway.
    summed = (0,) if term is not None and lam == 0 else ()
    columns, idx = term_columns(terms, student_logits, labels, vocab_size=vocab_size, chunk_size=chunk_size,
                                summed=summed)
    kd = None if term is None else TokenSum(columns[0].sum(), valid_mask(labels).sum())
    q = scatter_positions(columns[-1], idx, labels.shape)  # B x T, 0 at ignored positions (never read: m_td)
    return kd, experiential_from_q(q, labels, mu, log_sigma, lam=lam, gamma=gamma)


def check_reward_shapes(labels: Tensor, mu: Tensor, log_sigma: Tensor) -> None:
    """``mu`` and ``log_sigma`` (the reward head's outputs) must have the labels' ``B x T`` shape."""
    if mu.shape != labels.shape or log_sigma.shape != labels.shape:
        raise ValueError(
            f"mu {tuple(mu.shape)} and log_sigma {tuple(log_sigma.shape)} must have the labels' shape {tuple(labels.shape)}"
        )


def experiential_from_q(q: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, *, lam: float = 0.001,
                        gamma: float = 1.0) -> ExperientialParts:
    """F_ex (Eq. 16, 20) from Q-values already computed: ``q`` is ``B x T`` float32 (Eq. 28's Q at every
    counted position, anything at ignored ones: only the TD pairs of ``m_td`` are read), ``mu`` /
    ``log_sigma`` the reward head's ``B x T`` outputs.  The V-wide part (Q) stays with the caller's one
    chunked pass; AVA (:mod:`.ava`) reuses the same Q for its likelihood term."""
    check_hparams(lam=lam, gamma=gamma)
    check_reward_shapes(labels, mu, log_sigma)
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
    return ExperientialParts(total=masked_sum(per_position), tokens=m_td.sum(), stats=stats)
