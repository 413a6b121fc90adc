"""Turning (prompt, target) token ids into model batches.

One layout serves both architectures so every loss sees ``logits[:, t]`` predicting ``labels[:, t]``
(B x T_out, padding -100; :func:`xkd_cli.models.forward.forward` returns the logits so):

- encoder-decoder: the prompt goes to the encoder (right-padded); the decoder reads
  ``[start] + target[:-1]``.
- decoder-only: prompts are left-padded so every target starts in the same column, targets are
  right-padded, and only the last ``T_out`` positions get logits (``logits_to_keep``): the prompt
  positions never cost a ``V``-wide row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

IGNORE = -100
DECODER_SEPARATOR = "\n"  # between prompt and response for decoder-only models


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # keyword arguments of the model's forward
    labels: torch.Tensor             # B x T_out, IGNORE where there is no target token
    ids: list[str] = field(default_factory=list)
    keep: int | None = None          # decoder-only: number of trailing positions that carry targets
    # Targets from fixed data (ground truth), not from the current student: the teacher's view of them
    # never changes, so the teacher cache may serve it (xkd_cli.objectives.teacher_cache). Sources set it.
    off_policy: bool = False
    # MiniLLM: the same prompts' ground-truth targets (its language-modelling term), and what the objective
    # computed on the first pass over these rollouts, which the later policy updates on them reuse (the sampling
    # policy's log-probabilities, the advantages). Shared, not copied, by ``to``.
    reference: "Batch | None" = None
    memo: dict | None = None

    @property
    def tokens(self) -> int:
        return int((self.labels != IGNORE).sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.labels.to(device), self.ids, self.keep,
                     self.off_policy, None if self.reference is None else self.reference.to(device), self.memo)


def special_ids(tokenizer, model_config) -> tuple[int, int, int]:
    """(pad, eos, decoder_start) for a tokenizer/model pair; decoder-only models without a pad token pad with eos."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    start = getattr(model_config, "decoder_start_token_id", None)
    return pad, eos, pad if start is None else start


def encode_prompts(tokenizer, prompts: Sequence[str], *, is_encoder_decoder: bool, max_len: int,
                   keep_end: bool = False) -> list[list[int]]:
    """Token ids of model inputs: T5 inputs end with eos; decoder-only prompts end with the separator.
    ``keep_end`` truncates from the left (few-shot prompts whose question sits at the end)."""
    eos = tokenizer.eos_token_id
    texts = prompts if is_encoder_decoder else [p + DECODER_SEPARATOR for p in prompts]
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = []
    for ids in encoded:
        if is_encoder_decoder:
            ids = ids + [eos]
        if len(ids) > max_len:
            if keep_end:
                ids = ids[-max_len:]
            else:
                ids = ids[: max_len - 1] + [eos] if is_encoder_decoder else ids[:max_len]
        out.append(ids)
    return out


def encode_targets(tokenizer, targets: Sequence[str], *, max_len: int, end: int | None = None) -> list[list[int]]:
    """Target ids ending with eos, or ``end`` (a chat template's end-of-turn token) when given; truncated
    targets keep that last token so the model learns to stop."""
    eos = tokenizer.eos_token_id if end is None else end
    encoded = tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    return [(ids[: max_len - 1] + [eos]) if len(ids) >= max_len else ids + [eos] for ids in encoded]


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool = False, width: int | None = None) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0) if width is None else width
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def make_batch(prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *, is_encoder_decoder: bool,
               pad_id: int, decoder_start_id: int, ids: Sequence[str] = ()) -> Batch:
    """Collate token ids into one batch in the layout described in the module docstring."""
    labels = pad_rows(targets, IGNORE)  # B x T_out
    width = labels.shape[1]
    if is_encoder_decoder:
        input_ids = pad_rows(prompts, pad_id)
        decoder_rows = [[decoder_start_id] + list(t[:-1]) for t in targets]
        return Batch({
            "input_ids": input_ids,
            "attention_mask": (pad_rows([[1] * len(p) for p in prompts], 0)),
            "decoder_input_ids": pad_rows(decoder_rows, pad_id, width=width),
        }, labels, list(ids))
    # Decoder-only: [left pad | prompt | target[:-1] | right pad]; the last position that needs logits is the
    # one predicting the final target token, so the final target token itself is never an input.
    prompt_part = pad_rows(prompts, pad_id, left=True)
    prompt_mask = pad_rows([[1] * len(p) for p in prompts], 0, left=True)
    target_in = pad_rows([list(t[:-1]) for t in targets], pad_id, width=width - 1)  # every target holds at least eos
    target_mask = pad_rows([[1] * (len(t) - 1) for t in targets], 0, width=width - 1)
    input_ids = torch.cat([prompt_part, target_in], dim=1)
    attention_mask = torch.cat([prompt_mask, target_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch({"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids},
                 labels, list(ids), keep=width)


def make_pair_batch(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]],
                    rejected: Sequence[Sequence[int]], *, is_encoder_decoder: bool, pad_id: int, decoder_start_id: int,
                    ids: Sequence[str] = ()) -> Batch:
    """Both sides of B preference pairs in one batch of 2B rows, so one forward serves both (TRL's
    ``concatenated_forward``): rows ``:B`` are prompt + chosen, rows ``B:`` the same prompts + rejected."""
    return make_batch(list(prompts) * 2, list(chosen) + list(rejected), is_encoder_decoder=is_encoder_decoder,
                      pad_id=pad_id, decoder_start_id=decoder_start_id, ids=list(ids) * 2)
