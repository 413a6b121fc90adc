"""What a model reference names, decided without loading torch or transformers: a builtin tiny model, a run of
the task, a local model directory, or a hub id (with the aliases of the paper's T5 models). Every command
resolves its ``--model``/``--teacher``/``--student`` here first, so a typo, a missing directory or (offline) a
hub id not in the local cache is refused in a second, before the deep-learning stack loads (loading.py)."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hub import hub_offline
from xkd_cli.core.workspace import RUN_RECORD, is_run, read_record, run_model_dir, run_path_or_none
from xkd_cli.models.specs import BUILTIN_MODELS

ADAPTER_CONFIG = "adapter_config.json"  # what peft writes in a LoRA adapter's directory


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


HUB_ALIASES: dict[str, str] = {
    "t5-small": "google-t5/t5-small",
    "t5-base": "google-t5/t5-base",
    "t5-large": "google-t5/t5-large",
    "t5-xl": "google/t5-v1_1-xl",
}
"""Short names for the paper's T5 models. The hub moved the original checkpoints under ``google-t5/``;
there is no v1.0 "xl" (the 3B model is ``t5-3b``), so ``t5-xl`` means the v1.1 XL checkpoint."""


# ---------------------------------------------------------------------------------------------
# Resolving a reference
# ---------------------------------------------------------------------------------------------


def _looks_like_path(ref: str) -> bool:
    """True for strings that can only be meant as a filesystem path.

    A hub id ``org/name`` also contains "/", so a single inner slash is not enough: a path is
    anything absolute, starting with "." or "~", with a trailing or repeated separator, or with
    a separator hub ids never use (backslash on Windows).
    """
    if ref.startswith(("/", ".", "~")) or ref.endswith("/"):
        return True
    if any(sep in ref for sep in (os.sep, os.altsep) if sep and sep != "/"):
        return True
    return ref.count("/") > 1


def _valid_names_text() -> str:
    aliases = ", ".join(f"{a} (= {h})" for a, h in HUB_ALIASES.items())
    return (
        f"builtin models: {', '.join(BUILTIN_MODELS.names())}; aliases: {aliases}; "
        "a run name of the task, a local model directory (with config.json, or a LoRA adapter) or a hub id "
        "'org/name' also works"
    )


def _is_model_dir(path: Path) -> bool:
    """A full checkpoint (config.json) or a LoRA adapter (adapter_config.json, loaded onto its base)."""
    return (path / "config.json").is_file() or is_adapter_dir(path)


def _not_a_model_run(ref: str, run_dir: Path) -> XKDError:
    """A run that holds no model (gen-teacher samples, an eval, a judge...) named where a model is expected."""
    kind = read_record(run_dir / RUN_RECORD).get("kind")
    return XKDError(f"{ref!r} is an xkd {kind} run ({run_dir}), which holds no model: pass an sft or distill run, "
                    "a model directory or a built-in model name")


def resolve_model(ref: str, *, task: str | None = None, runs_dir: Path | None = None) -> tuple[str, str]:
    """Turn what the user typed into ``(source, location)`` without loading anything.

    Order: builtin name, run of ``task`` (``<runs_dir>/<task>/<ref>/model``), existing local
    directory, alias, hub id. Builtins come first so a stray local folder called ``tiny-t5-small``
    cannot change what a recipe means; run names before paths so a run is found from any working
    directory. A path that does not exist is an error rather than a hub lookup, so a typo gives a
    clear message instead of a network error. Run lookup needs both ``task`` and ``runs_dir``.
    """
    ref = ref.strip()
    if not ref:
        raise XKDError(f"empty model name: pass one of the {_valid_names_text()}")
    if ref in BUILTIN_MODELS:
        return "builtin", ref
    may_name_run = task is not None and runs_dir is not None and not _looks_like_path(ref) and "/" not in ref
    run_dir = run_path_or_none(Path(runs_dir), task, ref) if may_name_run else None
    if run_dir is not None:
        if _is_model_dir(run_model_dir(run_dir)):
            return "run", str(run_model_dir(run_dir).resolve())
        if is_run(run_dir):
            raise _not_a_model_run(ref, run_dir)
    local = Path(ref).expanduser()
    if local.exists():
        if local.is_dir() and is_run(local):  # an xkd run directory: its model/, if it has one
            if _is_model_dir(run_model_dir(local)):
                return "path", str(run_model_dir(local).resolve())
            raise _not_a_model_run(ref, local)
        if local.is_dir() and _is_model_dir(local):
            return "path", str(local.resolve())
        raise XKDError(
            f"{ref!r} is not a model directory (no config.json or adapter_config.json in it): pass a directory "
            "written by `xkd train`/`save_pretrained`, or a model name"
        )
    if _looks_like_path(ref):
        raise XKDError(f"no such model directory: {ref!r}; check the path, or pass a model name")
    if ref in HUB_ALIASES:
        return "hub", HUB_ALIASES[ref]
    if "/" in ref:
        return "hub", ref
    candidates = BUILTIN_MODELS.names() + list(HUB_ALIASES)
    close = difflib.get_close_matches(ref, candidates, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    runs_hint = f" (no run {ref!r} for task {task!r})" if task is not None and runs_dir is not None else ""
    raise XKDError(f"unknown model {ref!r}{runs_hint}.{hint} Valid: {_valid_names_text()}.")


def _in_hub_cache(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # only a hub id needs it (0.2 s)

    return any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in ("config.json", ADAPTER_CONFIG))


def check_hub_model(ref: str, hub_id: str) -> None:
    """A hub model can be had: the hub is reachable, or the model is in the local Hugging Face cache. Decided
    without a download (a quick connection at most), so offline a hub id that was never downloaded — a typo
    too — is refused before any library loads; online, the hub itself says whether the id exists."""
    offline = hub_offline()
    if offline and not _in_hub_cache(hub_id):
        alias = f" (= {hub_id})" if hub_id != ref else ""
        raise XKDError(f"model {ref!r}{alias} is not in the local Hugging Face cache and the hub cannot be used: "
                       f"{offline}. Connect and retry, pass a local model directory, or a built-in model "
                       f"({', '.join(BUILTIN_MODELS.names())})")
