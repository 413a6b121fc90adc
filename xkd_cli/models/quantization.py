"""Loading a model in 8 or 4 bits with bitsandbytes (QLoRA-style teachers and students)."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from transformers import PreTrainedModel

from xkd_cli.core.errors import XKDError
from xkd_cli.models.load_errors import short_error

QUANTIZATIONS = ("8bit", "4bit")


def quantization_config(quantization: str | None, dtype: torch.dtype | str) -> Any:
    """BitsAndBytesConfig for 8/4-bit loading (QLoRA-style teachers/students), or None."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise XKDError(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)} or none")
    try:
        importlib.import_module("bitsandbytes")  # checked here so the error names the fix, not a deep import
        from transformers import BitsAndBytesConfig  # here: only quantized loading needs bitsandbytes
    except Exception as exc:  # noqa: BLE001 - any import failure means bitsandbytes is unusable here
        raise XKDError(
            f"--quantization {quantization} needs bitsandbytes ({short_error(exc)}): "
            "`pip install bitsandbytes`, or drop --quantization"
        ) from exc
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = dtype if isinstance(dtype, torch.dtype) else torch.bfloat16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


_QUANTIZED_PARAMS = ("Params4bit", "Int8Params")


def release_checkpoint_mapping(model: PreTrainedModel) -> None:
    """Give a quantized model's unquantized CPU tensors memory of their own.

    transformers memory-maps safetensors and leaves unquantized tensors (norms, embeddings, T5's float32
    ``wo`` layers) as views of that mapping. One such view keeps the whole file mapped, and every page
    read while quantizing stays resident: a 4-bit model would hold its full-precision checkpoint in RAM.
    Copying the few unquantized tensors drops the mapping (measured in bench/memory.py).
    """
    for param in model.parameters():  # tied weights are one Parameter: copied once, still tied
        if param.device.type == "cpu" and type(param).__name__ not in _QUANTIZED_PARAMS:
            param.data = param.data.clone()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device.type == "cpu":
                module._buffers[name] = buffer.clone()

