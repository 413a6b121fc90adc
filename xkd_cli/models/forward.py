"""Running a model on a batch: logits aligned with the batch's labels, in the layout of :mod:`xkd_cli.data.batches`."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from xkd_cli.data.batches import Batch
from xkd_cli.models.head import HeadLogits, OutputHead, head_skipped


def forward(model, batch: Batch, *, hidden: bool = False,
            head: OutputHead | None = None) -> tuple[torch.Tensor | HeadLogits, torch.Tensor | None]:
    """Run the model; return logits (B x T_out x V) aligned with ``batch.labels`` and, if asked, the last
    decoder hidden state (B x T_out x H) that produced them (input of the reward head).

    With ``head`` (:func:`~xkd_cli.models.head.output_head`) the logits are never made: the first value is a
    :class:`~xkd_cli.models.head.HeadLogits` (the head's input and weights), which every loss takes in their place."""
    skipping = head_skipped(model, head) if head is not None else contextlib.nullcontext()
    with skipping:
        if batch.keep is None:
            out = model(**batch.inputs, output_hidden_states=hidden, use_cache=False)
            states = out.decoder_hidden_states[-1] if hidden else None
            logits = out.logits
        else:
            out = model(**batch.inputs, output_hidden_states=hidden, use_cache=False, logits_to_keep=batch.keep)
            states = out.hidden_states[-1][:, -batch.keep:] if hidden else None
            logits = out.logits[:, -batch.keep:]
    return (logits if head is None else head.logits(logits)), states


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
