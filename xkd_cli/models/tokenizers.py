"""Tokenizers: loading one for any model reference, and checking that two models tokenize alike."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from xkd_cli.core.errors import XKDError
from xkd_cli.models.load_errors import remote_code_error, short_error
from xkd_cli.models.zoo import BUILTIN_MODELS, spec_tokenizer


@functools.lru_cache(maxsize=None)
def _load_tokenizer_cached(location: str, stamp: tuple[int, ...], trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    del stamp  # only part of the cache key: see _files_stamp
    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise remote_code_error(location, exc) from exc
        raise XKDError(f"could not load a tokenizer from {location!r} ({short_error(exc)}): "
                       "point at a directory saved by xkd or transformers, or download the hub model first") from exc
    except Exception as exc:  # noqa: BLE001 - many error types; all mean "cannot read this tokenizer"
        raise XKDError(
            f"could not load a tokenizer from {location!r} ({short_error(exc)}): "
            "point at a directory saved by xkd or transformers, or download the hub model first"
        ) from exc


def _files_stamp(location: str) -> tuple[int, ...]:
    """Modification times of a local directory's tokenizer files, so a re-saved run is re-read."""
    directory = Path(location)
    if not directory.is_dir():
        return ()
    return tuple(sorted(f.stat().st_mtime_ns for f in directory.glob("*token*")))


def load_tokenizer(location: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer of a builtin name, saved directory or hub id (cached; returns a private copy)."""
    if location in BUILTIN_MODELS:
        return spec_tokenizer(BUILTIN_MODELS.get(location))
    location = str(location)
    directory = Path(location)
    if directory.is_dir() and not any((directory / f).is_file() for f in TOKENIZER_FILES):
        # transformers would silently build an empty default tokenizer (e.g. T5's 100 sentinel tokens)
        raise XKDError(f"{location} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): save the "
                       "tokenizer beside the model (tokenizer.save_pretrained(DIR)) or pick a model saved by xkd")
    return copy.deepcopy(_load_tokenizer_cached(location, _files_stamp(location), trust_remote_code))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model", "vocab.json",
                   "vocab.txt", "sentencepiece.bpe.model")
"""Files of which a saved tokenizer has at least one (fast, slow sentencepiece, BPE and WordPiece layouts)."""


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of what makes two tokenizers interchangeable (token -> id map and special ids), so data
    made with one tokenizer can be checked against another without loading the first again."""
    specials = [getattr(tokenizer, a) for a in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id")]
    text = json.dumps([sorted(tokenizer.get_vocab().items()), specials], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def tokenizers_match(teacher_tok: PreTrainedTokenizerBase, student_tok: PreTrainedTokenizerBase) -> bool:
    """Whether the two tokenize identically (what :func:`check_same_tokenizer` requires)."""
    try:
        check_same_tokenizer(teacher_tok, student_tok, "teacher", "student")
    except XKDError:
        return False
    return True


def check_same_tokenizer(
    teacher_tok: PreTrainedTokenizerBase,
    student_tok: PreTrainedTokenizerBase,
    teacher_name: str,
    student_name: str,
) -> int:
    """Fail before any compute unless teacher and student tokenize identically; return ``len(tok)``.

    Distillation compares the two models' distributions position by position and token id by token
    id, so different vocabularies would silently compare unrelated tokens. We compare the full
    token → id maps (including added tokens) and the special-token ids, not just sizes. The returned
    size is what callers slice logits to: checkpoints may pad the embedding beyond the tokenizer
    (T5: 32128 rows for 32100 tokens), and the padding rows are not tokens.
    """
    t_size, s_size = len(teacher_tok), len(student_tok)
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    prefix = f"teacher {teacher_name!r} and student {student_name!r} use different tokenizers"
    fix = ("pick a student and teacher from the same model family (same tokenizer), or pass --cross-tokenizer uld "
           "(or shared) to distil across tokenizers")
    if t_size != s_size:
        raise XKDError(f"{prefix}: {t_size} vs {s_size} tokens; {fix}")
    if t_vocab != s_vocab:
        t_by_id = {i: t for t, i in t_vocab.items()}
        s_by_id = {i: t for t, i in s_vocab.items()}
        for i in sorted(set(t_by_id) | set(s_by_id)):
            if t_by_id.get(i) != s_by_id.get(i):
                raise XKDError(
                    f"{prefix}: token id {i} is {t_by_id.get(i)!r} for the teacher but "
                    f"{s_by_id.get(i)!r} for the student; {fix}"
                )
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id"):
        t_id, s_id = getattr(teacher_tok, attr), getattr(student_tok, attr)
        if t_id != s_id:
            raise XKDError(f"{prefix}: {attr} is {t_id} for the teacher but {s_id} for the student; {fix}")
    return t_size

