"""``synth-sum-pref``: synth-sum's rows as preference pairs in TRL's format. The chosen response is the reference
summary; the rejected one is a damaged copy, the kind of damage recorded in the row's ``damage`` column:

- ``wrong-entity``: one name, place or number swapped for another of the generator's vocabulary that neither the
  document nor the summary mentions (a town for a town, a surname for a surname, 630 for 410, eight for five);
- ``repeated-clause``: the longest clause or phrase that carries a fact said twice in a row;
- ``dropped-fact``: a phrase that carries a fact (a name or a number) left out: a place, a price, a duration, a
  trailing clause; the rest of the sentence unchanged and still grammatical.

So a reward model that prefers the chosen summary has read the document (wrong-entity), or penalises a
degenerate repetition, or misses an omission; its accuracy per kind says which.

The kinds take turns (row i of a split gets kind i mod 3, or the next kind that applies when one cannot), and
each row draws from its own generator seeded with its id, so a row never changes with the split's size.
Rows: ``{"prompt": document, "chosen", "rejected", "damage", "id"}``, with synth-sum's ids.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from xkd_cli.data.synth.common import NUMBER_WORDS, PEOPLE, Row
from xkd_cli.data.synth.summarization import COMPANY_STEMS, RIVERS, SURNAMES, TOWNS

DAMAGES = ("wrong-entity", "repeated-clause", "dropped-fact")
SEED = "synth-sum-pref/1"

# Names of one kind swap for names of the same kind; numbers for numbers.
_VOCABULARIES = (TOWNS, tuple(first for first, _ in PEOPLE), SURNAMES, COMPANY_STEMS, RIVERS)
_NUMBER_WORDS = NUMBER_WORDS[2:]  # "two".."twelve": "zero" and "one" read as words more than as numbers

# Phrases that leave a grammatical sentence behind when dropped; those with a name or a number carry a fact (every
# summary template of xkd_cli.data.synth.summarization has one; tests/test_preference.py checks every row).
_PHRASES = re.compile("|".join((
    r" in [A-Z][\w']*\b(?! [A-Z])",                     # in Cardiff
    r",? (?:after|leaving|affecting|succeeding) [^,]*(?=\.$)",  # a trailing clause
    r" (?:for|costing|in a) £\d+m(?: deal)?",           # for £76m, in a £67m deal
    r" for \d+ days",
    r" by \d+ goals to \d+", r" \d+-\d+(?= away)",      # football scores
    r" to replace [A-Z]\w+ [A-Z]\w+", r" former [A-Z]\w+ [A-Z]\w+ manager",
    r" [A-Z]\w+ firm(?= [A-Z])", r"^[A-Z]\w+ company ",  # Inverness firm Northgate Textiles
)))
_FACT = re.compile(r"[A-Z\d]|\b(?:" + "|".join(_NUMBER_WORDS) + r")\b")  # a name or a number


def _fact_phrases(summary: str) -> list[re.Match]:
    return [match for match in _PHRASES.finditer(summary) if _FACT.search(match.group())]


def _drop_fact(summary: str, rng: random.Random) -> str | None:
    phrases = _fact_phrases(summary)
    if not phrases:
        return None
    drop = phrases[rng.randrange(len(phrases))]
    rest = summary[:drop.start()] + summary[drop.end():]
    return rest[:1].upper() + rest[1:]


def _repeat_clause(summary: str) -> str | None:
    phrases = _fact_phrases(summary)
    if not phrases:
        return None
    clause = max(phrases, key=lambda m: len(m.group()))
    return summary[:clause.end()] + clause.group() + summary[clause.end():]


def _words(pattern_words: Sequence[str]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(map(re.escape, pattern_words)) + r")\b")


_NAME_PATTERNS = tuple(_words(vocabulary) for vocabulary in _VOCABULARIES)
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")


def _other_number(n: int, taken: set[str], rng: random.Random) -> str:
    step = 10 if n >= 30 and n % 10 == 0 else 1
    low = max(step, (n // 2) // step * step)
    choices = [str(k) for k in range(low, 2 * n + 4, step) if k != n and str(k) not in taken]
    return choices[rng.randrange(len(choices))]


def _wrong_entity(summary: str, document: str, rng: random.Random) -> str | None:
    """One entity of the summary swapped for one of its kind that neither text mentions."""
    text = document + " " + summary
    present = set(re.findall(r"\w+", text))  # every name of the vocabularies is one word
    spots: list[tuple[re.Match, list[str]]] = []
    for pattern, vocabulary in zip(_NAME_PATTERNS, _VOCABULARIES):
        others = [name for name in vocabulary if name not in present]
        spots += [(match, others) for match in pattern.finditer(summary)]
    lowered = {word.lower() for word in present}
    unused_words = [w for w in _NUMBER_WORDS if w not in lowered]
    for match in _NUMBER_WORD.finditer(summary):
        same_case = [w.capitalize() if match.group()[0].isupper() else w for w in unused_words]
        spots.append((match, same_case))
    taken = set(_DIGITS.findall(text))
    spots += [(match, []) for match in _DIGITS.finditer(summary)]
    spots = [(match, others) for match, others in spots if others or match.group().isdigit()]
    if not spots:
        return None
    match, others = spots[rng.randrange(len(spots))]
    new = _other_number(int(match.group()), taken, rng) if match.group().isdigit() else \
        others[rng.randrange(len(others))]
    return summary[:match.start()] + new + summary[match.end():]


def damage(summary: str, document: str, kind: str, rng: random.Random) -> str | None:
    """The summary damaged in the way ``kind`` names (one of :data:`DAMAGES`); None where it cannot apply."""
    if kind == "wrong-entity":
        return _wrong_entity(summary, document, rng)
    if kind == "repeated-clause":
        return _repeat_clause(summary)
    if kind == "dropped-fact":
        return _drop_fact(summary, rng)
    raise ValueError(f"unknown damage {kind!r}: use one of {', '.join(DAMAGES)}")


def preference_row(row: Row, index: int) -> Row:
    """A synth-sum row (``document``, ``summary``, ``id``) as a preference pair (its ``index`` picks the damage)."""
    rng = random.Random(f"{SEED}/{row['id']}")
    for turn in range(len(DAMAGES)):
        kind = DAMAGES[(index + turn) % len(DAMAGES)]
        rejected = damage(row["summary"], row["document"], kind, rng)
        if rejected is not None and rejected != row["summary"]:
            return {"prompt": row["document"], "chosen": row["summary"], "rejected": rejected, "damage": kind,
                    "id": row["id"]}
    raise RuntimeError(f"synth-sum-pref: no damage applies to summary {row['summary']!r}")


def preference_rows(rows: Sequence[Row]) -> list[Row]:
    """synth-sum's rows of one split as synth-sum-pref's (new dicts)."""
    return [preference_row(row, index) for index, row in enumerate(rows)]
