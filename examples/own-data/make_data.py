"""Writes the data of README's two worked examples ("Your own data"), deterministically:

* ``translate/`` (messages, for the tiny chat models): "Translate to German: …" → the German sentence, one
  user turn and one assistant turn a row; scored by chrF.
* ``news/`` (prompt-completion, for T5): "summarize: <a news paragraph>" → its one-sentence summary; scored by
  ROUGE-2.

The sentences and paragraphs come from xkd's own offline generators (xkd_cli/data/synth: the grammar of
synth-mt, the stories of synth-sum) drawn with seeds of their own, so these files stand for data a user brings:
rows in TRL's formats on disk, read through a task file. A held-out row never repeats a training row.

    python examples/own-data/make_data.py          # rewrites examples/own-data/{translate,news}/
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from xkd_cli.data.synth.summarization import make_sum
from xkd_cli.data.synth.translation import make_mt

HERE = Path(__file__).resolve().parent
SIZES = {"validation": 200, "test": 200, "train": 1000}  # held-out splits first, as the bundled tasks deal them


def translate_row(rng: random.Random) -> tuple[str, dict]:
    key, row = make_mt(rng)
    pair = row["translation"]
    return key, {"messages": [{"role": "user", "content": f"Translate to German: {pair['en']}"},
                              {"role": "assistant", "content": pair["de"]}]}


def news_row(rng: random.Random) -> tuple[str, dict]:
    key, row = make_sum(rng)
    return key, {"prompt": f"summarize: {row['document']}", "completion": row["summary"]}


def write(folder: Path, make: Callable[[random.Random], tuple[str, dict]], seed: int) -> None:
    rng = random.Random(seed)
    seen: set[str] = set()
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        rows: list[dict] = []
        while len(rows) < n:
            key, row = make(rng)
            if key not in seen:
                seen.add(key)
                rows.append(row)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")


def main() -> None:
    write(HERE / "translate", translate_row, seed=20261207)
    write(HERE / "news", news_row, seed=20261208)


if __name__ == "__main__":
    main()
