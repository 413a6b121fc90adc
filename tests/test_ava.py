"""AVA's objectives (xkd_cli/objectives/ava.py) and its baselines, Bradley–Terry and DPO: hand-computed values,
the plain reference (values and gradients), the exact properties at λ = 0 and the head's zero init, gradient
accumulation, the reward of a whole response under both paddings, and TRL's own losses where trl is installed."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import hparam_problems
from xkd_cli.data.batches import IGNORE
from xkd_cli.objectives import ava, reference
from xkd_cli.objectives.ava import (
    AVAParams,
    DPOParams,
    ava_counts,
    ava_d_sum,
    ava_p_sum,
    bradley_terry_sum,
    dpo_sum,
    last_positions,
    response_reward,
    sequence_logprob,
)
from xkd_cli.objectives.chunked import kd_sum, token_logprobs
from xkd_cli.objectives.experiential import ExperientialParams, experiential_sum, q_term


def params(beta=1.0, lam=0.001, gamma=1.0, tau=1.0, reward="last") -> AVAParams:
    return AVAParams(beta=beta, experiential=ExperientialParams(lam=lam, gamma=gamma, tau=tau), reward=reward)


def grad_of(fn, *tensors):
    """The gradients of ``fn()`` for ``tensors`` (zeros for one it does not reach)."""
    for x in tensors:
        x.grad = None
    fn().backward()
    return [torch.zeros_like(x) if x.grad is None else x.grad.clone() for x in tensors]


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_()


def rand_rows(b: int, t: int, v: int, seed: int, lengths: list[tuple[int, int]]):
    """Logits, labels and the head's outputs of ``b`` rows; row i counts the columns lengths[i] = [start, end)
    (a masked prompt before, padding after)."""
    g = torch.Generator().manual_seed(seed)
    logits = leaf(2 * torch.randn(b, t, v, generator=g))
    labels = torch.randint(0, v, (b, t), generator=g)
    for row, (start, end) in enumerate(lengths):
        labels[row, :start] = IGNORE
        labels[row, end:] = IGNORE
    mu = leaf(0.5 * torch.randn(b, t, generator=g))
    log_sigma = leaf(0.5 * torch.randn(b, t, generator=g))
    return logits, labels, mu, log_sigma


# ------------------------------------------------------------------------------------------
# Hand-computed values
# ------------------------------------------------------------------------------------------

# V = 2 and zero logits: p = (1/2, 1/2) everywhere, so with τ' = 1 every Q = 1/2 − log(2·e^{1/2}) = −log 2.
# β = 2, λ = 1/2, γ = 1/2: every TD error δ = −log 2 + (1/2)·log 2 = −(1/2)·log 2 = −0.346574.
# Chosen y⁺ = [0, 1, 0] (3 counted), μ⁺ = [0.5, 0, 1], log σ⁺ = 0; TD pairs t = 0, 1 (t = 2 has no successor):
#   d_0 = ½(1 + 0.25 − 1) − 0 = 0.125, d_1 = 0
#   log q_0 = −½ log 2π − (δ − 0.5)²/2 = −0.918939 − (−0.846574)²/2 = −1.277282
#   log q_1 = −½ log 2π − δ²/2          = −0.918939 − 0.060057      = −0.978995
#   −β·Σ Q = 6 log 2 = 4.158883;   Σ (d_t − λ·log q_t) = 0.125 + 0.638641 + 0.489498 = 1.253139
#   F_d = −4.158883 − 1.253139 = −5.412022
# Rejected y⁻ = [1, 0, pad] (2 counted), μ⁻ = [−0.5, 0.25, 0], log σ⁻ = 0; one TD pair t = 0:
#   d_0 = 0.125, log q_0 = −0.918939 − (δ + 0.5)²/2 = −0.918939 − 0.011770 = −0.930708
#   −β·(Σ Q⁺ − Σ Q⁻) = −2·(−3 log 2 + 2 log 2) = 2 log 2 = 1.386294
#   F_ex over both sides: 1.253139 + 0.125 + 0.465354 = 1.843493
#   r⁺ = μ⁺ at t = 2 = 1, r⁻ = μ⁻ at t = 1 = 0.25: −F_c = −log σ(0.75) = log(1 + e^{−0.75}) = 0.386871
#   loss = 1.386294 / 5 tokens + 1.843493 / 3 TD pairs + 0.386871 / 1 pair = 1.278627
HAND = SimpleNamespace(
    labels=torch.tensor([[0, 1, 0], [1, 0, IGNORE]]),
    mu=torch.tensor([[0.5, 0.0, 1.0], [-0.5, 0.25, 0.0]]),
    params=params(beta=2.0, lam=0.5, gamma=0.5),
)


def test_ava_d_hand_value():
    out = ava_d_sum(torch.zeros(1, 3, 2), HAND.labels[:1], HAND.mu[:1], torch.zeros(1, 3), params=HAND.params)
    assert out.likelihood.total.item() == pytest.approx(4.158883, abs=2e-6)
    assert out.experiential.total.item() == pytest.approx(1.253139, abs=2e-6)
    assert out.contrastive is None
    assert {k: int(v) for k, v in out.counts().items()} == {"tokens": 3, "td_tokens": 2}
    assert out.likelihood.total.item() + out.experiential.total.item() == pytest.approx(5.412022, abs=4e-6)  # −F_d


def test_ava_p_hand_value():
    out = ava_p_sum(torch.zeros(2, 3, 2), HAND.labels, HAND.mu, torch.zeros(2, 3), params=HAND.params)
    assert out.likelihood.total.item() == pytest.approx(1.386294, abs=2e-6)
    assert out.experiential.total.item() == pytest.approx(1.843493, abs=2e-6)
    assert out.contrastive.total.item() == pytest.approx(0.386871, abs=2e-6)
    assert {k: int(v) for k, v in out.counts().items()} == {"tokens": 5, "td_tokens": 3, "pairs": 1}
    assert ava_counts(HAND.labels, preference=True) == {"tokens": 5, "td_tokens": 3, "pairs": 1}
    assert out.loss().item() == pytest.approx(1.278627, abs=2e-6)
    assert set(out.terms()) == {"q", "ex", "cer"}


def test_the_reference_reproduces_the_hand_values():
    p = torch.full((2, 3, 2), 0.5, dtype=torch.float64)
    mu, log_sigma = HAND.mu.double(), torch.zeros(2, 3, dtype=torch.float64)
    kw = dict(beta=2.0, lam=0.5, gamma=0.5)
    f_d = reference.ava_d_objective(p[:1], HAND.labels[:1], mu[:1], log_sigma[:1], **kw)
    assert f_d.item() == pytest.approx(-5.412022, abs=2e-6)
    sides = [(p[i:i + 1], HAND.labels[i:i + 1], mu[i:i + 1], log_sigma[i:i + 1]) for i in (0, 1)]
    f_p, f_c = reference.ava_p_objective(*sides, **kw)
    assert f_p.item() == pytest.approx(-(1.386294 + 1.843493), abs=4e-6)
    assert f_c.item() == pytest.approx(-0.386871, abs=2e-6)


def test_baselines_hand_values():
    # DPO, β = 0.1: log-ratios 1 − (−1)... chosen: −1 − (−2) = 1, rejected: −3 − (−1) = −2, Δ = 3:
    # −log σ(0.3) = log(1 + e^{−0.3}) = 0.554355.  BT: r⁺ − r⁻ = 1: log(1 + e^{−1}) = 0.313262.
    t = torch.tensor
    dpo = dpo_sum(t([-1.0]), t([-3.0]), t([-2.0]), t([-1.0]))
    assert dpo.total.item() == pytest.approx(0.554355, abs=1e-6) and int(dpo.tokens) == 1
    bt = bradley_terry_sum(t([2.0, 0.0]), t([1.0, 0.0]))
    assert bt.total.item() == pytest.approx(0.313262 + math.log(2), abs=1e-6) and int(bt.tokens) == 2
    assert bt.mean().item() == pytest.approx((0.313262 + math.log(2)) / 2, abs=1e-6)
    assert reference.dpo_loss(t([-1.0]), t([-3.0]), t([-2.0]), t([-1.0])).item() == pytest.approx(0.554355, abs=1e-6)
    assert reference.bradley_terry_loss(t([2.0]), t([1.0])).item() == pytest.approx(0.313262, abs=1e-6)


# ------------------------------------------------------------------------------------------
# Against the reference, values and gradients
# ------------------------------------------------------------------------------------------

ROWS = [(0, 6), (2, 5), (1, 3), (0, 1)]  # all counted; a prompt before; a short one; a single token (no TD pair)


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
@pytest.mark.parametrize("kw", [dict(beta=1.0, lam=0.001), dict(beta=0.7, lam=0.3, gamma=0.9, tau=2.0)])
def test_ava_d_matches_the_reference(chunk_size, kw):
    logits, labels, mu, log_sigma = rand_rows(4, 6, 9, seed=1, lengths=ROWS)

    def got():
        return -ava_d_sum(logits, labels, mu, log_sigma, params=params(**kw), chunk_size=chunk_size).loss(
            {"tokens": 1, "td_tokens": 1})  # F_d itself: both sums at weight 1

    def ref():
        return reference.ava_d_objective(logits.double().softmax(-1), labels, mu.double(), log_sigma.double(), **kw)

    torch.testing.assert_close(got().double(), ref(), rtol=1e-6, atol=1e-6)
    for a, b in zip(grad_of(got, logits, mu, log_sigma), grad_of(ref, logits, mu, log_sigma)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


def _reference_sides(logits, labels, mu, log_sigma):
    pairs = labels.shape[0] // 2
    p = logits.double().softmax(-1)
    return [(p[s], labels[s], mu[s].double(), log_sigma[s].double()) for s in (slice(0, pairs), slice(pairs, None))]


@pytest.mark.parametrize("reward", ["last", "sum"])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_ava_p_matches_the_reference(reward, chunk_size):
    # pairs (row 0, row 2) and (row 1, row 3): chosen and rejected of different lengths, either longer
    logits, labels, mu, log_sigma = rand_rows(4, 6, 9, seed=2, lengths=ROWS)
    kw = dict(beta=1.3, lam=0.2, gamma=0.8, tau=1.5)
    p = params(reward=reward, **kw)

    def parts():
        return ava_p_sum(logits, labels, mu, log_sigma, params=p, chunk_size=chunk_size)

    def got_fp():
        out = parts()
        return -(out.likelihood.total + out.experiential.total)

    def got_fc():
        return -parts().contrastive.total

    def ref_fp():
        return reference.ava_p_objective(*_reference_sides(logits, labels, mu, log_sigma), reward=reward, **kw)[0]

    def ref_fc():
        return reference.ava_p_objective(*_reference_sides(logits, labels, mu, log_sigma), reward=reward, **kw)[1]

    for got, ref in [(got_fp, ref_fp), (got_fc, ref_fc)]:
        torch.testing.assert_close(got().double(), ref(), rtol=1e-6, atol=1e-6)
        for a, b in zip(grad_of(got, logits, mu, log_sigma), grad_of(ref, logits, mu, log_sigma)):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


def test_baselines_match_the_reference_with_gradients():
    g = torch.Generator().manual_seed(3)
    pc, pr, rc, rr = (leaf(-5 * torch.rand(7, generator=g, dtype=torch.float64)) for _ in range(4))
    beta = 0.25
    got = dpo_sum(pc, pr, rc, rr, params=DPOParams(beta=beta))
    ref = reference.dpo_loss(pc, pr, rc, rr, beta=beta).sum()
    torch.testing.assert_close(got.total.double(), ref, rtol=1e-6, atol=1e-6)
    g_got = grad_of(lambda: dpo_sum(pc, pr, rc, rr, params=DPOParams(beta=beta)).total, pc, pr, rc, rr)
    assert not g_got[2].any() and not g_got[3].any()  # the reference model's log-probabilities are constants
    g_ref = grad_of(lambda: reference.dpo_loss(pc, pr, rc, rr, beta=beta).sum(), pc, pr)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    g_got = grad_of(lambda: bradley_terry_sum(pc, pr).total, pc, pr)
    g_ref = grad_of(lambda: reference.bradley_terry_loss(pc, pr).sum(), pc, pr)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# Exact properties
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_lambda_zero_and_zero_head_is_beta_q_bit_for_bit(beta):
    logits, labels, _, _ = rand_rows(4, 6, 9, seed=4, lengths=ROWS)
    mu, log_sigma = leaf(torch.zeros(4, 6)), leaf(torch.zeros(4, 6))  # the head's zero init
    p = params(beta=beta, lam=0.0, gamma=0.9, tau=2.0)
    out = ava_d_sum(logits, labels, mu, log_sigma, params=p)
    baseline = kd_sum(q_term(2.0), logits, labels)
    assert out.experiential.total.item() == 0.0
    assert torch.equal(out.likelihood.total, -beta * baseline.total)  # F_d = β·Σ Q exactly
    g_ava = grad_of(lambda: ava_d_sum(logits, labels, mu, log_sigma, params=p).loss(), logits, mu, log_sigma)
    g_q = grad_of(lambda: -beta * kd_sum(q_term(2.0), logits, labels).total / baseline.tokens, logits)
    assert torch.equal(g_ava[0], g_q[0])
    assert not g_ava[1].any() and not g_ava[2].any()  # the head stays at the prior


def test_one_pass_and_one_q_column(monkeypatch):
    """AVA evaluates Q once (one chunked pass) and its parts equal the terms computed apart, bit for bit."""
    logits, labels, mu, log_sigma = rand_rows(4, 6, 9, seed=5, lengths=ROWS)
    passes = []
    real = ava.term_columns
    monkeypatch.setattr(ava, "term_columns", lambda terms, *a, **k: passes.append(len(terms)) or real(terms, *a, **k))
    p = params(beta=0.5, lam=0.3, gamma=0.9, tau=2.0)
    out = ava_d_sum(logits, labels, mu, log_sigma, params=p)
    assert passes == [1]
    ex = experiential_sum(logits, labels, mu, log_sigma, lam=0.3, gamma=0.9, tau=2.0)
    assert torch.equal(out.experiential.total, ex.total)
    assert torch.equal(out.likelihood.total, -0.5 * kd_sum(q_term(2.0), logits, labels).total)


def test_ava_p_at_the_zero_head():
    """At μ = 0, log σ = 0, λ = 0: F_ex is exactly 0 and F_c = P·log σ(0) = −P·log 2, whose gradient pulls the
    chosen last μ up and the rejected one down by σ(0) = 1/2 each, and touches nothing else."""
    logits, labels, _, _ = rand_rows(4, 6, 9, seed=6, lengths=ROWS)
    mu, log_sigma = leaf(torch.zeros(4, 6)), leaf(torch.zeros(4, 6))
    out = ava_p_sum(logits, labels, mu, log_sigma, params=params(lam=0.0))
    assert out.experiential.total.item() == 0.0
    assert out.contrastive.total.item() == pytest.approx(2 * math.log(2), abs=1e-7)
    mu.grad = log_sigma.grad = None
    ava_p_sum(logits, labels, mu, log_sigma, params=params(lam=0.0)).contrastive.total.backward()
    expected = torch.zeros(4, 6)
    for row, sign in [(0, -1), (1, -1), (2, 1), (3, 1)]:
        expected[row, ROWS[row][1] - 1] = 0.5 * sign
    assert torch.equal(mu.grad, expected) and log_sigma.grad is None and logits.grad is None


@pytest.mark.parametrize("preference", [True, False])
def test_two_accumulated_half_batches_equal_one_batch(preference):
    """Each micro-batch's terms over the whole step's counts add up to the one-batch loss and gradient
    (F_c over pairs included)."""
    lengths = [(0, 6), (2, 5), (1, 3), (0, 2), (3, 6), (0, 4), (1, 2), (0, 5)]
    logits, labels, mu, log_sigma = rand_rows(8, 6, 9, seed=7, lengths=lengths)
    p = params(beta=1.3, lam=0.2, gamma=0.8, tau=1.5)
    fn = ava_p_sum if preference else ava_d_sum
    # a preference batch is [chosen of its pairs, rejected of its pairs]: the full batch holds pairs (i, 4 + i)
    halves = [[0, 1, 4, 5], [2, 3, 6, 7]] if preference else [[0, 1, 2, 3], [4, 5, 6, 7]]

    def whole():
        return fn(logits, labels, mu, log_sigma, params=p).loss()

    step = {}
    for rows in halves:
        for key, value in ava_counts(labels[rows], preference=preference).items():
            step[key] = step.get(key, 0) + value
    assert step == ava_counts(labels, preference=preference)

    def accumulated():
        return sum(fn(logits[rows], labels[rows], mu[rows], log_sigma[rows], params=p).loss(step) for rows in halves)

    torch.testing.assert_close(accumulated(), whole(), rtol=1e-6, atol=1e-7)
    for a, b in zip(grad_of(accumulated, logits, mu, log_sigma), grad_of(whole, logits, mu, log_sigma)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_all_masked_batch():
    logits = leaf(torch.randn(2, 4, 5))
    labels = torch.full((2, 4), IGNORE)
    mu, log_sigma = leaf(torch.randn(2, 4)), leaf(torch.randn(2, 4))
    out = ava_p_sum(logits, labels, mu, log_sigma)
    assert out.loss().item() == pytest.approx(math.log(2))  # only F_c, on two empty responses of reward 0
    out.loss().backward()
    assert not logits.grad.any() and not mu.grad.any() and not log_sigma.grad.any()


# ------------------------------------------------------------------------------------------
# The reward of a whole response, sequence log-probabilities
# ------------------------------------------------------------------------------------------


def test_last_position_under_right_and_left_padding():
    labels = torch.tensor([
        [5, 6, 7, IGNORE, IGNORE],   # right-padded: the last counted position, not the last column
        [IGNORE, IGNORE, 5, 6, 7],   # a masked prompt / left padding before the response
        [IGNORE, 5, IGNORE, 6, IGNORE],  # a hole: still the last counted position
        [IGNORE] * 5,                # nothing counted
    ])
    assert last_positions(labels).tolist() == [2, 4, 3, -1]
    mu = leaf(torch.arange(20.0).view(4, 5))
    assert response_reward(mu, labels).tolist() == [2.0, 9.0, 13.0, 0.0]
    assert response_reward(mu, labels, how="sum").tolist() == [3.0, 5 + 6 + 7 + 8 + 9 - 5 - 6, 11 + 13, 0.0]
    for how in ("last", "sum"):
        torch.testing.assert_close(response_reward(mu, labels, how=how), reference.response_reward(mu, labels, how))
    response_reward(mu, labels).sum().backward()
    assert mu.grad.nonzero().tolist() == [[0, 2], [1, 4], [2, 3]]


def test_sequence_logprob_sums_the_counted_positions():
    logits, labels, _, _ = rand_rows(4, 6, 9, seed=8, lengths=ROWS)
    logp = logits.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)  # B x T
    expected = torch.where(labels != IGNORE, logp, 0.0).sum(-1)
    torch.testing.assert_close(sequence_logprob(logits, labels), expected)
    torch.testing.assert_close(sequence_logprob(logits, labels, chunk_size=1), expected)


# ------------------------------------------------------------------------------------------
# Hyperparameters and misuse
# ------------------------------------------------------------------------------------------


def test_params_are_checked():
    assert AVAParams() == params(beta=1.0, lam=0.001, gamma=1.0, tau=1.0, reward="last")
    assert DPOParams().beta == 0.1
    with pytest.raises(XKDError, match=r"ava_beta must be in \[0, inf\]"):
        AVAParams(beta=-1.0)
    with pytest.raises(XKDError, match="reward must be one of last, sum"):
        AVAParams(reward="mean")
    with pytest.raises(XKDError, match=r"dpo_beta must be in \(0, inf\]"):
        DPOParams(beta=0.0)
    with pytest.raises(XKDError, match="--lam"):
        params(lam=-0.5)
    assert hparam_problems(ava_beta=0.0, dpo_beta=0.5) == []


def test_misuse_is_an_error():
    logits, labels, mu, log_sigma = rand_rows(3, 6, 9, seed=9, lengths=ROWS[:3])
    with pytest.raises(ValueError, match="chosen rows, then as many rejected rows; got 3 rows"):
        ava_p_sum(logits, labels, mu, log_sigma)
    with pytest.raises(ValueError, match="must have the labels' shape"):
        ava_d_sum(logits, labels, mu[:, :-1], log_sigma)
    with pytest.raises(ValueError, match="1-d tensors of one length"):
        bradley_terry_sum(torch.zeros(3), torch.zeros(2))
    with pytest.raises(XKDError, match="reward must be one of"):
        response_reward(mu, labels, how="mean")


# ------------------------------------------------------------------------------------------
# Against TRL (the `bench` and `test` extras install it)
# ------------------------------------------------------------------------------------------


class _OneProcess:
    """The accelerator calls TRL's losses make for their metrics, for one process."""

    device = torch.device("cpu")

    @staticmethod
    def gather_for_metrics(x):
        return x

    @staticmethod
    def gather(x):
        return x


def _trainer_stand_in(**attributes) -> SimpleNamespace:
    """A stand-in ``self`` for a TRL trainer method: the few attributes its loss reads and nothing else."""
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_OneProcess(),
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1, **attributes)


def test_dpo_equals_trl(tmp_path):
    trl = pytest.importorskip("trl")
    # DPOTrainer has no free loss function: the sigmoid loss sits inside DPOTrainer._compute_loss(model, inputs).
    # Building a real trainer needs a dataset and a tokenizer and runs its fused LM head, so the method is called
    # unbound, with a stand-in `self` holding the attributes DPOTrainer.__init__ sets from a default DPOConfig
    # (β, loss type, f-divergence, ...) and a stand-in model returning per-token log-probabilities (0 where a
    # label is -100, as TRL's fused head returns them), the reference's given per sequence (precomputed).
    args = trl.DPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.beta == 0.1 and args.loss_type == ["sigmoid"] and args.label_smoothing == 0.0
    trainer = _trainer_stand_in(
        args=args, beta=args.beta, precompute_ref_logps=True, loss_types=args.loss_type,
        loss_weights=args.loss_weights or [1.0] * len(args.loss_type), ld_alpha=args.ld_alpha,
        f_divergence_type=args.f_divergence_type, f_alpha_divergence_coef=args.f_alpha_divergence_coef,
        label_smoothing=args.label_smoothing, use_weighting=args.use_weighting, aux_loss_enabled=False,
    )
    logits, labels, _, _ = rand_rows(8, 6, 11, seed=10, lengths=[(0, 6), (2, 5), (1, 3), (0, 1)] * 2)
    g = torch.Generator().manual_seed(11)
    ref_chosen, ref_rejected = -10 * torch.rand(4, generator=g), -10 * torch.rand(4, generator=g)

    def trl_loss():
        per_token = token_logprobs(logits, labels)  # B x T, 0 where ignored
        outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros(8, 6), mean_logits=torch.zeros(8, 6),
                                  is_top1=torch.zeros(8, 6, dtype=torch.bool))
        model = lambda **kwargs: outputs  # noqa: E731 - the forward: TRL reads only these outputs
        completion = torch.cat([torch.zeros(8, 1, dtype=torch.long), (labels != IGNORE).long()], 1)  # ids: T + 1
        inputs = {"input_ids": torch.ones(8, 7, dtype=torch.long), "attention_mask": torch.ones(8, 7, dtype=torch.long),
                  "completion_mask": completion, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        return trl.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)

    def xkd_loss():
        logp = sequence_logprob(logits, labels)
        return dpo_sum(logp[:4], logp[4:], ref_chosen, ref_rejected).mean()

    theirs, ours = trl_loss(), xkd_loss()
    assert abs(theirs.item() - ours.item()) <= 1e-7
    g_theirs, g_ours = grad_of(trl_loss, logits)[0], grad_of(xkd_loss, logits)[0]
    assert (g_theirs - g_ours).abs().max().item() <= 1e-8


def test_bradley_terry_equals_trl(tmp_path):
    trl = pytest.importorskip("trl")
    # RewardTrainer.compute_loss(model, inputs) runs the model and takes its scores, chosen rows first; called
    # unbound with a stand-in `self` (a default RewardConfig: no centring) and a stand-in model whose scores are
    # the given rewards.
    args = trl.RewardConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.center_rewards_coefficient is None
    trainer = _trainer_stand_in(args=args)
    g = torch.Generator().manual_seed(12)
    chosen, rejected = leaf(3 * torch.randn(16, generator=g)), leaf(3 * torch.randn(16, generator=g))

    def trl_loss():
        model = lambda **kwargs: SimpleNamespace(logits=torch.cat([chosen, rejected])[:, None])  # noqa: E731
        inputs = {"input_ids": torch.ones(32, 4, dtype=torch.long), "attention_mask": torch.ones(32, 4)}
        return trl.RewardTrainer.compute_loss(trainer, model, inputs)

    def xkd_loss():
        return bradley_terry_sum(chosen, rejected).mean()

    assert abs(trl_loss().item() - xkd_loss().item()) <= 1e-7
    for a, b in zip(grad_of(trl_loss, chosen, rejected), grad_of(xkd_loss, chosen, rejected)):
        assert (a - b).abs().max().item() <= 1e-8
