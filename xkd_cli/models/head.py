"""The output head, fused into the loss: a model's logits as its last hidden states and its output projection
(:class:`HeadLogits`), so that no ``B x T x V`` tensor is ever made (``--fused-head on``; docs/method.md,
"Logits that are never made").

``logits = softcap(hidden @ weight.T + bias)`` where ``hidden`` is exactly what the model feeds its output
embedding (T5's ``d_model**-0.5`` rescale of tied embeddings is applied by the model before it, so it is part of
``hidden``), ``weight`` / ``bias`` are that ``nn.Linear``'s, and ``softcap`` is Gemma-2's final logit
soft-capping ``cap·tanh(z / cap)`` (None elsewhere).  The loss engine (:mod:`xkd_cli.objectives.chunked`)
computes the logits of one chunk of counted positions at a time from it, in the forward and again in the
backward, and writes the gradients of ``hidden``, ``weight`` and ``bias`` chunk by chunk.

Only heads known to be exactly this are fused (:func:`output_head`): the architectures of
:data:`FUSED_MODEL_TYPES` with a plain floating-point ``nn.Linear`` output embedding (a LoRA adapter on the head
or a quantised head is not one).  Any other model keeps its logits, with one line saying so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from xkd_cli.core.errors import XKDError
from xkd_cli.core.ui import console

FUSED_HEAD_MODES = ("on", "off")

FUSED_MODEL_TYPES: dict[str, str | None] = {
    # model_type -> the config attribute holding its final logit soft-cap (None: the head is a bare linear map)
    "t5": None, "mt5": None, "umt5": None, "gpt2": None, "llama": None, "mistral": None, "qwen2": None,
    "qwen3": None, "gemma": None, "gemma2": "final_logit_softcapping",
}
"""Architectures whose logits are exactly ``softcap(head(h))`` of the output embedding's input ``h``: checked
against each one's transformers code (T5 rescales ``h`` before the head; Gemma-2 soft-caps after it)."""


class HeadLogits(NamedTuple):
    """``B x T x V`` logits that are never made: ``softcap(hidden @ weight.T + bias)`` (module docstring).

    It stands wherever the losses take logits (``shape``, ``requires_grad``, ``detach()`` as a tensor's);
    :meth:`rows` makes the logits of some positions only."""

    hidden: Tensor  # B x T x H, the output embedding's input
    weight: Tensor  # V x H
    bias: Tensor | None = None  # V
    softcap: float | None = None
    nonfinite_error: str | None = None
    """If set, computing rows with a NaN or +inf logit raises :class:`~xkd_cli.core.errors.XKDError` with this
    message (the teacher's check, made chunk by chunk since its logits are never whole)."""

    @property
    def shape(self) -> torch.Size:
        return torch.Size([*self.hidden.shape[:-1], self.weight.shape[0]])

    @property
    def requires_grad(self) -> bool:
        return any(t is not None and t.requires_grad for t in (self.hidden, self.weight, self.bias))

    def detach(self) -> "HeadLogits":
        return self._replace(hidden=self.hidden.detach(), weight=self.weight.detach(),
                             bias=None if self.bias is None else self.bias.detach())

    def narrow_vocab(self, vocab: int) -> "HeadLogits":
        """The logits' first ``vocab`` columns (the weight's first rows: a view, no copy)."""
        if vocab == self.weight.shape[0]:
            return self
        return self._replace(weight=self.weight[:vocab], bias=None if self.bias is None else self.bias[:vocab])

    def rows(self, hidden_rows: Tensor) -> Tensor:
        """The logits (``N x V``, the model's dtype) of ``N x H`` rows of ``hidden``: the model's own operations
        in its own order and dtype (:func:`head_logits`)."""
        logits = head_logits(hidden_rows, self.weight, self.bias, self.softcap)
        self.check(logits)
        return logits

    def check(self, logits: Tensor) -> None:
        """Raise :attr:`nonfinite_error` if some row of ``logits`` holds a NaN or +inf (where it is set)."""
        if self.nonfinite_error is not None:
            peak = logits.detach().amax(-1) if logits.shape[-1] else logits.new_zeros(0)
            if torch.isnan(peak).any() or torch.isposinf(peak).any():
                raise XKDError(self.nonfinite_error)

    def at(self, flat: Tensor) -> Tensor:
        """The logits at flat positions ``b*T + t`` (``N x V``), without gradient."""
        with torch.no_grad():
            return self.rows(self.hidden.reshape(-1, self.hidden.shape[-1]).index_select(0, flat))

    def to(self, device: torch.device) -> "HeadLogits":
        moved = self._replace(hidden=self.hidden.to(device), weight=self.weight.to(device))
        return moved._replace(bias=None if self.bias is None else self.bias.to(device))


def head_logits(hidden: Tensor, weight: Tensor, bias: Tensor | None, softcap: float | None) -> Tensor:
    """``softcap(hidden @ weight.T + bias)`` as the models compute it (Gemma-2: divide, tanh, multiply)."""
    logits = F.linear(hidden, weight, bias)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def softcap_backward(logits_grad: Tensor, capped: Tensor, softcap: float | None) -> Tensor:
    """The gradient before the soft-cap from the one after it: d(c·tanh(z/c))/dz = 1 − tanh² = 1 − (out/c)²."""
    if softcap is None:
        return logits_grad
    return logits_grad * (1.0 - (capped / softcap) ** 2)


@dataclass(frozen=True)
class OutputHead:
    """A model's recognised output head: its ``nn.Linear`` module (read at each forward, so device moves and
    optimizer updates are seen) and its soft-cap."""

    module: torch.nn.Linear
    softcap: float | None = None

    def logits(self, hidden: Tensor, nonfinite_error: str | None = None) -> HeadLogits:
        return HeadLogits(hidden, self.module.weight, self.module.bias, self.softcap, nonfinite_error)


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def recognise_head(model: torch.nn.Module) -> tuple[OutputHead | None, str]:
    """The model's :class:`OutputHead`, or None with the reason it is not fused."""
    hf = _hf_model(model)
    config = getattr(hf, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FUSED_MODEL_TYPES:
        return None, f"its architecture {model_type!r} is not one whose head xkd knows"
    module = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    if type(module) is not torch.nn.Linear:
        return None, f"its output embedding is a {type(module).__name__}, not a plain linear layer (LoRA on it?)"
    weight = module.weight
    if type(weight) is not torch.nn.Parameter and type(weight) is not Tensor or not weight.is_floating_point():
        return None, f"its output embedding is stored as {type(weight).__name__} {weight.dtype} (quantised?)"
    cap_attr = FUSED_MODEL_TYPES[model_type]
    softcap = getattr(config, cap_attr, None) if cap_attr else None
    return OutputHead(module, float(softcap) if softcap is not None else None), ""


def output_head(model: torch.nn.Module, mode: str = "on", *, name: str = "the model") -> OutputHead | None:
    """The head to fuse into the loss for ``--fused-head mode``: None when off or not recognised (then one line
    on stderr says so and the logits are made as before)."""
    if mode not in FUSED_HEAD_MODES:
        raise ValueError(f"fused head mode must be one of {FUSED_HEAD_MODES}, got {mode!r}")
    if mode == "off":
        return None
    head, why = recognise_head(model)
    if head is None:
        console.print(f"note: --fused-head: {name} keeps its full logits: {why}", markup=False, soft_wrap=True)
    return head


@contextlib.contextmanager
def head_skipped(model: torch.nn.Module, head: OutputHead) -> Iterator[None]:
    """Within it the model's forward returns the output embedding's input in place of its logits: the head
    module is the identity and the soft-cap is off (restored on exit, exception or not)."""
    hf = _hf_model(model)
    cap_attr = FUSED_MODEL_TYPES.get(hf.config.model_type)
    saved_cap = getattr(hf.config, cap_attr) if cap_attr else None
    own = vars(head.module).get("forward")  # a forward set on the instance (accelerate's hooks wrap it so)
    head.module.forward = _identity
    if cap_attr:
        setattr(hf.config, cap_attr, None)
    try:
        yield
    finally:
        if own is None:
            del head.module.forward  # back to the class's forward
        else:
            head.module.forward = own
        if cap_attr:
            setattr(hf.config, cap_attr, saved_cap)


def _identity(x: Tensor) -> Tensor:
    return x
