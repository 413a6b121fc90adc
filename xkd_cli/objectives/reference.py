"""The paper's loss math, written once and plainly: full tensors, no chunking, no vocabulary slicing and
no ``-inf`` guards beyond what the definitions need.  Read it beside docs/method.md (equation numbers
are the paper's).  The tests use it as the oracle for the chunked engine (:mod:`.chunked`,
:mod:`.divergences`, :mod:`.experiential`, :mod:`.ava`), which must agree with it up to float rounding.

``p_s`` / ``p_t`` are the student's / teacher's probability rows (softmax of the logits), ``... x V``;
the divergences return one value per row.  ``labels`` are ``B x T`` token ids, ``IGNORE`` where a
position does not count.  Where the engine departs from the plain definition it says so itself (a
student restricted to the teacher's support in the reverse direction, where the plain KL is +inf).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xkd_cli.data.batches import IGNORE

# ---------------------------------------------------------------------------------------------
# Divergences between token distributions (one value per row)
# ---------------------------------------------------------------------------------------------


def kl(p: Tensor, q: Tensor) -> Tensor:
    """KL(p ‖ q) = Σ_v p_v·log(p_v / q_v), with 0·log(0/q) = 0 (and +inf where q_v = 0 < p_v)."""
    return (p.xlogy(p) - p.xlogy(q)).sum(-1)


def forward_kl(p_s: Tensor, p_t: Tensor) -> Tensor:
    """KL(p_T ‖ p_S): supervised KD's token-level divergence (Eq. 2/3)."""
    return kl(p_t, p_s)


def reverse_kl(p_s: Tensor, p_t: Tensor) -> Tensor:
    """KL(p_S ‖ p_T): MiniLLM's direction."""
    return kl(p_s, p_t)


def generalized_jsd(p_s: Tensor, p_t: Tensor, beta: float) -> Tensor:
    """JSD_β = β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M) with M = β·p_T + (1−β)·p_S (Eq. 5, as GKD defines D_β).

    JSD_β itself vanishes at β = 0 and β = 1; the endpoints are its limits, JSD_β/β → KL(p_T ‖ p_S) as
    β → 0 and JSD_β/(1−β) → KL(p_S ‖ p_T) as β → 1, so β = 0 means forward and β = 1 reverse KL.
    """
    if beta == 0.0:
        return forward_kl(p_s, p_t)
    if beta == 1.0:
        return reverse_kl(p_s, p_t)
    # KL(p ‖ M) = −Σ p·log(M/p), and log(M/p) is taken from r = log(p_T/p_S) through log1p/expm1:
    # log(M/p_S) = log1p(β·expm1(r)), log(M/p_T) = log1p((1−β)·expm1(−r)).  Near β = 0 or 1 one of them
    # is O(β) or O(1−β), which the plain Σ p·log p − Σ p·log M would lose to cancellation.
    r = p_t.log() - p_s.log()
    kl_t = -_times(p_t, (-r).expm1().mul(1.0 - beta).log1p())
    kl_s = -_times(p_s, r.expm1().mul(beta).log1p())
    return beta * kl_t + (1.0 - beta) * kl_s


def _times(p: Tensor, x: Tensor) -> Tensor:
    """Σ_v p_v·x_v with 0·x = 0 (x may be ±inf or NaN where p_v = 0)."""
    return p.mul(x).where(p > 0, 0.0).sum(-1)


def beta_mix(p_s: Tensor, p_t: Tensor, beta: float) -> Tensor:
    """Appendix A.3's D_β = β·KL(π ‖ B) + (1−β)·KL(B ‖ π), π the teacher and B the student."""
    return beta * forward_kl(p_s, p_t) + (1.0 - beta) * reverse_kl(p_s, p_t)


def total_variation(p_s: Tensor, p_t: Tensor) -> Tensor:
    """TVD = ½·Σ_v |p_T(v) − p_S(v)|."""
    return 0.5 * (p_t - p_s).abs().sum(-1)


def divergence(name: str, p_s: Tensor, p_t: Tensor, beta: float = 0.5) -> Tensor:
    """The divergence the engine registers as ``name`` (jsd, fkl, rkl, mix, tvd), one value per row."""
    if name == "jsd":
        return generalized_jsd(p_s, p_t, beta)
    if name == "mix":
        return beta_mix(p_s, p_t, beta)
    return {"fkl": forward_kl, "rkl": reverse_kl, "tvd": total_variation}[name](p_s, p_t)


def uld(p_s: Tensor, p_t: Tensor) -> Tensor:
    """ULD's distance (Boizard et al., 2024) between two distributions over *different* vocabularies:
    the Wasserstein-1 distance of the sorted probability vectors, Σ_k |sort↓(p_S)_k − sort↓(p_T)_k|, the
    shorter vector padded with zeros.  One value per row; the rows may have different widths."""
    width = max(p_s.shape[-1], p_t.shape[-1])
    s = torch.nn.functional.pad(p_s, (0, width - p_s.shape[-1])).sort(-1, descending=True).values
    t = torch.nn.functional.pad(p_t, (0, width - p_t.shape[-1])).sort(-1, descending=True).values
    return (s - t).abs().sum(-1)


def token_nll(p: Tensor, y: Tensor) -> Tensor:
    """−log p(y): the token-level loss of SFT and sequence-level KD (Eq. 1/18); ``y`` indexes ``p``'s rows."""
    return -p.gather(-1, y[..., None]).squeeze(-1).log()


# ---------------------------------------------------------------------------------------------
# The experiential term (B x T tensors)
# ---------------------------------------------------------------------------------------------


def q_values(p: Tensor, labels: Tensor, tau: float = 1.0) -> Tensor:
    """Eq. 28: Q(s_t, y_t) = log [exp(τ'·p(y_t)) / Σ_v exp(τ'·p(v))], a Boltzmann inversion over the
    student's *probabilities* ``p`` (``B x T x V``), not its logits.  ``B x T``; an ignored position
    gets the Q of token 0, which no TD pair reads."""
    scaled = tau * p
    y = labels.masked_fill(labels == IGNORE, 0)
    return scaled.gather(-1, y[..., None]).squeeze(-1) - scaled.logsumexp(-1)


def td_mask(labels: Tensor) -> Tensor:
    """m_td[b, t] = m[b, t] and m[b, t+1], ``B x (T−1)``: a TD error needs the next action, so the last
    counted token of a row has none (it is never paired with a Q of 0)."""
    m = labels != IGNORE
    return m[:, :-1] & m[:, 1:]


def td_errors(q: Tensor, gamma: float = 1.0) -> Tensor:
    """Eq. 16: δ_t = Q(s_t, y_t) − γ·Q(s_{t+1}, y_{t+1}), ``B x (T−1)``; only the pairs of
    :func:`td_mask` count."""
    return q[:, :-1] - gamma * q[:, 1:]


def gaussian_kl_to_standard_normal(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½·(σ² + μ² − 1) − log σ: Eq. 20's KL of q_φ to the prior p(R) = N(0, 1)
    (Table 7's Gaussian prior)."""
    return 0.5 * (log_sigma.exp() ** 2 + mu**2 - 1.0) - log_sigma


def gaussian_log_likelihood(x: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(x; μ, σ²) = −½·log 2π − log σ − (x − μ)² / (2σ²): Eq. 20's log q_φ(δ_t)."""
    return -0.5 * math.log(2 * math.pi) - log_sigma - (x - mu) ** 2 / (2.0 * log_sigma.exp() ** 2)


def experiential_objective(p: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, *, lam: float,
                           gamma: float = 1.0, tau: float = 1.0) -> Tensor:
    """F_ex (Eq. 20) summed over a batch's TD pairs: Σ_t m_td·(KL(q_φ,t ‖ N(0, 1)) − λ·log q_φ,t(δ_t)),
    where q_φ,t = N(μ_t, σ_t²) is the reward head's output at position t (``mu`` / ``log_sigma`` are
    ``B x T``; the last position has no TD pair) and δ_t comes from Eq. 16 and 28.  Eq. 14 is this
    with the likelihood term log B_θ, which the KD loss supplies."""
    delta = td_errors(q_values(p, labels, tau), gamma)  # B x (T-1)
    mu, log_sigma = mu[:, :-1], log_sigma[:, :-1]
    per_pair = gaussian_kl_to_standard_normal(mu, log_sigma) - lam * gaussian_log_likelihood(delta, mu, log_sigma)
    return per_pair[td_mask(labels)].sum()


# ---------------------------------------------------------------------------------------------
# AVA and its baselines (Cai et al., AAAI 2025; docs/method.md, "AVA").  Objectives are maximised.
# ---------------------------------------------------------------------------------------------


def log_sigmoid(x: Tensor) -> Tensor:
    """log σ(x) = −log(1 + e^{−x}) (plainly: it overflows to −inf below about x = −700 in float64)."""
    return -torch.log1p(torch.exp(-x))


def ava_d_objective(p: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor, *, beta: float, lam: float,
                    gamma: float = 1.0, tau: float = 1.0) -> Tensor:
    """F_d (AVA Eq. 13) summed over a batch of demonstrations: β·Σ_t Q(y_{1:t}, y_{t+1}) over the counted
    positions plus Σ_td [−d_t + λ·log q_φ(δ_t)] over the TD pairs, the latter being −F_ex of X-KD
    (:func:`experiential_objective`).  β·Q is the paper's β·log softmax(α·π), without the normaliser of
    softmax(β·Q)."""
    q = q_values(p, labels, tau)  # B x T
    return beta * q[labels != IGNORE].sum() - experiential_objective(p, labels, mu, log_sigma, lam=lam, gamma=gamma,
                                                                     tau=tau)


def response_reward(mu: Tensor, labels: Tensor, how: str = "last") -> Tensor:
    """One reward per row: ``last``, μ at the row's last counted position; ``sum``, Σ μ over its counted
    positions; 0 for a row with none.  Written as a loop over rows."""
    rewards = []
    for mu_row, y_row in zip(mu, labels):
        counted = [t for t in range(len(y_row)) if int(y_row[t]) != IGNORE]
        if not counted:
            rewards.append(mu_row.new_zeros(()))
        elif how == "last":
            rewards.append(mu_row[counted[-1]])
        else:
            rewards.append(sum(mu_row[t] for t in counted))
    return torch.stack(rewards)


def ava_p_objective(chosen: tuple[Tensor, Tensor, Tensor, Tensor], rejected: tuple[Tensor, Tensor, Tensor, Tensor],
                    *, beta: float, lam: float, gamma: float = 1.0, tau: float = 1.0,
                    reward: str = "last") -> tuple[Tensor, Tensor]:
    """(F_p, F_c) summed over a batch of preference pairs (AVA Eq. 17, 18); ``chosen`` and ``rejected`` are
    each ``(p, labels, mu, log_sigma)`` with row i of both forming pair i.  F_p = β·Σ_t Q(y⁺) − β·Σ_t Q(y⁻) +
    Σ over both sides of Σ_td [−d_t + λ·log q_φ(δ_t)]; F_c = Σ_pairs log σ(r(y⁺) − r(y⁻)) with
    r = :func:`response_reward` (the paper prints σ without the log)."""
    def likelihood(p: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
        return beta * q_values(p, labels, tau)[labels != IGNORE].sum()

    def minus_f_ex(p: Tensor, labels: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
        return experiential_objective(p, labels, mu, log_sigma, lam=lam, gamma=gamma, tau=tau)

    f_p = likelihood(*chosen) - likelihood(*rejected) - minus_f_ex(*chosen) - minus_f_ex(*rejected)
    margins = response_reward(chosen[2], chosen[1], reward) - response_reward(rejected[2], rejected[1], reward)
    return f_p, log_sigmoid(margins).sum()


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """−log σ(r⁺ − r⁻) per pair: the Bradley–Terry reward model's loss (TRL ``RewardTrainer``)."""
    return -log_sigmoid(chosen - rejected)


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> Tensor:
    """DPO's sigmoid loss per pair (Rafailov et al., Eq. 7) from summed response log-probabilities:
    −log σ(β·[log π(y⁺)/π_ref(y⁺) − log π(y⁻)/π_ref(y⁻)])."""
    return -log_sigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)))
