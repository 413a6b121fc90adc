"""The MiniLLM baseline's pieces (Gu et al., 2024; microsoft/LMOps minillm/losses.py and sampler.py;
docs/method.md, "MiniLLM"): per-token rewards, length-normalised discounted advantages, whitening,
teacher-mixed sampling with its importance weight, and the PPO-clipped policy-gradient loss.

Its single-step term Σ_v p_S log(p_S / p_T) is ``divergence_sum("rkl", ...)``
(:mod:`xkd_cli.objectives.divergences`; unweighted, as in MiniLLM's ``_reg_loss``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from xkd_cli.objectives.chunked import TokenSum, valid_mask
from xkd_cli.core.hparams import check_hparams


@dataclass(frozen=True)
class MiniLLMParams:
    """MiniLLM's hyperparameters: the teacher-mixed sampling weight, the PPO clip range and the return discount
    (MiniLLM's own values by default)."""

    mix: float = 0.2
    clip: float = 0.2
    discount: float = 0.95

    def __post_init__(self) -> None:
        check_hparams(mix=self.mix, clip=self.clip, discount=self.discount)


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
