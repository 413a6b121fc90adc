"""The report's statistics over seeds and evaluation examples: mean ± standard deviation, the paired
bootstrap interval of an X-variant's difference to its baseline, and Wilson intervals for judge rates.

Paired bootstrap (``paired_bootstrap``)
---------------------------------------
Two methods evaluated on the same examples with the same seeds give, per seed ``s`` and example ``i``,
the statistics behind the headline metric (:mod:`xkd_cli.evaluation.example_scores`).  The observed
difference is the mean over seeds of ``metric(X_s) − metric(B_s)`` over all examples.  One bootstrap
replicate draws the seeds with replacement and, independently, the examples with replacement (the same
draw for every seed and both methods: pairing by example and by seed), and recomputes that difference;
the 95% interval is the 2.5th and 97.5th percentile of the replicates.  Corpus BLEU is recomputed from
the summed statistics of the drawn examples, so it is resampled as a corpus, not as a mean of sentence
scores.  With one seed only the examples vary; with two or three seeds the seed draw is coarse, so the
interval reflects the seeds present, not the seed distribution at large.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from xkd_cli.evaluation.example_scores import headline_from_stats
from xkd_cli.evaluation.preference import wilson_interval

LEVEL = 0.95
REPLICATES = 2000


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1); the deviation is None for fewer than two values."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _metric(headline: str, sums: np.ndarray, count: int) -> np.ndarray:
    """``headline`` of each row of summed statistics ``... x K``."""
    if headline != "bleu":
        return sums[..., 0] / count
    flat = sums.reshape(-1, sums.shape[-1])
    return np.array([headline_from_stats(headline, row, count) for row in flat]).reshape(sums.shape[:-1])


def paired_bootstrap(x: np.ndarray, b: np.ndarray, headline: str, *, replicates: int = REPLICATES,
                     seed: int = 0, level: float = LEVEL) -> dict[str, float | int]:
    """Difference X − B with its bootstrap interval.  ``x`` and ``b`` are ``S x N x K``: seeds × examples
    × per-example statistics, aligned (row s of both is seed s, column i example i).  Deterministic for a
    given ``seed``."""
    x, b = np.asarray(x, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != b.shape or x.ndim != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"x and b must be aligned seeds x examples x stats arrays, got {x.shape} and {b.shape}")
    seeds, n, _ = x.shape
    observed = float(np.mean(_metric(headline, x.sum(1), n) - _metric(headline, b.sum(1), n)))
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(replicates)])  # R x N
    per_seed = (_metric(headline, np.einsum("rn,snk->srk", counts, x), n)
                - _metric(headline, np.einsum("rn,snk->srk", counts, b), n))  # S x R
    drawn = rng.integers(0, seeds, (replicates, seeds))  # R x S: the seeds of each replicate
    diffs = per_seed[drawn, np.arange(replicates)[:, None]].mean(1)  # R
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return {"diff": observed, "low": float(low), "high": float(high), "seeds": seeds, "examples": n,
            "replicates": replicates, "level": level}


def wilson(successes: float, n: int, level: float = LEVEL) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (:func:`~xkd_cli.evaluation.preference.wilson_interval`), in percent;
    None when nothing was counted."""
    if not n:
        return None
    low, high = wilson_interval(successes, n, z=_z(level))
    return 100.0 * low, 100.0 * high


def _z(level: float) -> float:
    """The two-sided normal quantile of ``level`` (1.96 at 95%)."""
    from statistics import NormalDist  # stdlib; only the judge intervals need it

    return NormalDist().inv_cdf(0.5 + level / 2.0)
