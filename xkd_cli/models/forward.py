"""Running a model on a batch: logits aligned with the batch's labels, in the layout of :mod:`xkd_cli.data.batches`."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from xkd_cli.data.batches import Batch


def forward(model, batch: Batch, *, hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the model; return logits (B x T_out x V) aligned with ``batch.labels`` and, if asked, the last
    decoder hidden state (B x T_out x H) that produced them (input of the reward head)."""
    if batch.keep is None:
        out = model(**batch.inputs, output_hidden_states=hidden, use_cache=False)
        states = out.decoder_hidden_states[-1] if hidden else None
        return out.logits, states
    out = model(**batch.inputs, output_hidden_states=hidden, use_cache=False, logits_to_keep=batch.keep)
    states = out.hidden_states[-1][:, -batch.keep:] if hidden else None
    return out.logits[:, -batch.keep:], states


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module) -> Iterator[None]:
    """Run the body with ``modules`` in eval mode (no dropout), each put back in the mode it was in."""
    modes = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
