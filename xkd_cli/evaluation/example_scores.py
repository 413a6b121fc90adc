"""Per-example scores: what each evaluated example contributes to the task's headline metric, so that a
statistic over resampled examples (the report's paired bootstrap) recomputes the metric exactly.

A headline metric is a function of a sum over examples of per-example *statistics*:

* ``rouge2`` / ``rouge1`` / ``rougeL``  one statistic, the example's F-measure x 100; metric = mean.
* ``accuracy`` / ``exact_match``        one statistic, 100 for a correct answer, else 0; metric = mean.
* ``bleu``  corpus BLEU is not a mean of sentence scores.  Its statistics are sacreBLEU's sufficient
  statistics of the example (hypothesis and reference length, matching and total n-grams, n = 1..4),
  and the metric is sacreBLEU's ``compute_bleu`` of their sum, so a resample is scored as corpus BLEU.

Corpus chrF and the reference loss (``metric: none``) have no per-example scores here: :data:`SUPPORTED`
lists the headlines that do, and evaluation writes none for the others.

``example_stats(headline, predictions, references)`` gives one list of floats per example and
``headline_from_stats(headline, summed, count)`` the metric of a set of examples from their summed
statistics; over all examples it equals the metric ``xkd eval`` reports (tested).
"""

from __future__ import annotations

from typing import Sequence

from xkd_cli.core.errors import XKDError
from xkd_cli.data import metrics

ROUGE_KEYS = metrics.ROUGE_TYPES
SUPPORTED = (*ROUGE_KEYS, "accuracy", "exact_match", "bleu")


def example_stats(headline: str, predictions: Sequence[str], references: Sequence[str],
                  use_stemmer: bool = False) -> list[list[float]]:
    """One statistics vector per (prediction, reference) pair; see the module docstring."""
    if headline in ROUGE_KEYS:
        from rouge_score import rouge_scorer  # imported here: only summarisation tasks need it

        scorer = rouge_scorer.RougeScorer([headline], use_stemmer=use_stemmer)
        return [[100.0 * scorer.score(r, p)[headline].fmeasure] for p, r in zip(predictions, references)]
    if headline == "accuracy":  # GSM8K's scoring, and the 'number' metric's (which takes a bare number as gold)
        return [[100.0 * (metrics.extract_answer(p) == gold)] for p, gold in
                zip(predictions, [metrics.gold_answer(r) if "####" in r else metrics.normalize_number(r.strip())
                                  for r in references])]
    if headline == "exact_match":
        return [[100.0 * (metrics.normalized_text(p) == metrics.normalized_text(r))] for p, r in zip(predictions, references)]
    if headline == "bleu":
        from sacrebleu.metrics import BLEU  # imported here: only BLEU needs it

        stats = BLEU()._extract_corpus_statistics(list(predictions), [list(references)])
        return [[float(x) for x in row] for row in stats]
    raise XKDError(f"no per-example scores for metric '{headline}' (known: {', '.join(SUPPORTED)}).")


def headline_from_stats(headline: str, summed: Sequence[float], count: int) -> float:
    """The headline metric of ``count`` examples whose statistics sum to ``summed``."""
    if headline == "bleu":
        from sacrebleu.metrics import BLEU  # imported here: only BLEU needs it

        sys_len, ref_len = summed[0], summed[1]
        correct, total = [int(round(x)) for x in summed[2:6]], [int(round(x)) for x in summed[6:10]]
        metric = BLEU()  # its defaults (exp smoothing) are what metrics.bleu scores with
        return float(BLEU.compute_bleu(correct, total, int(round(sys_len)), int(round(ref_len)),
                                       smooth_method=metric.smooth_method, smooth_value=metric.smooth_value,
                                       effective_order=metric.effective_order).score)
    return float(summed[0]) / count
