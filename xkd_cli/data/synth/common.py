"""What the bundled task generators share: the row type, drawing helpers and first names."""

from __future__ import annotations

import random

Row = dict


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve")


def num_en(n: int) -> str:
    """English number as a word up to twelve, digits above (newspaper style)."""
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


# (first name, gender) of the people in synth-sum's stories and synth-gsm's problems
PEOPLE = (("Alice", "f"), ("James", "m"), ("Priya", "f"), ("Tom", "m"), ("Fatima", "f"),
          ("David", "m"), ("Sarah", "f"), ("Owen", "m"), ("Grace", "f"), ("Liam", "m"),
          ("Hannah", "f"), ("Rhys", "m"), ("Chloe", "f"), ("Marcus", "m"), ("Niamh", "f"),
          ("Ben", "m"), ("Aisha", "f"), ("Callum", "m"), ("Emma", "f"), ("Kieran", "m"))
