"""Batched, KV-cached generation for both architectures, as token ids (training) or text (evaluation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import LogitsProcessorList

from xkd_cli.data.batches import pad_rows


@dataclass(frozen=True)
class Sampling:
    """Decoding settings; ``temperature == 0`` means greedy."""
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def label(self) -> str:
        if self.greedy:
            return "greedy" if self.num_samples == 1 else f"greedy-n{self.num_samples}"
        return f"t{self.temperature:g}-p{self.top_p:g}-n{self.num_samples}"


@torch.no_grad()
def generate_ids(model, prompts: Sequence[Sequence[int]], sampling: Sampling, *, is_encoder_decoder: bool,
                 pad_id: int, eos_id: int, vocab_size: int | None = None,
                 logits_processor=None, stop_ids: Sequence[int] = ()) -> list[list[list[int]]]:
    """For each prompt, ``num_samples`` continuations as token ids ending with eos when the model stopped
    (no eos when it ran out of ``max_new_tokens``). One ``generate`` call, KV cache on. Ids at or past
    ``vocab_size`` (T5's embedding padding) are never produced; ``logits_processor`` reshapes the
    next-token scores (MiniLLM's teacher mixing); ``stop_ids`` end a continuation like eos (a chat
    template's end-of-turn token), and the continuation keeps the one it stopped at."""
    device = next(model.parameters()).device
    mask = pad_rows([[1] * len(p) for p in prompts], 0, left=not is_encoder_decoder).to(device)
    input_ids = pad_rows(prompts, pad_id, left=not is_encoder_decoder).to(device)
    kwargs = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.num_samples,
                  use_cache=True, pad_token_id=pad_id,
                  eos_token_id=list(dict.fromkeys([eos_id, *stop_ids])) if stop_ids else eos_id)
    if sampling.greedy:
        kwargs.update(do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None)
    else:
        # top_k=0 switches off transformers' default top-k of 50: the paper samples with top-p only.
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    rows_in_model = model.get_output_embeddings().weight.shape[0]
    if vocab_size is not None and vocab_size < rows_in_model:
        kwargs["suppress_tokens"] = list(range(vocab_size, rows_in_model))
    sharded = _is_fsdp(model)
    if sharded:  # each forward gathers weights from every process: all must take the same steps
        kwargs["synced_gpus"] = True
    if logits_processor is not None:
        kwargs["logits_processor"] = LogitsProcessorList([logits_processor])
    was_training = model.training
    model.eval()
    if sharded:  # generate calls the encoder on its own, past the hook that gathers the root's (embedding) weights
        model.unshard()
    try:
        out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
    finally:
        model.train(was_training)
        if sharded:
            model.reshard()
    new = out[:, 1:] if is_encoder_decoder else out[:, input_ids.shape[1]:]  # drop decoder start / the prompt
    rows = []
    stops = {eos_id, *stop_ids}
    for row in new.tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        if end is not None:
            row = row[: end + 1]
        rows.append(row)
    k = sampling.num_samples
    return [rows[i * k:(i + 1) * k] for i in range(len(prompts))]


def _is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule  # here: a second to import; commands that never generate skip it

    return isinstance(model, FSDPModule)


def generate_batched(model, prompts: Sequence[Sequence[int]], sampling: Sampling, *, is_encoder_decoder: bool,
                     pad_id: int, eos_id: int, batch_size: int, seed: int | None = None,
                     on_batch: Callable[[list[int], list[list[list[int]]]], None] | None = None,
                     stop_ids: Sequence[int] = ()) -> list[list[list[int]]]:
    """``generate_ids`` over many prompts, longest first so batches pad little; results in input order.
    ``on_batch(indices, outputs)`` runs after each batch (to append results to disk as they come)."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[list[int]] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if seed is not None:
            torch.manual_seed(seed + start)
        outputs = generate_ids(model, [prompts[i] for i in chunk], sampling, is_encoder_decoder=is_encoder_decoder,
                               pad_id=pad_id, eos_id=eos_id, stop_ids=stop_ids)
        for i, output in zip(chunk, outputs):
            results[i] = output
        if on_batch is not None:
            on_batch(chunk, outputs)
    return results  # type: ignore[return-value]


def decode(tokenizer, rows: Sequence[Sequence[int]]) -> list[str]:
    return [text.strip() for text in tokenizer.batch_decode([list(r) for r in rows], skip_special_tokens=True)]
