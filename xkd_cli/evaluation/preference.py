"""Preference accuracy of a reward model on held-out pairs: the share of pairs whose chosen response it scores
strictly higher than the rejected one (a tie counts as a miss, so a constant reward scores 0, not 50%), with a
95% Wilson interval, overall and per kind of damage where the pairs record one (``synth-sum-pref``'s ``damage``).

:func:`preference_accuracy` is plain arithmetic on the two lists of rewards; :func:`score_pairs` computes them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (``successes`` of ``n``); (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _summary(wins: Sequence[bool]) -> dict[str, Any]:
    k, n = sum(wins), len(wins)
    low, high = wilson_interval(k, n)
    return {"accuracy": k / n if n else 0.0, "low": low, "high": high, "correct": k, "pairs": n}


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float],
                        kinds: Sequence[str | None] | None = None) -> dict[str, Any]:
    """``accuracy`` (r⁺ > r⁻), its 95% interval ``low``..``high``, ``correct`` and ``pairs``; with ``kinds`` (one
    per pair, None where a pair has none) also ``per_kind``: the same numbers per kind, in sorted order."""
    if len(chosen) != len(rejected) or (kinds is not None and len(kinds) != len(chosen)):
        raise ValueError("one chosen reward, one rejected reward (and one kind) per pair")
    wins = [c > r for c, r in zip(chosen, rejected)]
    found = _summary(wins)
    if kinds is not None and any(k is not None for k in kinds):
        found["per_kind"] = {kind: _summary([w for w, k in zip(wins, kinds) if k == kind])
                             for kind in sorted({k for k in kinds if k is not None})}
    return found


def score_pairs(model, head, pairs, *, how: str = "last", batch_size: int = 32) -> tuple[list[float], list[float]]:
    """The reward of each pair's chosen and rejected response (:func:`~xkd_cli.objectives.ava.response_reward`,
    ``how``) from ``model`` and its reward ``head``; ``pairs`` an :class:`~xkd_cli.training.sources.EncodedPairSet`
    (any object with ``len`` and ``batch(indices)`` giving chosen rows, then rejected rows)."""
    import torch  # why: the accuracy arithmetic above is imported without torch (tests, the report)

    from xkd_cli.models.forward import evaluating, forward  # why: imports torch
    from xkd_cli.objectives.ava import response_reward  # why: imports torch

    device = next(model.parameters()).device
    chosen: list[float] = []
    rejected: list[float] = []
    with evaluating(model, head), torch.no_grad():
        for at in range(0, len(pairs), batch_size):
            batch = pairs.batch(range(at, min(at + batch_size, len(pairs)))).to(device)
            _, hidden = forward(model, batch, hidden=True)  # 2P x T x H
            mu, _ = head(hidden)
            reward = response_reward(mu, batch.labels, how=how).tolist()  # 2P
            half = len(reward) // 2
            chosen += reward[:half]
            rejected += reward[half:]
    return chosen, rejected
