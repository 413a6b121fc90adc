"""Regenerate xkd_cli/assets/tokenizer_unigram/tokenizer.json, the second builtin tokenizer: a
SentencePiece-style Unigram model (``▁`` word boundaries, Metaspace) with byte fallback.

Why a second tokenizer: distillation across tokenizers (``xkd distill --cross-tokenizer``) needs two
builtin models that split the same text differently, offline. This one differs from the byte-level BPE
in kind, not only in merges: another segmentation algorithm, another vocabulary size (1,500), another
word-boundary convention and other special ids (``<unk>``=0, ``<pad>``=1, ``</s>``=2, as in many
SentencePiece models), and characters outside its alphabet fall back to ``<0xNN>`` byte tokens.

The corpus is build_tokenizer.py's (the bundled tasks' training text and a little extra English and
German); training runs on one thread, and two builds must agree byte for byte before the file is written.

Usage: python scripts/build_unigram_tokenizer.py [--check]   (--check: fail if the committed file differs)
"""

from __future__ import annotations

import json

from build_tokenizer import ROOT, build_or_check, corpus  # sets the one-thread environment before tokenizers loads

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

OUTPUT = ROOT / "xkd_cli" / "assets" / "tokenizer_unigram" / "tokenizer.json"
VOCAB_SIZE = 1500
SPECIAL_TOKENS = ["<unk>", "<pad>", "</s>"]  # ids 0, 1, 2
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def build() -> str:
    """Train the tokenizer and return its JSON."""
    tokenizer = Tokenizer(models.Unigram(byte_fallback=True))
    # SentencePiece's default normalisation collapses runs of spaces; keep it, it is part of the kind.
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    trainer = trainers.UnigramTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS + BYTE_TOKENS,
                                      unk_token="<unk>", show_progress=False, max_piece_length=12)
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == i, f"{token} must have id {i}"
    return _canonical(tokenizer.to_str(pretty=False))


def _canonical(text: str) -> str:
    """The trained model with its scores rounded and its learned pieces in a fixed order: the EM scores
    differ in their last bits from run to run, and ties would otherwise reorder ids."""
    data = json.loads(text)
    fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    vocab = [[piece, round(score, 2)] for piece, score in data["model"]["vocab"]]
    data["model"]["vocab"] = vocab[:fixed] + sorted(vocab[fixed:], key=lambda v: (-v[1], v[0]))
    # The byte pieces are ordinary pieces of the model (decoded by ByteFallback), not added special tokens
    # that decoding would drop.
    data["model"]["byte_fallback"] = True  # the trainer returns a model without it
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    return json.dumps(data, ensure_ascii=False)


def main() -> int:
    return build_or_check(build, OUTPUT, "build_unigram_tokenizer.py", __doc__.split("\n")[0])


if __name__ == "__main__":
    raise SystemExit(main())
