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

peft is imported lazily: configs import this module and must stay cheap to import.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch

from xkd_cli.config.checks import quantization_of
from xkd_cli.core.errors import XKDError

if TYPE_CHECKING:  # pragma: no cover
    from xkd_cli.models.loading import LoadedModel

ADAPTER_CONFIG = "adapter_config.json"
BASE_RECORD = "xkd_adapter.json"
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
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D))


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """The short names ``--lora-targets`` accepts for this model (e.g. q, k, v, o, wi, wo, lm_head)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and _adaptable(module)})


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    model_type = getattr(model.config, "model_type", "")
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

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


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft reads ``is_gradient_checkpointing``, which transformers 5 deprecated: a warning users can't act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def apply_lora(loaded: "LoadedModel", *, r: int, alpha: float, dropout: float, targets: tuple[str, ...] | None,
               quantization: str | None, seed: int) -> "LoadedModel":
    """Freeze ``loaded``'s weights and wrap it with fresh trainable LoRA adapters (a peft model).

    The adapters' random init (kaiming A, zero B) runs under its own seed so it never shifts the
    training run's random stream, and the same config always starts from the same adapters.
    """
    from dataclasses import replace

    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    model = loaded.model
    targets = tuple(t.strip() for t in targets) if targets else default_targets(model)
    check_targets(model, targets, loaded.name)
    if quantization is not None:
        # Freezes the base and casts its remaining half-precision weights (norms, embeddings) to float32
        # for stable training. Activation checkpointing (peft's default here) stays off, as everywhere in xkd.
        with _quiet_peft():
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none",
                        task_type=TaskType.SEQ_2_SEQ_LM if loaded.is_encoder_decoder else TaskType.CAUSAL_LM)
    with torch.random.fork_rng(devices=[]), _quiet_peft():
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


def lora_record(cfg: Any, loaded: "LoadedModel") -> dict[str, Any]:
    """What run.json says about LoRA/quantization (nothing for a plain full fine-tune)."""
    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    if not cfg.lora_r:
        return {}
    adapter = loaded.model.peft_config["default"]
    return {"quantization": quantization,
            "lora": {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout,
                     "targets": sorted(adapter.target_modules), **(loaded.adapter_base or {}),
                     "trainable_parameters": trainable_parameters(loaded.model)}}


def load_trained_model(ref: str, cfg: Any, *, task: str, runs_dir: Path) -> "LoadedModel":
    """The model a training command trains: loaded (quantized if asked) and wrapped with LoRA if asked."""
    from xkd_cli.models.loading import load_model
    from xkd_cli.core.runtime import resolve_device

    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    # bitsandbytes quantizes on the device it loads to; full-precision models load on the CPU and move later.
    device = str(resolve_device(cfg.device)) if quantization else "cpu"
    loaded = load_model(ref, task=task, runs_dir=runs_dir, dtype=cfg.dtype, device=device, quantization=quantization,
                        trust_remote_code=getattr(cfg, "trust_remote_code", False))
    if cfg.lora_r:
        loaded = apply_lora(loaded, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                            targets=cfg.lora_targets, quantization=quantization, seed=cfg.seed)
    return loaded


# -- saved adapters ---------------------------------------------------------------------------------------


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def write_base_record(directory: Path, base: dict[str, Any]) -> None:
    (directory / BASE_RECORD).write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")


def _base_reference(location: Path, task: str | None, runs_dir: Path | None) -> str:
    """The model an adapter directory was trained on: xkd's record, else peft's ``base_model_name_or_path``."""
    record_path = location / BASE_RECORD
    if record_path.is_file():
        try:
            base = json.loads(record_path.read_text(encoding="utf-8"))
            ref, source = base["base_location"], base["base_source"]
        except (OSError, ValueError, KeyError, TypeError):
            raise XKDError(f"{record_path} is corrupt: re-run the training command that wrote it") from None
        if source in ("run", "path") and not Path(ref).exists() and task is not None and runs_dir is not None:
            ref = base.get("base_model") or ref  # the runs directory moved: find the base run by name
        return ref
    try:
        ref = json.loads((location / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise XKDError(f"{location / ADAPTER_CONFIG} is not valid JSON ({exc}): re-save the adapter") from None
    if not ref:
        raise XKDError(f"the adapter in {location} does not say which base model it belongs to "
                       f"(no base_model_name_or_path in {ADAPTER_CONFIG}): re-save it with peft")
    return ref


def load_adapter_model(ref: str, source: str, location: str, *, task: str | None, runs_dir: Path | None,
                       dtype: str, device: str, quantization: str | None, for_training: bool,
                       trust_remote_code: bool = False) -> "LoadedModel":
    """A saved adapter on top of its base model (itself loaded like any model reference, quantized if asked,
    custom code allowed only with ``trust_remote_code``).

    For inference the result is the peft model (base + unmerged adapter: exactly the model that was
    trained). For training it is merged into the base and unwrapped, so the weights train in full or take
    a new adapter; with a quantized base the merge re-quantizes (the usual QLoRA caveat).
    """
    from peft import PeftModel

    from xkd_cli.models.loading import LoadedModel, load_model, load_tokenizer

    path = Path(location)
    base_ref = _base_reference(path, task, runs_dir)
    if Path(base_ref).resolve() == path.resolve():
        raise XKDError(f"the adapter in {location} names itself as its base model: re-save it")
    base = load_model(base_ref, task=task, runs_dir=runs_dir, dtype=dtype, device=device, quantization=quantization,
                      for_training=True, trust_remote_code=trust_remote_code)
    try:
        with _quiet_peft():
            model = PeftModel.from_pretrained(base.model, str(path), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise XKDError(f"could not load the LoRA adapter in {location} onto {base_ref!r} "
                       f"({type(exc).__name__}: {text[0] if text else ''}): re-train it or pick another model") from exc
    if for_training:
        model = model.merge_and_unload()
        if quantization is None:
            model.requires_grad_(True)
        adapter_base = None
    else:
        adapter_base = {"base_model": base.name, "base_source": base.source, "base_location": base.location,
                        "quantization": quantization}
    tokenizer = (load_tokenizer(location, trust_remote_code=trust_remote_code) if any(path.glob("*token*"))
                 else base.tokenizer)
    return LoadedModel(model, tokenizer, ref, source, location, base.is_encoder_decoder, adapter_base=adapter_base)


def export_merged(adapter_dir: Path, target: Path, *, dtype: str, task: str | None, runs_dir: Path | None) -> Path:
    """Fold a saved adapter into a full-precision copy of its base and save it as a plain transformers model.

    The base is reloaded unquantized even when it trained in 8/4 bit: a merged model is for deployment
    with no xkd, peft or bitsandbytes, and re-quantizing the merged weights would only lose precision.
    """
    from xkd_cli.models.loading import load_model, save_model

    merged = load_model(str(adapter_dir), task=task, runs_dir=runs_dir, dtype=dtype, device="cpu", for_training=True)
    merged.model.requires_grad_(False)
    return save_model(merged, target)
