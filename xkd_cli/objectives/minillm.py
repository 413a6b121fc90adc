"""The MiniLLM baseline's pieces (Gu et al., 2024; microsoft/LMOps minillm/losses.py and sampler.py;
docs/method.md, "MiniLLM"): per-token rewards, length-normalised discounted advantages, whitening,
teacher-mixed sampling with its importance weight, the PPO-clipped policy-gradient loss and the numbers
that show a run collapsing (:func:`ppo_stats`, :func:`sample_stats`).

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
    """MiniLLM's hyperparameters, the authors' values by default (LMOps ``minillm/arguments.py`` and
    ``scripts/gpt2/minillm/train_base_xl.sh``): the teacher-mixed sampling weight (``--teacher-mixed-alpha
    0.2``), the PPO clip range (``--cliprange 0.2``), the return discount (``--gamma 0.95``), whether the
    advantages are whitened over the batch (``_get_advantages_and_returns(use_whitening=True)``, always on
    there) and the weight of the language-modelling term (``--lm-coef 1``; xkd takes it on the task's
    ground-truth targets, the authors on a pre-training corpus). How many policy updates each batch of
    rollouts gets (``--ppo-epochs 4``) is the data source's business (:class:`~xkd_cli.training.sources.TeacherMixed`)."""

    mix: float = 0.2
    clip: float = 0.2
    discount: float = 0.95
    whiten: bool = True
    lm_weight: float = 1.0

    def __post_init__(self) -> None:
        check_hparams(mix=self.mix, clip=self.clip, discount=self.discount, lm_weight=self.lm_weight)


def minillm_rewards(teacher_logprobs: Tensor, old_logprobs: Tensor, labels: Tensor) -> Tensor:
    """Per-token reward r_t = log p_T(y_t) − log p_old(y_t) (``B x T``, detached, 0 where ignored).
    ``old_logprobs`` are the student's at sampling time (MiniLLM's ``t_rewards + ent_rewards``)."""
    r = teacher_logprobs.detach().float() - old_logprobs.detach().float()
    return torch.where(valid_mask(labels), r, torch.zeros_like(r))


def minillm_advantages(rewards: Tensor, labels: Tensor, *, discount: float = 0.95) -> Tensor:
    """Length-normalised discounted return A_t = (Σ_{k≥t} discount^{k−t} r_k) / (#valid positions ≥ t)
    (``B x T``, detached, 0 where ignored), as MiniLLM's ``_get_advantages_and_returns``.
    MiniLLM then whitens the result over the batch (on by default there): see :func:`masked_whiten`."""
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
    """(x − mean) / sqrt(var + eps) over the valid positions (0 elsewhere), var the population variance.
    MiniLLM whitens its advantages like this by default (``utils.whiten``), but over every position of the
    padded batch, padding's zeros included, with the unbiased variance; here only sampled tokens count, so an
    example's advantages do not depend on how far the others are padded.  It couples the examples of a
    batch: a whitened loss depends on how a step is split into micro-batches."""
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


def clipped_fraction(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, labels: Tensor, *,
                     weights: Tensor | None = None, clip: float = 0.2) -> Tensor:
    """The share of valid positions where PPO's clip decides the loss (its gradient is 0 there): the
    clipped term is the larger one, ρ outside [1 − clip, 1 + clip] on the side the advantage pushes it."""
    m = valid_mask(labels)
    ratio = torch.where(m, logprobs.detach().float() - old_logprobs.detach().float(), 0.0).exp()
    if weights is not None:
        ratio = ratio * weights.detach().float()
    adv = advantages.detach().float()
    clipped = ((adv > 0) & (ratio > 1.0 + clip)) | ((adv < 0) & (ratio < 1.0 - clip))
    return (clipped & m).sum()


def sample_stats(labels: Tensor) -> dict[str, Tensor]:
    """Sums over a batch of samples that show degeneration: the number of samples, their total length, and
    the sum over samples of each one's distinct-token share (distinct tokens / length; one token repeated
    gives 1/length).  Means follow by dividing by ``samples``."""
    m = valid_mask(labels)
    lengths = m.sum(1)  # B
    distinct = torch.stack([labels[b][m[b]].unique().numel() * torch.ones((), device=labels.device)
                            for b in range(labels.shape[0])]) if labels.shape[0] else lengths.float()
    share = torch.where(lengths > 0, distinct / lengths.clamp_min(1), torch.zeros_like(distinct))
    return {"samples": torch.tensor(float(labels.shape[0]), device=labels.device),
            "length": lengths.sum().float(), "distinct": share.sum()}
