"""Saved LoRA adapters: a directory peft wrote (``adapter_config.json``, ``adapter_model.safetensors``), the
tokenizer and ``xkd_adapter.json`` naming the base model, so any command that takes a model name loads it
as base + adapter (:func:`xkd_cli.models.loading.load_model` loads the base, then :func:`attach_adapter`).

Training with adapters (``--lora-r``) is in lora.py.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path
from typing import Any, Iterator

from xkd_cli.core.errors import XKDError
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.models.references import ADAPTER_CONFIG
from xkd_cli.models.tokenizers import load_tokenizer

BASE_RECORD = "xkd_adapter.json"


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft reads ``is_gradient_checkpointing``, which transformers 5 deprecated: a warning users can't act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def write_base_record(directory: Path, base: dict[str, Any]) -> None:
    (directory / BASE_RECORD).write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")


def base_reference(location: Path, task: str | None, runs_dir: Path | None) -> str:
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


def attach_adapter(base: LoadedModel, ref: str, source: str, location: str, *, quantization: str | None,
                   for_training: bool, trust_remote_code: bool = False) -> LoadedModel:
    """The adapter saved in ``location`` on ``base`` (its base model, loaded for training).

    For inference the result is the peft model (base + unmerged adapter: exactly the model that was
    trained). For training it is merged into the base and unwrapped, so the weights train in full or take
    a new adapter; with a quantized base the merge re-quantizes (the usual QLoRA caveat).
    """
    from peft import PeftModel  # here: peft is slow to import and only LoRA models need it

    path = Path(location)
    try:
        with quiet_peft():
            model = PeftModel.from_pretrained(base.model, str(path), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        text = str(exc).strip().splitlines()
        raise XKDError(f"could not load the LoRA adapter in {location} onto {base.name!r} "
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
