"""The report's statistics: mean ± sd, the paired bootstrap (a hand-computed case, corpus BLEU, and its
coverage on synthetic data with a known difference) and Wilson intervals."""

import numpy as np
import pytest

from xkd_cli.data import metrics
from xkd_cli.evaluation.example_scores import example_stats
from xkd_cli.experiments.report.stats import mean_sd, paired_bootstrap, wilson


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_sd([4.0]) == (4.0, None)


def test_bootstrap_hand_computed():
    """One seed, two examples whose differences are 0 and 1: a replicate's mean is 0, ½ or 1 with
    probability ¼, ½, ¼, so the 2.5% and 97.5% percentiles are 0 and 1 and the observed value is ½."""
    x = np.array([[[5.0], [7.0]]])
    b = np.array([[[5.0], [6.0]]])
    out = paired_bootstrap(x, b, "rouge2", replicates=4000)
    assert (out["diff"], out["low"], out["high"], out["seeds"], out["examples"]) == (0.5, 0.0, 1.0, 1, 2)
    # a constant difference has a zero-width interval; two seeds differing by 2 and 4 span [2, 4]
    assert paired_bootstrap(x + 3, x, "rouge2")[("low")] == 3.0
    two = paired_bootstrap(np.array([[[2.0]], [[4.0]]]), np.zeros((2, 1, 1)), "rouge2", replicates=4000)
    assert (two["diff"], two["low"], two["high"]) == (3.0, 2.0, 4.0)


def test_bootstrap_resamples_bleu_as_a_corpus():
    preds = ["the cat sat on the mat", "a dog ran", "hello world there", "x y z w"]
    refs = ["the cat is on the mat", "the dog ran far", "hello there world", "x y z w"]
    worse = ["the cat", "a cat ran", "hello", "x y"]
    x = np.array([example_stats("bleu", preds, refs)])
    b = np.array([example_stats("bleu", worse, refs)])
    out = paired_bootstrap(x, b, "bleu", replicates=200)
    want = metrics.bleu(preds, refs)["bleu"] - metrics.bleu(worse, refs)["bleu"]
    assert out["diff"] == pytest.approx(want) and out["low"] <= out["high"]


def test_bootstrap_coverage_on_synthetic_data():
    """A known difference of 1.0 (per-example noise, a shared example effect, a per-seed offset): the
    95% interval covers it in about 95% of 200 experiments (binomial: 181 to 197 is ±2.5 sd)."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        difficulty = rng.normal(50, 10, 60)  # shared by both methods: pairing removes it
        seeds = rng.normal(0, 0.3, (3, 1))
        b = difficulty + rng.normal(0, 2, (3, 60))
        x = difficulty + 1.0 + seeds + rng.normal(0, 2, (3, 60))
        out = paired_bootstrap(x[..., None], b[..., None], "rouge2", replicates=400, seed=int(rng.integers(1 << 30)))
        covered += out["low"] <= 1.0 <= out["high"]
    assert 181 <= covered <= 200, covered


def test_wilson():
    low, high = wilson(20, 40)
    # p = ½, z = 1.96: centre ½, half-width 1.96·√(1/160 + 1.96²/6400)/(1 + 1.96²/40) = 0.1480
    assert low == pytest.approx(35.20, abs=0.01) and high == pytest.approx(64.80, abs=0.01)
    assert wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-9) and wilson(0, 0) is None
