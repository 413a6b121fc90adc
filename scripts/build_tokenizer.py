"""Regenerate xkd_cli/assets/tokenizer/tokenizer.json, the byte-level BPE shared by the builtin tiny models.

Why this tokenizer: a ~2k vocabulary keeps the embedding of a 1-8M parameter model small, and the
merges are learned on the bundled synthetic tasks, so their examples come out compact; byte-level
pre-tokenization and decoding make *any* UTF-8 text round-trip losslessly (no <unk> ever).

Special tokens sit at fixed ids in this order: <pad>=0, </s>=1, <unk>=2. There is no
post-processor: callers append </s> themselves (xkd_cli.data.batches does).

The corpus is the training split of synth-sum, synth-mt and synth-gsm (prompts and references,
exactly as the tasks produce them), the GSM8K few-shot exemplars, and a little varied English and
German text written below, so real text does not degrade to single bytes. Training runs with
one thread and inputs in a fixed order, and the script checks that two builds agree byte for
byte before writing.

Usage: python scripts/build_tokenizer.py [--check]   (--check: fail if the committed file differs)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # tokenizers' trainer: one thread, set before it is imported
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from xkd_cli.data import synth  # noqa: E402
from xkd_cli.data.taskfile import get_task  # noqa: E402
from xkd_cli.data.tasks import GSM8K_FEW_SHOT_PREFIX  # noqa: E402

OUTPUT = ROOT / "xkd_cli" / "assets" / "tokenizer" / "tokenizer.json"
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2

EXTRA_TEXT = """\
The committee met on Tuesday to discuss the budget for next year. Members agreed that spending on
schools, hospitals and public transport should rise, although several councillors warned about the
cost. "We have to be realistic," one of them said. The final decision is expected in the spring.
Researchers found that people who walk for thirty minutes a day sleep better and feel less stressed.
The study followed 1,200 adults over five years. Prices rose by 3.5% in March, the highest rate since
2019, according to official figures. Shares fell sharply after the company reported a loss of $45
million. What is the capital of France? Paris is the capital and largest city of France.
She opened the window, looked at the rain and decided to stay at home with a good book and a cup of tea.
If a train travels 120 miles in 2 hours, its average speed is 120 / 2 = 60 miles per hour.
Der Ausschuss hat am Dienstag über den Haushalt für das nächste Jahr beraten. Die Mitglieder waren sich
einig, dass die Ausgaben für Schulen, Krankenhäuser und den öffentlichen Verkehr steigen sollten.
"Wir müssen realistisch bleiben", sagte einer von ihnen. Die Entscheidung wird im Frühjahr erwartet.
Ich möchte gerne einen Kaffee und ein Stück Kuchen, bitte. Wie spät ist es? Es ist halb neun.
Die Kinder spielen im Garten, während ihre Eltern in der Küche das Abendessen vorbereiten.
Können Sie mir bitte sagen, wo der Bahnhof ist? Gehen Sie geradeaus und dann die zweite Straße links.
Die Preise sind im März um 3,5 Prozent gestiegen. Über 1.200 Menschen haben an der Studie teilgenommen.
Numbers and symbols: 0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = % $ £ € ( ) [ ] { } < > # @ & ! ? : ; , . ' "
"""


def corpus() -> list[str]:
    """Training texts in a fixed order."""
    texts: list[str] = []
    for name in synth.TASK_NAMES:
        for example in get_task(name).load("train"):
            texts += [example.prompt, example.reference]
    texts.append(GSM8K_FEW_SHOT_PREFIX)
    texts += EXTRA_TEXT.split("\n")
    return texts


def build() -> str:
    """Train the tokenizer and return its JSON."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, f"{token} must have id {i}"
    return tokenizer.to_str(pretty=True)


def build_or_check(build_json, output: Path, script: str, description: str) -> int:
    """Build twice (the builds must agree byte for byte), then write ``output`` or, with --check, compare."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="fail if the committed tokenizer differs")
    args = parser.parse_args()
    first, second = build_json(), build_json()
    if first != second:
        print("error: two builds differ; the tokenizer training is not deterministic", file=sys.stderr)
        return 1
    if args.check:
        same = output.exists() and output.read_text(encoding="utf-8") == first
        print(f"{output}: {'up to date' if same else f'OUT OF DATE: run scripts/{script}'}")
        return 0 if same else 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(first, encoding="utf-8")
    print(f"wrote {output} ({Tokenizer.from_str(first).get_vocab_size()} tokens)")
    return 0


def main() -> int:
    return build_or_check(build, OUTPUT, "build_tokenizer.py", __doc__.split("\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
