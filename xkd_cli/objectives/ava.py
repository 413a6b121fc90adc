"""AVA's objectives (Cai et al., AAAI 2025, "Approximated Variational Alignment"; docs/method.md, "AVA") and
the two baselines it is measured against, Bradley–Terry reward modelling and DPO, as pure functions.

AVA reads the language model as a Q-function exactly as X-KD does (AVA Eq. 12 = X-KD Eq. 28, AVA's α = τ′)
and adds X-KD's experiential term F_ex (:mod:`.experiential`), which is AVA's ``−d_t + λ·log q_φ(δ_t)``:

F_d = Σ_t β·Q(y_{1:t}, y_{t+1}) + Σ_td [−d_t + λ·log N(δ_t; μ_t, σ_t²)]                    (AVA-d, Eq. 13)
F_p = Σ_t β·Q(y⁺) − Σ_t β·Q(y⁻) + Σ_{y ∈ {y⁺, y⁻}} Σ_td [−d_t + λ·log N(δ_t; μ_t, σ_t²)]     (AVA-p, Eq. 17)
F_c = log σ(r(y⁺) − r(y⁻)),  r(y) = μ at the last counted position of y                  (CER, Eq. 18)

The code minimises their negatives.  ``Σ_t`` runs over the counted positions (prompt and padding are
``-100``), ``Σ_td`` over the TD pairs (``m_td``: the last counted position has no successor, so no δ and no
KL).  β·Q is the paper's ``β·log softmax(α·π)``: for β ≠ 1 the Boltzmann normaliser of softmax(β·Q) is
dropped, as the paper drops it.  F_c is the log-sigmoid (Bradley–Terry's form; the paper prints σ without
the log) with weight 1.  A preference batch is ``2P`` rows, the P chosen responses first and then the P
rejected ones (row i and row P + i are pair i), as TRL's ``concatenated_forward`` lays it out: one forward,
one chunked pass over the logits, and the one Q column serves both β·Q and δ.

Normalisation: each part is a sum with its own count, for the training loop's ``(sum, count name)`` terms
(:meth:`AVAParts.terms`).  β·Q is divided by the step's counted positions (``tokens``, both sides of a
pair), F_ex by its TD pairs (``td_tokens``, both sides) and F_c by its preference pairs (``pairs``); each
count is known from the labels before any forward (:func:`ava_counts`), so gradient accumulation gives the
loss of one big batch exactly.

Baselines, on per-sequence numbers (one value per response; pair i is (chosen[i], rejected[i])):
Bradley–Terry ``−log σ(r⁺ − r⁻)`` (TRL ``RewardTrainer``) and DPO's sigmoid loss
``−log σ(β·[(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))])`` (TRL ``DPOTrainer``, β = 0.1, no
label smoothing), each summed over pairs with count ``pairs``.

Public API
----------
``AVAParams(beta=1.0, experiential=ExperientialParams(), reward="last")`` / ``DPOParams(beta=0.1)``
``AVAParts(likelihood, experiential, contrastive)``  the parts as sums with counts; ``.terms()``, ``.loss()``
``ava_d_sum(logits, labels, mu, log_sigma, params=..., ...)``   −F_d of demonstrations
``ava_p_sum(logits, labels, mu, log_sigma, params=..., ...)``   −F_p and −F_c of ``2P`` rows (chosen, rejected)
``ava_counts(labels, preference=...)``          the counts the parts are normalised by
``last_positions(labels)``                      index of each row's last counted position (−1: none)
``response_reward(mu, labels, how="last")``     a response's reward: μ at the last counted position, or Σ μ
``sequence_logprob(logits, labels, ...)``       Σ_t log π(y_t) over each row's counted positions
``bradley_terry_sum(chosen, rejected)``         Σ_pairs −log σ(r⁺ − r⁻)
``dpo_sum(policy_chosen, policy_rejected, ref_chosen, ref_rejected, params=...)``  DPO's sigmoid loss
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import RESPONSE_REWARDS, check_hparams
from xkd_cli.objectives.chunked import TokenSum, scatter_positions, td_mask, term_columns, token_logprobs, valid_mask
from xkd_cli.objectives.experiential import (
    ExperientialParams,
    ExperientialParts,
    check_reward_shapes,
    experiential_from_q,
    q_term,
)


@dataclass(frozen=True)
class AVAParams:
    """AVA's hyperparameters: β, the weight of the likelihood β·Q (paper: 1); λ, γ, τ′ (= AVA's α) and the
    reward head's position as X-KD's :class:`ExperientialParams`; ``reward``, which scalar scores a whole
    response and is what F_c compares (``last``: μ at the last counted position, the paper's F_c; ``sum``: Σ μ
    over the counted positions)."""

    beta: float = 1.0
    experiential: ExperientialParams = ExperientialParams()
    reward: str = "last"

    def __post_init__(self) -> None:
        check_hparams(ava_beta=self.beta)
        if self.reward not in RESPONSE_REWARDS:
            raise XKDError(f"reward must be one of {', '.join(RESPONSE_REWARDS)}, got {self.reward!r}.")


@dataclass(frozen=True)
class DPOParams:
    """DPO's β (TRL ``DPOConfig.beta``, default 0.1): the strength of the pull towards the reference."""

    beta: float = 0.1

    def __post_init__(self) -> None:
        check_hparams(dpo_beta=self.beta)


@dataclass(frozen=True)
class AVAParts:
    """One batch of AVA as sums with their counts (all totals are to be *minimised*).

    ``likelihood``    −β·Σ_t Q (AVA-d) or −β·(Σ_t Q(y⁺) − Σ_t Q(y⁻)) (AVA-p); count: counted positions, both sides.
    ``experiential``  Σ_td (d_t − λ·log q_t), X-KD's F_ex (:class:`ExperientialParts`, with its statistics);
                      count: TD pairs, both sides of a pair.
    ``contrastive``   −F_c = Σ_pairs −log σ(r⁺ − r⁻) (AVA-p; None for AVA-d); count (its ``tokens``): pairs.
    """

    likelihood: TokenSum
    experiential: ExperientialParts
    contrastive: TokenSum | None = None

    def terms(self) -> dict[str, tuple[Tensor, str]]:
        """The training loop's terms: name → (sum, name of its count in :func:`ava_counts`)."""
        terms = {"q": (self.likelihood.total, "tokens"), "ex": (self.experiential.total, "td_tokens")}
        if self.contrastive is not None:
            terms["cer"] = (self.contrastive.total, "pairs")
        return terms

    def counts(self) -> dict[str, Tensor]:
        """This batch's own counts, by the names :meth:`terms` uses."""
        counts = {"tokens": self.likelihood.tokens, "td_tokens": self.experiential.tokens}
        if self.contrastive is not None:
            counts["pairs"] = self.contrastive.tokens
        return counts

    def loss(self, counts: Mapping[str, Tensor | int] | None = None) -> Tensor:
        """Σ of each term over its count, as the training loop adds them (default: this batch's own counts;
        pass the whole step's for one micro-batch of it).  A count of 0 divides by 1 (its sum is 0 then)."""
        counts = self.counts() if counts is None else counts
        return sum(TokenSum(total, counts[key]).mean() for total, key in self.terms().values())


def ava_counts(labels: Tensor, *, preference: bool) -> dict[str, int]:
    """The counts :meth:`AVAParts.terms` are normalised by, from a micro-batch's labels before any forward:
    counted positions, TD pairs and, for a preference batch (``2P`` rows), the P pairs.  Add them over the
    micro-batches (and processes) of an optimizer step."""
    counts = {"tokens": int(valid_mask(labels).sum()), "td_tokens": int(td_mask(labels).sum())}
    if preference:
        counts["pairs"] = _pair_count(labels)
    return counts


def _pair_count(labels: Tensor) -> int:
    rows = labels.shape[0]
    if rows % 2:
        raise ValueError(f"a preference batch holds the chosen rows, then as many rejected rows; got {rows} rows")
    return rows // 2


def _q_and_experiential(logits: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, params: AVAParams,
                        vocab_size: int | None, chunk_size: int | None) -> tuple[Tensor, Tensor, ExperientialParts]:
    """Eq. 12's Q at the counted positions (``N``, with their flat indices ``b*T + t``) and F_ex from the same
    values: one chunked pass over the logits, one Q column for both the likelihood and δ."""
    ex = params.experiential
    check_reward_shapes(labels, mu, log_sigma)
    (q_values,), idx = term_columns([q_term(ex.tau)], logits, labels, vocab_size=vocab_size, chunk_size=chunk_size)
    q = scatter_positions(q_values, idx, labels.shape)  # B x T, 0 at ignored positions (never read: m_td)
    return q_values, idx, experiential_from_q(q, labels, mu, log_sigma, lam=ex.lam, gamma=ex.gamma)


def ava_d_sum(logits: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, *, params: AVAParams = AVAParams(),
              vocab_size: int | None = None, chunk_size: int | None = None) -> AVAParts:
    """−F_d (AVA-d, Eq. 13) of a batch of demonstrations: ``logits`` ``B x T x V`` (any dtype, computed in
    float32), ``labels`` ``B x T`` aligned with them, ``mu`` / ``log_sigma`` the reward head's ``B x T``.
    With λ = 0 and the head at its zero init the experiential part and its gradients are exactly 0, so the
    loss is −β·Σ Q, value and gradient bit for bit."""
    q_values, _, experiential = _q_and_experiential(logits, labels, mu, log_sigma, params, vocab_size, chunk_size)
    # Σ of the contiguous column, as kd_sum sums a term: the λ = 0 reduction to −β·Σ Q is exact to the bit.
    likelihood = TokenSum(-params.beta * q_values.sum(), valid_mask(labels).sum())
    return AVAParts(likelihood, experiential)


def ava_p_sum(logits: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, *, params: AVAParams = AVAParams(),
              vocab_size: int | None = None, chunk_size: int | None = None) -> AVAParts:
    """−F_p (AVA-p, Eq. 17) and −F_c (CER, Eq. 18) of ``2P`` rows: the P chosen responses, then the P rejected
    ones in the same order (the tensors as in :func:`ava_d_sum`).  F_ex counts on both sides of a pair; F_c
    compares :func:`response_reward` (``params.reward``) of the two sides with a log-sigmoid."""
    pairs = _pair_count(labels)
    q_values, idx, experiential = _q_and_experiential(logits, labels, mu, log_sigma, params, vocab_size, chunk_size)
    chosen = idx < pairs * labels.shape[1]  # N: the positions in the first P rows
    likelihood = TokenSum(-params.beta * torch.where(chosen, q_values, -q_values).sum(), valid_mask(labels).sum())
    reward = response_reward(mu, labels, how=params.reward)  # 2P
    contrastive = bradley_terry_sum(reward[:pairs], reward[pairs:])
    return AVAParts(likelihood, experiential, contrastive)


def last_positions(labels: Tensor) -> Tensor:
    """``B`` int64: the index of each row's last counted position (not the last column: right padding is
    ignored, left padding is before it); −1 for a row with none."""
    columns = torch.arange(labels.shape[-1], device=labels.device).expand_as(labels)  # B x T
    return torch.where(valid_mask(labels), columns, -1).amax(-1)


def response_reward(mu: Tensor, labels: Tensor, *, how: str = "last") -> Tensor:
    """``B`` float32: the reward of each whole response from the reward head's means ``mu`` (``B x T``):
    ``last``, μ at its last counted position (what F_c compares, the paper's choice); ``sum``, Σ μ over its
    counted positions (the paper's RL objective, Eq. 19, sums them).  0 for a row without counted positions."""
    if how not in RESPONSE_REWARDS:
        raise XKDError(f"reward must be one of {', '.join(RESPONSE_REWARDS)}, got {how!r}.")
    if mu.shape != labels.shape:
        raise ValueError(f"mu {tuple(mu.shape)} must have the labels' shape {tuple(labels.shape)}")
    mu = mu.float()
    if how == "sum":
        return torch.where(valid_mask(labels), mu, 0.0).sum(-1)
    last = last_positions(labels)  # B
    picked = mu.gather(-1, last.clamp_min(0)[:, None]).squeeze(-1)  # B
    return torch.where(last >= 0, picked, 0.0)


def sequence_logprob(logits: Tensor, labels: Tensor, *, vocab_size: int | None = None,
                     chunk_size: int | None = None) -> Tensor:
    """``B`` float32: Σ_t log π(y_t) over each row's counted positions (a response's log-probability, what
    DPO compares; the prompt does not count).  Differentiable; detach it for a reference model's."""
    return token_logprobs(logits, labels, vocab_size=vocab_size, chunk_size=chunk_size).sum(-1)


def _pair_sum(margins: Tensor) -> TokenSum:
    """Σ_pairs −log σ(margin), with the number of pairs as its count."""
    return TokenSum(-F.logsigmoid(margins).sum(), torch.as_tensor(margins.numel(), device=margins.device))


def _check_pairs(*values: Tensor) -> None:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1 or any(v.ndim != 1 for v in values):
        raise ValueError(f"per-pair values must be 1-d tensors of one length, got shapes {sorted(shapes)}")


def bradley_terry_sum(chosen: Tensor, rejected: Tensor) -> TokenSum:
    """Σ_pairs −log σ(r⁺ − r⁻) (TRL ``RewardTrainer``'s loss without margin or centring) from one scalar reward
    per response (``P`` each); count: pairs.  ``.mean()`` is TRL's loss."""
    _check_pairs(chosen, rejected)
    return _pair_sum(chosen.float() - rejected.float())


def dpo_sum(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, *,
            params: DPOParams = DPOParams()) -> TokenSum:
    """DPO's sigmoid loss (TRL ``DPOTrainer``, ``loss_type="sigmoid"``, no label smoothing) summed over pairs,
    from per-response summed log-probabilities (``P`` each, :func:`sequence_logprob`); the reference's are
    constants.  Computed in TRL's order, so ``.mean()`` is TRL's loss to the last bit at the same dtype."""
    _check_pairs(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    chosen_logratios = policy_chosen.float() - ref_chosen.detach().float()
    rejected_logratios = policy_rejected.float() - ref_rejected.detach().float()
    return _pair_sum(params.beta * (chosen_logratios - rejected_logratios))
