"""Aligning two tokenisations of one text, so a teacher with another tokenizer can be compared with the
student position by position (``xkd distill --cross-tokenizer``; docs/method.md, "Different tokenizers").

The teacher reads the same *text* as the student: the student's target ids (ground truth or its own
sample) are decoded, and the prompt's and target's text are encoded with the teacher's tokenizer.
Positions are matched by character offsets into the target text:

* the student's position ``i`` predicts its token ``i`` after the text ``text[:b_i]``, b_i the end of its
  token ``i − 1`` (0 for the first);
* the teacher's position ``j`` predicts its token ``j`` after ``text[:e_{j−1}]``;
* the two are *aligned* when ``b_i = e_{j−1}``: both models have read exactly the same characters, so
  their next-token distributions answer the same question, each over its own vocabulary.  Merges and
  splits leave the positions inside a merged span unaligned (only the span's first position has a
  partner); a token that ends inside a character (byte fallback, partial UTF-8 bytes of a byte-level
  BPE) never ends a span.  The end-of-sequence position of one is aligned with the other's.

``TokenMap`` pairs the tokens that spell the same text in both vocabularies (the shared part of the
vocabularies, for ``--cross-tokenizer shared``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from xkd_cli.data.batches import IGNORE, Batch, encode_prompts, make_batch, special_ids
from xkd_cli.models.loaded_model import LoadedModel


def token_ends_by_decoding(tokenizer, ids: Sequence[int], text: str) -> list[int | None]:
    """Character end of each token in ``text`` (the decoding of ``ids``): the length of the decoded prefix
    that ends with it, or None where that prefix is not a prefix of ``text`` (the token ends inside a
    character, e.g. one byte of a multi-byte character)."""
    ends: list[int | None] = []
    for i in range(len(ids)):
        prefix = tokenizer.decode(list(ids[: i + 1]), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        ends.append(len(prefix) if text.startswith(prefix) and "\ufffd" not in prefix[-1:] else None)
    return ends


def encode_with_ends(tokenizer, text: str) -> tuple[list[int], list[int | None]]:
    """The tokenizer's own ids for ``text`` and each token's character end in ``text`` (from the fast
    tokenizer's offsets, which point into the text before any normalisation; else by decoding)."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [end for _, end in encoded["offset_mapping"]]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids, token_ends_by_decoding(tokenizer, ids, tokenizer.decode(ids, skip_special_tokens=True))


def align_positions(student_ends: Sequence[int | None], teacher_ends: Sequence[int | None], *,
                    student_positions: int, teacher_positions: int) -> list[int | None]:
    """For each of the student's ``student_positions`` positions, the teacher position that has read the
    same characters before it, or None (module docstring).  ``*_ends`` are the character ends of the
    text tokens; positions beyond them predict end-of-sequence and start after the whole text."""
    after: dict[int, int] = {0: 0}  # a boundary in the text -> the teacher position that starts there
    last = 0
    for j, end in enumerate(teacher_ends):
        if end is None or end < last:  # inside a character, or out of order: no boundary here
            continue
        last = end
        if j + 1 < teacher_positions:
            after[end] = j + 1  # tokens of zero width (a lone "▁") share a boundary: the last one wins
    aligned: list[int | None] = []
    for i in range(student_positions):
        boundary = 0 if i == 0 else (student_ends[i - 1] if i - 1 < len(student_ends) else None)
        aligned.append(None if boundary is None else after.get(boundary))
    return aligned


def same_pieces(student_ends: Sequence[int | None], teacher_ends: Sequence[int | None],
                partners: Sequence[int | None]) -> list[bool]:
    """For each student position, whether its partner (:func:`align_positions`) predicts the same piece of
    text next: both tokens end at the same character, or both are end-of-sequence.  Only there do the two
    next-token distributions share their answer; where the teacher's next token is " could" and the
    student's " cou", the teacher's mass on " could" says nothing about the student's " cou"."""
    matched = []
    for i, j in enumerate(partners):
        s_end = student_ends[i] if i < len(student_ends) else "eos"
        t_end = teacher_ends[j] if j is not None and j < len(teacher_ends) else "eos"
        matched.append(j is not None and s_end is not None and s_end == t_end)
    return matched


@dataclass
class AlignedTeacher:
    """A batch re-tokenised for the teacher, and where its positions meet the student's."""

    batch: Batch             # the teacher's batch (its own layout and token ids)
    positions: torch.Tensor  # B x T_student int64: the teacher position aligned with each student position (0 if none)
    aligned: torch.Tensor    # B x T_student bool: whether the student position has a partner
    matched: torch.Tensor    # B x T_student bool: aligned, and the partner's next piece is the student's

    def gather(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's logits rows at the student's positions, ``B x T_student x V_teacher``."""
        index = self.positions.to(teacher_logits.device)[..., None].expand(-1, -1, teacher_logits.shape[-1])
        return teacher_logits.gather(1, index)


class Retokenizer:
    """Builds the teacher's view of a student batch: same prompt text, same target text, the teacher's
    tokens and layout (a T5 teacher may teach a decoder-only student)."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel, *, prompt_text: Callable[[str], str | None],
                 max_input_len: int, keep_end: bool = False):
        self.student_tok, self.teacher_tok = student.tokenizer, teacher.tokenizer
        self.teacher_is_encoder_decoder = teacher.is_encoder_decoder
        self.prompt_text, self.max_input_len, self.keep_end = prompt_text, max_input_len, keep_end
        self.student_eos = student.tokenizer.eos_token_id
        self.pad_id, self.eos_id, self.start_id = special_ids(teacher.tokenizer, teacher.model.config)

    def __call__(self, batch: Batch, prompt_ids: Sequence[Sequence[int]]) -> AlignedTeacher:
        """``prompt_ids``: the student's prompt ids of the batch's rows, decoded for a row whose example
        id names no known prompt."""
        prompts, targets, alignments = [], [], []
        for row, (example_id, labels) in enumerate(zip(batch.ids, batch.labels.tolist())):
            ids = [t for t in labels if t != IGNORE]
            ends_with_eos = bool(ids) and ids[-1] == self.student_eos
            text_ids = ids[:-1] if ends_with_eos else ids
            text = self.student_tok.decode(text_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            student_ends = token_ends_by_decoding(self.student_tok, text_ids, text)
            teacher_ids, teacher_ends = encode_with_ends(self.teacher_tok, text)
            target = teacher_ids + [self.eos_id] if ends_with_eos or not teacher_ids else teacher_ids
            partners = align_positions(student_ends, teacher_ends, student_positions=len(ids),
                                       teacher_positions=len(target))
            alignments.append((partners, same_pieces(student_ends, teacher_ends, partners)))
            prompt = self.prompt_text(example_id) if example_id else None
            if prompt is None:
                prompt = self.student_tok.decode(prompt_ids[row], skip_special_tokens=True).rstrip("\n")
            prompts.append(prompt)
            targets.append(target)
        teacher_prompts = encode_prompts(self.teacher_tok, prompts, is_encoder_decoder=self.teacher_is_encoder_decoder,
                                         max_len=self.max_input_len, keep_end=self.keep_end)
        teacher_batch = make_batch(teacher_prompts, targets, is_encoder_decoder=self.teacher_is_encoder_decoder,
                                   pad_id=self.pad_id, decoder_start_id=self.start_id, ids=batch.ids)
        shape = batch.labels.shape
        positions = torch.zeros(shape, dtype=torch.long)
        aligned = torch.zeros(shape, dtype=torch.bool)
        matched = torch.zeros(shape, dtype=torch.bool)
        for row, (partners, same) in enumerate(alignments):
            for i, (j, same_piece) in enumerate(zip(partners, same)):
                if j is not None:
                    positions[row, i], aligned[row, i], matched[row, i] = j, True, same_piece
        return AlignedTeacher(teacher_batch, positions, aligned, matched)


def piece_text(tokenizer, token_id: int, anchor: list[int]) -> str:
    """The text a token adds after an ``anchor`` token (so a leading space, "Ġ" or "▁", shows as " ")."""
    base = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    return tokenizer.decode(anchor + [token_id], clean_up_tokenization_spaces=False)[len(base):]


def _byte_piece(tokenizer, token_id: int) -> bool:
    """A SentencePiece byte-fallback piece such as ``<0x6D>``."""
    piece = tokenizer.convert_ids_to_tokens(token_id)
    return isinstance(piece, str) and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


@dataclass(frozen=True)
class TokenMap:
    """The shared part of two vocabularies: ``student_ids[k]`` and ``teacher_ids[k]`` spell the same text
    (special tokens, empty pieces and partial bytes excluded; when several spell alike the first id wins,
    except that a byte-fallback piece yields to a real one).
    ``identity`` when both tokenizers are the same: every id maps to itself."""

    student_ids: torch.Tensor  # K int64
    teacher_ids: torch.Tensor  # K int64
    identity: bool = False

    @classmethod
    def build(cls, student_tok, teacher_tok, *, student_vocab: int, teacher_vocab: int) -> "TokenMap":
        def spellings(tok, vocab: int) -> dict[str, int]:
            # the last piece of "a": a Unigram tokenizer's first one is the bare "▁", which decodes to nothing,
            # so a word-initial "▁m" would spell like the word-internal "m" and take its place in the map
            anchor = tok("a", add_special_tokens=False)["input_ids"][-1:]
            special = set(tok.all_special_ids)
            found: dict[str, int] = {}
            for token_id in range(vocab):
                if token_id in special:
                    continue
                text = piece_text(tok, token_id, anchor)
                if text and "\ufffd" not in text and (text not in found or _byte_piece(tok, found[text])):
                    found[text] = token_id  # a byte-fallback piece ("<0x6D>") yields to the piece the model emits
            return found

        student, teacher = spellings(student_tok, student_vocab), spellings(teacher_tok, teacher_vocab)
        shared = sorted(set(student) & set(teacher), key=lambda text: student[text])
        pairs = [(student[text], teacher[text]) for text in shared]
        for name in ("eos_token_id",):  # end-of-sequence means the same in both, whatever it is called
            s, t = getattr(student_tok, name), getattr(teacher_tok, name)
            if s is not None and t is not None:
                pairs.append((s, t))
        return cls(torch.tensor([s for s, _ in pairs], dtype=torch.long),
                   torch.tensor([t for _, t in pairs], dtype=torch.long))

    @classmethod
    def same(cls, vocab: int) -> "TokenMap":
        ids = torch.arange(vocab)
        return cls(ids, ids, identity=True)
