"""Deterministic generators for the bundled offline tasks: synth-sum, synth-mt, synth-gsm and synth-sum-pref.

Why they exist: the real datasets (XSum, WMT14, GSM8K) need a download and hours of GPU time.
These tasks let the whole pipeline (SFT, teacher generation, distillation, evaluation) run
offline on a CPU in minutes while still rewarding model capacity and training:

- ``synth-sum`` (:mod:`.summarization`): news-like paragraphs with distractor sentences; the target is a
  one-sentence abstractive summary that recombines facts from several sentences.
- ``synth-mt`` (:mod:`.translation`): English to German on a controlled grammar with real German
  morphology and word order.
- ``synth-gsm`` (:mod:`.word_problems`): grade-school word problems with 2-4 arithmetic operations and a
  worked solution in GSM8K's style.
- ``synth-sum-pref`` (:mod:`.preference`): synth-sum's rows as preference pairs, the reference summary over a
  damaged copy (a wrong entity, a repeated clause or a dropped fact, recorded per row).

Every task is generated from a fixed seed with :class:`random.Random` (whose integer-seeded
``random``/``randrange``/``choice``/``shuffle`` are stable across Python versions), never from
``hash()`` or set order, so every machine produces the same rows. Rows are deduplicated on their
source text and dealt out validation, test, train (evaluation splits first, so that resizing the
training split never changes the evaluation sets); the splits are therefore disjoint.

:func:`rows` returns rows in the schema of the real counterpart (``document/summary/id``;
``translation{en,de}``; ``question/answer``; TRL's ``prompt/chosen/rejected``), so
:mod:`xkd_cli.data.tasks` parses synthetic and real data with the same code.
"""

from __future__ import annotations

import copy
import random
from functools import lru_cache
from typing import Callable

from xkd_cli.core.errors import XKDError
from xkd_cli.data.synth.common import Row
from xkd_cli.data.synth.preference import preference_rows
from xkd_cli.data.synth.summarization import make_sum
from xkd_cli.data.synth.translation import make_mt
from xkd_cli.data.synth.word_problems import make_gsm

SEED = 1729
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}
SPLITS = tuple(SPLIT_SIZES)
_DEAL_ORDER = ("validation", "test", "train")  # eval splits first: stable when train size changes


_GENERATORS: dict[str, tuple[int, Callable[[random.Random], tuple[str, Row]]]] = {
    "synth-sum": (SEED + 1, make_sum),
    "synth-mt": (SEED + 2, make_mt),
    "synth-gsm": (SEED + 3, make_gsm),
}
# Tasks made from another bundled task's rows: name -> (that task, how one split's rows become this task's)
_DERIVED: dict[str, tuple[str, Callable[[tuple[Row, ...]], list[Row]]]] = {
    "synth-sum-pref": ("synth-sum", preference_rows),
}
TASK_NAMES = tuple(_GENERATORS)  # the generated tasks: the bundled tokenizer is trained on their text
ALL_TASK_NAMES = TASK_NAMES + tuple(_DERIVED)  # derived rows reuse that text: they add nothing for the tokenizer


@lru_cache(maxsize=None)
def _generate(task_name: str) -> dict[str, tuple[Row, ...]]:
    seed, make = _GENERATORS[task_name]
    rng = random.Random(seed)
    total = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    pool: list[Row] = []
    attempts = 0
    while len(pool) < total:
        attempts += 1
        if attempts > 50 * total:
            raise RuntimeError(f"{task_name}: generator cannot produce {total} distinct rows")
        key, row = make(rng)
        if key not in seen:
            seen.add(key)
            pool.append(row)
    splits: dict[str, tuple[Row, ...]] = {}
    start = 0
    for split in _DEAL_ORDER:
        size = SPLIT_SIZES[split]
        chunk = pool[start:start + size]
        start += size
        if task_name == "synth-sum":  # the xsum schema carries its own id column
            chunk = [dict(row, id=f"{split}-{i:05d}") for i, row in enumerate(chunk)]
        splits[split] = tuple(chunk)
    return splits


@lru_cache(maxsize=None)
def _derive(task_name: str, split: str) -> tuple[Row, ...]:
    source, derive = _DERIVED[task_name]
    return tuple(derive(_generate(source)[split]))


def rows(task_name: str, split: str) -> list[Row]:
    """The rows of one split of a bundled task, in the schema of its real counterpart.

    synth-sum -> {"document", "summary", "id"} (XSum); synth-mt -> {"translation": {"de", "en"}}
    (WMT14); synth-gsm -> {"question", "answer"} (GSM8K); synth-sum-pref -> {"prompt", "chosen", "rejected",
    "damage", "id"} (TRL's preference format). Generated once per process and cached; each call returns
    fresh copies, so callers may modify them.
    """
    if task_name not in ALL_TASK_NAMES:
        raise XKDError(f"{task_name!r} is not a bundled synthetic task: use one of {', '.join(ALL_TASK_NAMES)}")
    if split not in SPLIT_SIZES:
        raise XKDError(f"unknown split {split!r} for {task_name}: use one of {', '.join(SPLITS)}")
    made = _derive(task_name, split) if task_name in _DERIVED else _generate(task_name)[split]
    return copy.deepcopy(list(made))
