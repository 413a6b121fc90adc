"""Tests for xkd_cli.objectives.reward.RewardHead (q_φ)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import IGNORE
from xkd_cli.objectives import reference
from xkd_cli.objectives.experiential import experiential_sum
from xkd_cli.core.hparams import REWARD_POSITIONS
from xkd_cli.objectives.reward import RewardHead


def test_zero_init_gives_the_prior():
    head = RewardHead(6)
    assert torch.count_nonzero(head.proj.weight) == 0 and torch.count_nonzero(head.proj.bias) == 0
    hidden = torch.randn(2, 5, 6)
    mu, log_sigma = head(hidden)
    assert mu.shape == log_sigma.shape == (2, 5)
    assert torch.equal(mu, torch.zeros(2, 5)) and torch.equal(log_sigma, torch.zeros(2, 5))


def test_float32_output_for_half_hidden_states():
    head = RewardHead(4, "current")
    with torch.no_grad():
        head.proj.weight.normal_()
    hidden = torch.randn(2, 3, 4).to(torch.bfloat16)
    mu, log_sigma = head(hidden)
    assert mu.dtype == log_sigma.dtype == torch.float32
    expected = hidden.float() @ head.proj.weight[0]
    torch.testing.assert_close(mu, expected)


def test_log_sigma_clamp_and_its_gradient():
    head = RewardHead(3)
    hidden = torch.zeros(1, 3, 3)
    for bias, expected, grad in [(10.0, 5.0, 0.0), (-10.0, -5.0, 0.0), (0.0, 0.0, 1.0), (4.0, 4.0, 1.0)]:
        with torch.no_grad():
            head.proj.bias.copy_(torch.tensor([0.0, bias]))
        head.zero_grad()
        _, log_sigma = head(hidden)
        assert torch.equal(log_sigma, torch.full((1, 3), expected))
        log_sigma.sum().backward()
        assert head.proj.bias.grad[1].item() == 3 * grad  # identity inside the range, 0 outside


def test_position_flag():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    current, nxt = RewardHead(2, "current"), RewardHead(2, "next")
    for head in (current, nxt):
        with torch.no_grad():
            head.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # μ = h[..., 0]
            head.proj.bias.copy_(torch.tensor([0.5, 0.0]))
    mu_cur, _ = current(hidden)
    mu_next, _ = nxt(hidden)
    torch.testing.assert_close(mu_cur, hidden[..., 0] + 0.5)  # h_t
    torch.testing.assert_close(mu_next[:, :-1], hidden[:, 1:, 0] + 0.5)  # h_{t+1}
    torch.testing.assert_close(mu_next[:, -1], torch.full((2,), 0.5))  # zero input after the last
    with pytest.raises(XKDError, match="current, next"):
        RewardHead(2, "previous")


def test_gradient_reaches_the_backbone_and_is_zero_at_init_with_lambda_zero():
    hidden = torch.randn(2, 4, 3, requires_grad=True)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    labels = torch.randint(0, 7, (2, 4))
    head = RewardHead(3)
    mu, log_sigma = head(hidden)
    experiential_sum(logits, labels, mu, log_sigma, lam=0.0).total.backward()
    for g in (hidden.grad, head.proj.weight.grad, head.proj.bias.grad):
        assert torch.equal(g, torch.zeros_like(g))
    # away from the init (λ > 0) the head and the backbone both learn
    hidden.grad = None
    head.zero_grad()
    mu, log_sigma = head(hidden)
    experiential_sum(logits, labels, mu, log_sigma, lam=0.5).total.backward()
    assert head.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        head.proj.weight.normal_()
    hidden.grad = None
    mu, log_sigma = head(hidden)
    experiential_sum(logits, labels, mu, log_sigma, lam=0.5).total.backward()
    assert hidden.grad.abs().sum() > 0


@pytest.mark.parametrize("position", REWARD_POSITIONS)
def test_f_ex_from_the_head_matches_the_reference(position):
    """At its zero init the head is the prior (KL term 0); off it, F_ex from its outputs at either
    position equals the reference's Eq. 20, value and head gradients."""
    g = torch.Generator().manual_seed(0)
    hidden, logits = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 7, generator=g)
    labels = torch.randint(0, 7, (2, 5), generator=g)
    labels[1, 3:] = IGNORE
    head = RewardHead(3, position)
    mu, log_sigma = head(hidden)
    assert torch.equal(reference.gaussian_kl_to_standard_normal(mu, log_sigma), torch.zeros(2, 5))
    with torch.no_grad():
        head.proj.weight.normal_(generator=g)
        head.proj.bias.normal_(generator=g)

    def ref():
        mu, log_sigma = head(hidden)
        return reference.experiential_objective(logits.double().softmax(-1), labels, mu.double(), log_sigma.double(),
                                                lam=0.5, gamma=0.9, tau=2.0)

    def got():
        return experiential_sum(logits, labels, *head(hidden), lam=0.5, gamma=0.9, tau=2.0).total

    torch.testing.assert_close(got().double(), ref(), rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(got(), list(head.parameters()))
    g_ref = torch.autograd.grad(ref(), list(head.parameters()))
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-6)


def test_save_load_round_trip(tmp_path):
    head = RewardHead(5, reward_position="next", log_sigma_bound=3.0)
    with torch.no_grad():
        head.proj.weight.normal_()
        head.proj.bias.normal_()
    path = tmp_path / "reward_head.safetensors"
    head.save(path)
    loaded = RewardHead.load(path)
    assert (loaded.hidden_size, loaded.reward_position, loaded.log_sigma_bound) == (5, "next", 3.0)
    for a, b in zip(head.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    hidden = torch.randn(2, 3, 5)
    for a, b in zip(head(hidden), loaded(hidden)):
        assert torch.equal(a, b)


def test_load_errors(tmp_path):
    with pytest.raises(XKDError, match="does not exist"):
        RewardHead.load(tmp_path / "missing.safetensors")
    other = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(XKDError, match="not an xkd reward head"):
        RewardHead.load(other)


@pytest.mark.parametrize("position", REWARD_POSITIONS)
def test_delta_and_mu_alignment_on_a_hand_built_example(position):
    """One row of three tokens over a two-token vocabulary, worked by hand.  logits[t] predicts y_t,
    so Q_t = P_t[y_t] − log Σ_v exp(P_t[v]) (Eq. 28, τ' = 1) and δ_t = Q_t − γ·Q_{t+1} (Eq. 16).
    The head reads μ = h[..., 0] with log σ = 0: ``current`` pairs δ_t with μ = h_t, ``next`` with
    μ = h_{t+1}, the state that has read y_t (Eq. 14/20's q_φ(·|x, y_{1:t+1}))."""
    hidden = torch.tensor([[[1.0], [2.0], [3.0]]])  # h_0, h_1, h_2
    logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [0.0, math.log(3.0)]]])  # P = .75/.25, .5/.5, .25/.75
    labels = torch.tensor([[0, 1, 1]])
    head = RewardHead(1, position)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0], [0.0]]))
    mu, log_sigma = head(hidden)
    expected_mu = {"current": [1.0, 2.0, 3.0], "next": [2.0, 3.0, 0.0]}[position]
    assert mu.tolist() == [expected_mu] and torch.equal(log_sigma, torch.zeros(1, 3))

    def q(p_chosen, p_other):
        return p_chosen - math.log(math.exp(p_chosen) + math.exp(p_other))

    q0, q1, q2 = q(0.75, 0.25), q(0.5, 0.5), q(0.75, 0.25)  # y_0 = 0 at P_0, y_1 = 1 at P_1, y_2 = 1 at P_2
    gamma, lam = 0.9, 0.5
    deltas = [q0 - gamma * q1, q1 - gamma * q2]  # two TD pairs; the last token has no next action
    expected = sum(m * m / 2 + lam * (0.5 * math.log(2 * math.pi) + (d - m) ** 2 / 2)
                   for d, m in zip(deltas, expected_mu[:2]))
    parts = experiential_sum(logits, labels, mu, log_sigma, lam=lam, gamma=gamma)
    assert parts.tokens.item() == 2
    assert parts.total.item() == pytest.approx(expected, rel=1e-6)
    stats = parts.summary()
    assert stats["delta_mean"] == pytest.approx(sum(deltas) / 2, rel=1e-6)
    assert stats["mu_mean"] == pytest.approx(sum(expected_mu[:2]) / 2, rel=1e-6)
    # The state no TD pair reads can change freely: h_0 for ``next``, h_2 for ``current``.
    unread = 0 if position == "next" else 2
    moved = hidden.clone()
    moved[0, unread, 0] = 100.0
    again = experiential_sum(logits, labels, *head(moved), lam=lam, gamma=gamma)
    assert torch.equal(again.total, parts.total)
    read = 2 if position == "next" else 0
    moved = hidden.clone()
    moved[0, read, 0] = 100.0
    assert not torch.equal(experiential_sum(logits, labels, *head(moved), lam=lam, gamma=gamma).total, parts.total)
