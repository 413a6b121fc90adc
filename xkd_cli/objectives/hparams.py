"""Range checks of the loss hyperparameters.

Each public loss function checks its own hyperparameters and raises :class:`~xkd_cli.core.errors.XKDError`.
The CLI can collect every problem at once with :func:`hparam_problems` (a list of one-line messages) or
raise them together with :func:`check_hparams`.
"""

from __future__ import annotations

import math

from xkd_cli.core.errors import XKDError


def hparam_problems(
    *,
    beta: float | None = None,
    temperature: float | None = None,
    lam: float | None = None,
    gamma: float | None = None,
    tau: float | None = None,
    chunk_size: int | None = None,
    mix: float | None = None,
    clip: float | None = None,
    discount: float | None = None,
) -> list[str]:
    """One line per out-of-range hyperparameter (those given as None are not checked)."""
    checks = [  # (name, value, ok, requirement)
        ("beta", beta, lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1] (0 = forward KL, 1 = reverse KL)"),
        ("temperature", temperature, lambda v: v > 0.0, "must be > 0 (1.0 leaves the logits as they are)"),
        ("lambda", lam, lambda v: v >= 0.0, "(experiential weight) must be >= 0 (paper: 0.001; 0 = baseline)"),
        ("gamma", gamma, lambda v: 0.0 <= v <= 1.0, "(TD discount) must lie in [0, 1] (paper: 1.0)"),
        ("tau", tau, lambda v: v > 0.0, "(Boltzmann temperature tau') must be > 0 (paper: 1.0)"),
        ("chunk_size", chunk_size, lambda v: v >= 1 and float(v).is_integer(), "must be a positive integer"),
        ("mix", mix, lambda v: 0.0 <= v <= 1.0, "(teacher-mixed sampling) must lie in [0, 1] (MiniLLM: 0.2)"),
        ("clip", clip, lambda v: 0.0 <= v < 1.0, "(PPO clip range) must lie in [0, 1) (MiniLLM: 0.2)"),
        ("discount", discount, lambda v: 0.0 <= v <= 1.0, "(return discount) must lie in [0, 1] (MiniLLM: 0.95)"),
    ]
    problems = []
    for name, value, ok, requirement in checks:
        if value is None:
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            problems.append(f"{name} {requirement}, got {value!r}")
    return problems


def check_hparams(**hparams: float | int | None) -> None:
    """Raise one :class:`XKDError` naming every out-of-range hyperparameter (see :func:`hparam_problems`)."""
    problems = hparam_problems(**hparams)
    if problems:
        raise XKDError("; ".join(problems) + ".")
