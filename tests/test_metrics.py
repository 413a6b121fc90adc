"""Metrics against hand-computed values (xkd_cli.data.metrics)."""

from __future__ import annotations

import math

import pytest

from xkd_cli.config.checks import CUSTOM_METRICS
from xkd_cli.data import metrics
from xkd_cli.evaluation.example_scores import example_stats, headline_from_stats
from xkd_cli.core.errors import XKDError


# ---------------------------------------------------------------- ROUGE

def test_rouge_hand_computed():
    # prediction: the cat sat on the mat      reference: the cat lay on the mat   (6 tokens each)
    # ROUGE-1: clipped unigram overlap the x2, cat, on, mat = 5 -> P = R = 5/6 -> F = 83.33
    # ROUGE-2: bigrams {the cat, cat sat, sat on, on the, the mat} vs {the cat, cat lay, lay on, on the,
    #          the mat}: overlap 3 of 5 -> F = 60
    # ROUGE-L: LCS "the cat on the mat" = 5 -> F = 5/6 = 83.33
    got = metrics.rouge(["the cat sat on the mat"], ["the cat lay on the mat"])
    assert got == pytest.approx({"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6})


def test_rouge_averages_over_pairs_and_unequal_lengths():
    # pair 2: prediction "the cat" vs reference "the cat sat": ROUGE-1 P = 1, R = 2/3 -> F = 0.8;
    #         ROUGE-2 P = 1, R = 1/2 -> F = 2/3
    got = metrics.rouge(["the cat sat on the mat", "the cat"], ["the cat sat on the mat", "the cat sat"])
    assert got["rouge1"] == pytest.approx((100 + 80) / 2)
    assert got["rouge2"] == pytest.approx((100 + 200 / 3) / 2)


def test_rouge_stemming_is_optional():
    assert metrics.rouge(["cats running"], ["cat run"])["rouge1"] == 0.0
    assert metrics.rouge(["cats running"], ["cat run"], use_stemmer=True)["rouge1"] == pytest.approx(100.0)


# ---------------------------------------------------------------- BLEU

def test_bleu_exact_match_is_100_and_reports_signature():
    got = metrics.bleu(["Der Hund schläft im Garten ."], ["Der Hund schläft im Garten ."])
    assert got["bleu"] == pytest.approx(100.0)
    assert "tok:13a" in got["bleu_signature"] and "smooth:exp" in got["bleu_signature"]


def test_bleu_partial_hand_computed():
    # hypothesis: the cat sat on the mat     reference: the cat sat on a mat  (equal length: BP = 1)
    # n-gram precisions: 1: 5/6 (second "the" unmatched), 2: 3/5, 3: 2/4, 4: 1/3
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.53729
    got = metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert got["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-4)


def test_bleu_disjoint_is_zero():
    assert metrics.bleu(["alpha beta gamma delta"], ["one two three four"])["bleu"] == 0.0


# ---------------------------------------------------------------- GSM8K answers

@pytest.mark.parametrize("text, expected", [
    ("So she pays 1,000 + 234 = 1,234 dollars. The answer is $1,234.", "1234"),
    ("The answer is 72.0", "72"),
    ("The answer is 2.50 dollars.", "2.5"),
    ("the answer is: -3", "-3"),
    ("He has 5 + 3 = 8 apples, so 8 * 2 = 16 in all.", "16"),              # fallback: last number
    ("The answer is 6.\n\nQ: Another question?\nA: 2 + 2 = 4. The answer is 4.", "6"),  # first answer wins
    ("The answer is unknown, but there were 12 cows.", "12"),             # no number after the phrase
    ("I do not know.", None),
    ("", None),
])
def test_extract_answer(text, expected):
    assert metrics.extract_answer(text) == expected


def test_gold_answer_reads_after_hashes():
    assert metrics.gold_answer("Natalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72") == "72"
    assert metrics.gold_answer("He has 1,850 pens left.\n#### 1,850") == "1850"


def test_gold_answer_without_hashes_is_an_error():
    with pytest.raises(XKDError, match="####"):
        metrics.gold_answer("The answer is 5.")


def test_accuracy_exact_match_of_normalised_numbers():
    predictions = ["... The answer is $1,850.", "so 10 in total", "The answer is 3."]
    references = ["#### 1,850", "#### 10", "#### 4"]
    assert metrics.accuracy(predictions, references) == {"accuracy": pytest.approx(200 / 3)}


# ---------------------------------------------------------------- SelfBLEU

def test_self_bleu_identical_samples_is_100():
    assert metrics.self_bleu([["the cat sat on the mat"] * 3, ["a b"] * 2]) == pytest.approx(100.0)


def test_self_bleu_disjoint_samples_is_about_zero():
    samples = [["alpha beta gamma delta", "one two three four", "red green blue black"]]
    assert metrics.self_bleu(samples) < 1.0


def test_self_bleu_averages_over_inputs():
    # input 1: identical samples -> 100; input 2: disjoint samples -> ~0; mean -> ~50
    samples = [["x y z w v"] * 2, ["alpha beta gamma delta", "one two three four"]]
    assert metrics.self_bleu(samples) == pytest.approx(50.0, abs=0.5)


def test_self_bleu_needs_two_samples_per_input():
    with pytest.raises(XKDError, match="at least 2 samples"):
        metrics.self_bleu([["a b c", "a b c"], ["only one"]])
    with pytest.raises(XKDError):
        metrics.self_bleu([])


# ---------------------------------------------------------------- dispatch and checks

def test_score_dispatches_by_name():
    assert metrics.score("accuracy", ["The answer is 4."], ["#### 4"]) == {"accuracy": 100.0}
    assert math.isclose(metrics.score("bleu", ["a b c d"], ["a b c d"])["bleu"], 100.0)
    assert metrics.score("rouge", ["cats"], ["cat"], use_stemmer=True)["rouge1"] == pytest.approx(100.0)


def test_the_metrics_of_own_tasks_are_registered():
    assert set(CUSTOM_METRICS) <= set(metrics.METRICS)


def test_unknown_metric_suggests_closest():
    with pytest.raises(XKDError, match="Did you mean 'rouge'"):
        metrics.score("rogue", ["a"], ["a"])


@pytest.mark.parametrize("fn", [metrics.rouge, metrics.bleu, metrics.accuracy])
def test_length_mismatch_and_empty_are_errors(fn):
    with pytest.raises(XKDError, match="2 predictions for 1 references"):
        fn(["#### 1", "#### 1"], ["#### 1"])
    with pytest.raises(XKDError, match="nothing to score"):
        fn([], [])


PAIRS = (["the cat sat on the mat", "a dog ran", "hello world there", "x y z w", "nothing"],
         ["the cat is on the mat", "the dog ran far", "hello there world", "x y z w", "something else"])


@pytest.mark.parametrize("headline,metric", [("bleu", "bleu"), ("rouge2", "rouge"), ("rougeL", "rouge")])
def test_example_stats_sum_to_the_corpus_metric(headline, metric):
    """Summed per-example statistics give back the reported metric (corpus BLEU too), and a subset of
    examples is scored as that subset's corpus, which is what the report's bootstrap relies on."""
    predictions, references = PAIRS
    stats = example_stats(headline, predictions, references)
    assert len(stats) == 5
    summed = [sum(column) for column in zip(*stats)]
    assert headline_from_stats(headline, summed, 5) == pytest.approx(metrics.score(metric, predictions, references)[headline])
    subset = [0, 2, 2]  # a resample, with a repeat
    summed = [sum(stats[i][k] for i in subset) for k in range(len(stats[0]))]
    want = metrics.score(metric, [predictions[i] for i in subset], [references[i] for i in subset])[headline]
    assert headline_from_stats(headline, summed, 3) == pytest.approx(want)


def test_example_stats_accuracy():
    stats = example_stats("accuracy", ["The answer is 4", "5", "no idea"], ["#### 4", "#### 6", "#### 1"])
    assert stats == [[100.0], [0.0], [0.0]] and headline_from_stats("accuracy", [100.0], 3) == pytest.approx(100 / 3)


@pytest.mark.parametrize("headline,metric,predictions,references", [
    ("exact_match", "exact", ["Paris.", "the Answer: 4", "no"], ["paris", "the answer 4", "yes"]),
    ("accuracy", "number", ["The answer is 4", "7 apples", "none"], ["4", "#### 7", "12"]),
])
def test_example_stats_of_own_data_metrics(headline, metric, predictions, references):
    """exact and number (tasks of one's own) decompose like accuracy: their mean is the reported metric."""
    stats = example_stats(headline, predictions, references)
    summed = [sum(column) for column in zip(*stats)]
    assert headline_from_stats(headline, summed, 3) == pytest.approx(metrics.score(metric, predictions, references)[headline])
    assert stats[2] == [0.0]


def test_chrf_and_reference_loss_have_no_example_scores():
    from xkd_cli.evaluation.example_scores import SUPPORTED

    assert "chrf" not in SUPPORTED and "loss" not in SUPPORTED
    with pytest.raises(XKDError, match="no per-example scores for metric 'chrf'"):
        example_stats("chrf", ["a"], ["a"])
