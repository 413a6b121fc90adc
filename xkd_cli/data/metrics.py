"""Evaluation metrics, as the paper's field computes them (docs/method.md, "Evaluation"): what a task scores
its predictions with (``Task.metric``).

Pure functions of (predictions, references). Every score is a percentage in [0, 100], like the
paper's tables: ROUGE F-measures x 100, sacreBLEU's native 0-100 scale, accuracy x 100 and
SelfBLEU x 100 (so the paper's diversity ``1 - SelfBLEU`` is ``100 - self_bleu(...)`` here).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

from xkd_cli.core.errors import XKDError
from xkd_cli.core.registry import Registry

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise XKDError(f"got {len(predictions)} predictions for {len(references)} references: "
                       "score one prediction per reference, in the same order")
    if not predictions:
        raise XKDError("nothing to score: pass at least one prediction/reference pair")


def rouge(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure x 100 (``rouge-score``; no stemming by default, as docs/method.md says).

    rouge-score's default tokenizer lowercases and keeps only ``[a-z0-9]`` runs, which is right for
    English (XSum) but drops non-ASCII letters.
    """
    from rouge_score import rouge_scorer  # imported here: only summarisation tasks need it

    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # argument order: (target, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: 100.0 * total / len(predictions) for key, total in totals.items()}


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """Corpus sacreBLEU (0-100) with sacreBLEU's defaults (13a tokenizer, exp smoothing) and its signature."""
    from sacrebleu.metrics import BLEU  # imported here: only BLEU and SelfBLEU need it

    _check_pairs(predictions, references)
    metric = BLEU()
    result = metric.corpus_score(list(predictions), [list(references)])
    return {"bleu": float(result.score), "bleu_signature": str(metric.get_signature())}


_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
_ANSWER_IS = re.compile(r"the answer is\s*:?\s*\$?\s*(" + _NUMBER + ")", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def normalize_number(text: str) -> str | None:
    """Canonical form of a number: no ``$`` or ``,``, no trailing zeros (``"72.0"`` -> ``"72"``).

    Normalising both sides means "$1,234.00" and "1234" compare equal, as they should: GSM8K
    golds are whole numbers and a model writing "72.0" got the answer right.
    """
    cleaned = text.replace(",", "").replace("$", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The predicted number: the first one after "The answer is", else the last number in the text.

    The *first* "The answer is" wins because few-shot models keep generating new "Q: ... A: ... The
    answer is" exemplars after answering. Returns the normalised number, or None without a number.
    """
    match = _ANSWER_IS.search(text)
    if match:
        return normalize_number(match.group(1))
    numbers = _ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def gold_answer(reference: str) -> str:
    """The gold number of a GSM8K-style reference: what follows ``####``, normalised."""
    _, sep, tail = reference.rpartition("####")
    number = normalize_number(tail.strip()) if sep else None
    if number is None:
        raise XKDError(f"reference has no '#### <number>' final answer: {reference[-60:]!r}; "
                       "GSM8K-style references must end with '#### N'")
    return number


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy x 100 of :func:`extract_answer` (prediction) vs :func:`gold_answer` (reference)."""
    _check_pairs(predictions, references)
    hits = sum(extract_answer(p) == gold_answer(r) for p, r in zip(predictions, references))
    return {"accuracy": 100.0 * hits / len(predictions)}


def self_bleu(samples: Sequence[Sequence[str]]) -> float:
    """SelfBLEU x 100: each of an input's k samples scored by sentence BLEU against the other k-1.

    Averaged over the k samples of an input, then over inputs (each input weighs the same).
    100 means all samples are identical; diversity in the paper's sense is ``100 - self_bleu``.
    """
    from sacrebleu.metrics import BLEU  # imported here: only BLEU and SelfBLEU need it

    if not samples:
        raise XKDError("SelfBLEU needs at least one input with samples")
    short = [i for i, group in enumerate(samples) if len(group) < 2]
    if short:
        raise XKDError(f"SelfBLEU needs at least 2 samples per input, but input {short[0]} has "
                       f"{len(samples[short[0]])}: generate with --num-samples 2 or more")
    metric = BLEU(effective_order=True)  # sentence-level BLEU, as sacrebleu.sentence_bleu does
    per_input = []
    for group in samples:
        scores = [metric.sentence_score(s, [o for j, o in enumerate(group) if j != i]).score
                  for i, s in enumerate(group)]
        per_input.append(sum(scores) / len(scores))
    return sum(per_input) / len(per_input)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus chrF (sacreBLEU's defaults, 0-100): character n-grams, kinder than BLEU to short or inflected text."""
    from sacrebleu.metrics import CHRF  # imported here: only chrF tasks need it

    _check_pairs(predictions, references)
    return {"chrf": float(CHRF().corpus_score(list(predictions), [list(references)]).score)}


def normalized_text(text: str) -> str:
    """Lowercase, no punctuation, single spaces: "The answer: Paris." matches "the answer paris"."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def exact(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Exact match x 100 of the normalised strings (see :func:`normalized_text`)."""
    _check_pairs(predictions, references)
    hits = sum(normalized_text(p) == normalized_text(r) for p, r in zip(predictions, references))
    return {"exact_match": 100.0 * hits / len(predictions)}


def number(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """GSM8K's answer extraction for one's own data: the gold is what follows ``####``, or else the whole
    reference read as a number (a target field holding just the answer)."""
    _check_pairs(predictions, references)
    golds = []
    for reference in references:
        gold = gold_answer(reference) if "####" in reference else normalize_number(reference.strip())
        if gold is None:
            raise XKDError(f"reference {reference[-60:]!r} is not a number and has no '#### N' final answer; "
                           "the 'number' metric needs one of those in every target (or use metric: exact)")
        golds.append(gold)
    hits = sum(extract_answer(p) == g for p, g in zip(predictions, golds))
    return {"accuracy": 100.0 * hits / len(predictions)}


def no_metric(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """``metric: none``: nothing to compare; evaluation reports the references' loss and perplexity instead."""
    _check_pairs(predictions, references)
    return {}


METRICS: Registry[Callable[..., dict]] = Registry("metric")
METRICS.register("rouge", rouge)
METRICS.register("bleu", bleu)
METRICS.register("accuracy", accuracy)
METRICS.register("chrf", chrf)
METRICS.register("exact", exact)
METRICS.register("number", number)
METRICS.register("none", no_metric)


def score(metric: str, predictions: Sequence[str], references: Sequence[str], **kw) -> dict[str, float | str]:
    """Score with a metric by name ("rouge", "bleu", "accuracy"); ``kw`` goes to it (e.g. use_stemmer)."""
    return METRICS.get(metric)(predictions, references, **kw)
