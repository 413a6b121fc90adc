"""Big models in small memory: LoRA adapters (peft) on a full-precision or quantized (bitsandbytes) base.

* ``--lora-r R`` (R > 0) freezes every weight of the trained model (the SFT model or the distillation
  student) and trains rank-R adapters on the ``--lora-targets`` projections instead. The reward head
  of the X-variants is not part of the model: it stays a separate full-precision parameter group and
  trains alongside the adapters.
* ``--load-in-8bit`` / ``--load-in-4bit`` quantize the command's own model while loading it (the one
  ``--dtype`` applies to); ``--teacher-load-in-8bit`` / ``--teacher-load-in-4bit`` quantize distill's
  teacher (the one ``--teacher-dtype`` applies to). Quantized weights cannot be trained, so a quantized
  trained model needs LoRA (QLoRA, as the paper does for T5-xl); a quantized teacher only runs forward
  (the paper's 4-bit Llama-2-7b teacher).
* A LoRA run's ``model/`` holds the adapter (``adapter_config.json``, ``adapter_model.safetensors``,
  written by peft), the tokenizer and ``xkd_adapter.json`` naming the base model, so any command that
  takes a model name loads the run as base + adapter. ``--merge-lora`` also writes ``merged/``: the
  adapter folded into a full-precision copy of the base, a plain transformers checkpoint.

peft is imported where it is used: it is slow to import and only LoRA runs need it. Saved adapters are
read and written by adapters.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers.pytorch_utils import Conv1D

from xkd_cli.config.checks import quantization_of
from xkd_cli.core.errors import XKDError
from xkd_cli.models.adapters import quiet_peft
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.models.loading import load_model, save_model
from xkd_cli.core.runtime import resolve_device

MERGED_DIR = "merged"

DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "t5": ("q", "v"),
    "mt5": ("q", "v"),
    "umt5": ("q", "v"),
    "llama": ("q_proj", "v_proj"),
}
"""Attention query and value projections, the LoRA paper's choice; other architectures fall back to
peft's own per-architecture table."""


# -- applying adapters ------------------------------------------------------------------------------------


def _adaptable(module: torch.nn.Module) -> bool:
    """Layers peft can put a LoRA adapter on that matter here (bitsandbytes layers subclass nn.Linear)."""
    return isinstance(module, (torch.nn.Linear, Conv1D))


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """The short names ``--lora-targets`` accepts for this model (e.g. q, k, v, o, wi, wo, lm_head)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and _adaptable(module)})


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    model_type = getattr(model.config, "model_type", "")
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    from peft.utils.constants import (  # here: peft is slow to import and only LoRA runs need it
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS)

    if model_type in PEFT_DEFAULTS:
        return tuple(PEFT_DEFAULTS[model_type])
    raise XKDError(f"no default LoRA targets for model type {model_type!r}: pass --lora-targets, one or more of "
                   f"{', '.join(adaptable_module_names(model))}")


def check_targets(model: torch.nn.Module, targets: tuple[str, ...], model_name: str) -> None:
    """Every target must name an adaptable layer (peft matches a name or a dotted suffix of one)."""
    names = [name for name, module in model.named_modules() if name and _adaptable(module)]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unknown:
        raise XKDError(f"--lora-targets: no linear layer named {', '.join(repr(t) for t in unknown)} in "
                       f"{model_name!r}; valid names: {', '.join(adaptable_module_names(model))}")


def apply_lora(loaded: LoadedModel, *, r: int, alpha: float, dropout: float, targets: tuple[str, ...] | None,
               quantization: str | None, seed: int) -> LoadedModel:
    """Freeze ``loaded``'s weights and wrap it with fresh trainable LoRA adapters (a peft model).

    The adapters' random init (kaiming A, zero B) runs under its own seed so it never shifts the
    training run's random stream, and the same config always starts from the same adapters.
    """
    from peft import (  # here: peft is slow to import and only LoRA runs need it
        LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training)

    model = loaded.model
    targets = tuple(t.strip() for t in targets) if targets else default_targets(model)
    check_targets(model, targets, loaded.name)
    if quantization is not None:
        # Freezes the base and casts its remaining half-precision weights (norms, embeddings) to float32
        # for stable training. Activation checkpointing (peft's default here) stays off, as everywhere in xkd.
        with quiet_peft():
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none",
                        task_type=TaskType.SEQ_2_SEQ_LM if loaded.is_encoder_decoder else TaskType.CAUSAL_LM)
    with torch.random.fork_rng(devices=[]), quiet_peft():
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
    # peft records the base's _name_or_path (for builtin or quantized models a temporary directory):
    # point it at what xkd resolved instead, so the adapter says which model it belongs to.
    peft_model.peft_config["default"].base_model_name_or_path = loaded.location
    base = {"base_model": loaded.name, "base_source": loaded.source, "base_location": loaded.location,
            "quantization": quantization}
    return replace(loaded, model=peft_model, adapter_base=base)


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_record(cfg: Any, loaded: LoadedModel) -> dict[str, Any]:
    """What run.json says about LoRA/quantization (nothing for a plain full fine-tune)."""
    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    if not cfg.lora_r:
        return {}
    adapter = loaded.model.peft_config["default"]
    return {"quantization": quantization,
            "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "targets": sorted(adapter.target_modules), **(loaded.adapter_base or {}),
                     "trainable_parameters": trainable_parameters(loaded.model)}}


def load_trained_model(ref: str, cfg: Any, *, task: str, runs_dir: Path) -> LoadedModel:
    """The model a training command trains: loaded (quantized if asked) and wrapped with LoRA if asked."""
    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    # bitsandbytes quantizes on the device it loads to; full-precision models load on the CPU and move later.
    device = str(resolve_device(cfg.device)) if quantization else "cpu"
    loaded = load_model(ref, task=task, runs_dir=runs_dir, dtype=cfg.dtype, device=device, quantization=quantization,
                        trust_remote_code=getattr(cfg, "trust_remote_code", False))
    if cfg.lora_r:
        loaded = apply_lora(loaded, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            targets=cfg.lora_targets, quantization=quantization, seed=cfg.seed)
    return loaded


# -- merging --------------------------------------------------------------------------------------------------


def export_merged(adapter_dir: Path, target: Path, *, dtype: str, task: str | None, runs_dir: Path | None) -> Path:
    """Fold a saved adapter into a full-precision copy of its base and save it as a plain transformers model.

    The base is reloaded unquantized even when it trained in 8/4 bit: a merged model is for deployment
    with no xkd, peft or bitsandbytes, and re-quantizing the merged weights would only lose precision.
    """
    merged = load_model(str(adapter_dir), task=task, runs_dir=runs_dir, dtype=dtype, device="cpu", for_training=True)
    merged.model.requires_grad_(False)
    return save_model(merged, target)
