"""The ranges of the losses' hyperparameters, checked in two places from one table: the job configs check their
options against it before torch loads, and the loss functions check their arguments against it when called
directly (``xkd_cli.objectives``). Plain data and no torch, so both layers can import it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from xkd_cli.core.errors import XKDError

# The losses' named choices: the functions behind them live in objectives/divergences.py (DIVERGENCES),
# objectives/reward.py (the reward head) and objectives/ava.py (a response's reward).
DIVERGENCE_NAMES = ("jsd", "fkl", "rkl", "mix", "tvd")
BETA_DIVERGENCES = ("jsd", "mix")  # the divergences β weights; fkl, rkl and tvd ignore it
REWARD_POSITIONS = ("current", "next")
RESPONSE_REWARDS = ("last", "sum")  # AVA: a response's reward is the μ of its last counted position, or Σ μ


def in_range(problems: list[str], name: str, value: float | None, lo: float | None = None, hi: float | None = None,
             *, lo_open: bool = False, hi_open: bool = False, label: str | None = None) -> None:
    """Append a message to ``problems`` when ``value`` lies outside [lo, hi] (open ends where asked)."""
    if value is None:
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or \
          (hi is not None and (value >= hi if hi_open else value > hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        problems.append(f"{label or '--' + name.replace('_', '-')} must be in {span}, got {value}")


@dataclass(frozen=True)
class Range:
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""
    integer: bool = False
    option: bool = True  # a command-line option (named --like-this in messages), not only a loss argument


HPARAMS: dict[str, Range] = {
    "beta": Range(0, 1, note="0 = forward KL, 1 = reverse KL"),
    "temperature": Range(0, lo_open=True, note="1.0 leaves the logits as they are"),
    "lam": Range(0, note="the experiential weight lambda; paper: 0.001; 0 = the baseline"),
    "gamma": Range(0, 1, note="the TD discount; paper: 1.0"),
    "tau": Range(0, lo_open=True, note="tau' of the Q-value decoder, Eq. 28; paper: 1.0"),
    "alpha": Range(0, 1, note="the share of on-policy batches"),
    "mix": Range(0, 1, note="teacher-mixed sampling; MiniLLM: 0.2"),
    "clip": Range(0, 1, hi_open=True, note="the PPO clip range; MiniLLM: 0.2", option=False),
    "discount": Range(0, 1, note="the return discount; MiniLLM: 0.95", option=False),
    "ppo_epochs": Range(1, integer=True, note="policy updates per batch of rollouts; MiniLLM: 4"),
    "lm_weight": Range(0, note="the weight of the NLL of the ground-truth targets; MiniLLM: 1.0; 0 = off"),
    "chunk_size": Range(1, integer=True, option=False),
    "ava_beta": Range(0, note="AVA's weight beta of the likelihood beta*Q; paper: 1.0; 0 drops the likelihood",
                      option=False),
    "dpo_beta": Range(0, lo_open=True, note="DPO's beta, the strength of the reference; TRL: 0.1", option=False),
}


def hparam_problems(**values: float | int | None) -> list[str]:
    """One line per hyperparameter outside its range in :data:`HPARAMS` (None: not given, not checked)."""
    found: list[str] = []
    for name, value in values.items():
        if value is None:
            continue
        r = HPARAMS[name]
        label = f"--{name.replace('_', '-')}" if r.option else name
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        before = len(found)
        if not number or (r.integer and not float(value).is_integer()):
            found.append(f"{label} must be a finite {'integer' if r.integer else 'number'}, got {value!r}")
        else:
            in_range(found, name, value, r.lo, r.hi, lo_open=r.lo_open, hi_open=r.hi_open, label=label)
        if r.note and len(found) > before:
            found[-1] += f" ({r.note})"
    return found


def check_hparams(**values: float | int | None) -> None:
    """Raise one :class:`XKDError` naming every out-of-range hyperparameter (see :func:`hparam_problems`)."""
    problems = hparam_problems(**values)
    if problems:
        raise XKDError("; ".join(problems) + ".")
