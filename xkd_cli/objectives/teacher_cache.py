"""The teacher cache: the teacher's view of fixed (off-policy) sequences, computed once, kept on disk
and reused across epochs and runs (``xkd distill --teacher-cache full|topk``).

What may be cached
------------------
Only batches whose targets come from fixed data (ground truth for skd / sxkd, the α-coin's
ground-truth batches of gkd / gxkd): their sources mark them ``Batch.off_policy``.  Fresh student
samples (gkd / gxkd on-policy batches, MiniLLM) are never looked up nor stored.

Two modes
---------
``full``  every position's teacher logits over the whole vocabulary (sliced to the tokenizer), in
          the dtype the teacher produced them (float32 for a float32 teacher): storing exactly what
          the teacher computed makes the loss *exact*.  float16 would not be: rounding float32
          logits to 11 mantissa bits moves every log-probability by up to |logit|·2⁻¹¹.  Large on
          disk: T·V·4 bytes per sequence (64 positions × 32k tokens = 8 MiB).
``topk``  per position the k most likely tokens' log-probabilities (float16), their ids (int32) and
          the log of the remaining tail mass (float32): (6k + 4) bytes per position.  The loss is
          then the divergence between teacher and student over the k + 1 buckets {i_1} … {i_k},
          tail (``objectives.divergences.topk_divergence_sum``; that module's docstring defines it).  It
          equals the full divergence when k = V (up to the float16 rounding of the stored values)
          and is a lower bound of it otherwise.

Exactness of ``full``: the stored logits of a sequence are those of the batch in which it was first
met.  A run without the cache recomputes them in each epoch's batch, where other rows and other
padding widths can change the last bits of the teacher's float arithmetic; with a batch of one (no
padding) the two runs agree bit for bit (tests/test_teacher_cache.py), otherwise they differ by
that float noise only.

Keys
----
A cache directory ``<runs>/<task>/.teacher-cache/<key>/`` belongs to one key: the teacher's identity
(a SHA-256 of its weights and buffers with their dtypes, its class and config, the device type it runs
on and the torch / transformers versions, since all of them change its float results), the
tokenizer (vocabulary and special tokens), the task, the maximum lengths, the vocabulary width and
the mode (and k).  ``key.json`` there spells the key out.  Inside, one file per sequence named by a
SHA-256 of the exact token ids the teacher reads for it (encoder input, decoder input, labels), so a
sequence truncated differently or tokenized differently can never meet another's entry.

Storage and safety
------------------
Entries are safetensors files (no pickle) holding the sequence's token ids (checked against the
batch on every read, so even a hash collision cannot serve a wrong entry) and a CRC-32 of every
tensor in the metadata.  They are written to a temporary file and renamed into place, so concurrent
runs never see a half-written entry (two runs writing the same entry write equivalent data; the last
rename wins).  An entry that cannot be read or fails a check is reported once on stderr, counted
(``teacher_cache_corrupt``) and recomputed, and its file is replaced.  Nothing is ever evicted: delete
``<runs>/<task>/.teacher-cache`` to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from xkd_cli.data.batches import IGNORE, Batch
from xkd_cli.core.errors import XKDError
from xkd_cli.core.ui import console
from xkd_cli.models.head import HeadLogits
from xkd_cli.objectives.divergences import teacher_topk

MODES = ("off", "full", "topk")
FORMAT = "xkd-teacher-cache/1"
CACHE_DIRNAME = ".teacher-cache"
KEY_FILE = "key.json"
# Inputs that only restate what the token ids and their mask already say (see row_tokens).
_DERIVED_INPUTS = ("attention_mask", "position_ids")


class TopKTeacher(NamedTuple):
    """The teacher of one batch in ``topk`` form (zeros at positions that do not count)."""

    logprobs: Tensor  # B x T x k, float16 as stored
    ids: Tensor       # B x T x k, int32
    tail: Tensor      # B x T, float32 log of the mass outside the top k (-inf when k = V)


# -- the key ----------------------------------------------------------------------------------------------


def _tensor_bytes(tensor: Tensor) -> np.ndarray:
    """The raw bytes of a tensor (any dtype, bfloat16 included, which numpy cannot hold)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.zeros(0, np.uint8)


def model_fingerprint(model: torch.nn.Module) -> dict[str, Any]:
    """Everything about a model that changes its logits: a SHA-256 over every parameter and buffer
    (name, dtype, shape, bytes), its class and config, the device type and the library versions."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(_tensor_bytes(tensor))
    config = model.config.to_dict() if hasattr(model, "config") else {}
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash"):
        config.pop(volatile, None)
    config_text = json.dumps(config, sort_keys=True, default=str)
    device = next(model.parameters()).device
    return {"weights_sha256": digest.hexdigest(), "class": type(model).__name__,
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(), "device_type": device.type,
            "torch": torch.__version__, "transformers": transformers.__version__}


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a tokenizer's token → id map, its size and its special tokens."""
    special = {attr: getattr(tokenizer, attr, None) for attr in
               ("pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id")}
    text = json.dumps({"class": type(tokenizer).__name__, "size": len(tokenizer), "special": special,
                       "vocab": sorted(tokenizer.get_vocab().items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cache_fields(*, teacher: torch.nn.Module, tokenizer, task: str, max_input_len: int, max_output_len: int,
                 vocab_size: int, is_encoder_decoder: bool, mode: str, k: int) -> dict[str, Any]:
    """The key of a cache directory, spelled out (written to its key.json)."""
    if mode not in MODES[1:]:
        raise ValueError(f"mode must be one of {MODES[1:]}, got {mode!r}")
    return {"format": FORMAT, "mode": mode, "k": min(k, vocab_size) if mode == "topk" else None,
            "teacher": model_fingerprint(teacher), "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
            "task": task, "max_input_len": max_input_len, "max_output_len": max_output_len,
            "vocab_size": vocab_size, "layout": "encoder-decoder" if is_encoder_decoder else "decoder-only"}


def fields_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


# -- batches ----------------------------------------------------------------------------------------------


def row_tokens(batch: Batch, row: int) -> Tensor:
    """The exact token ids the teacher reads for one row of a batch, as one int64 vector (its cache key
    material): per input, its length then its ids — the masked ``input_ids``, the ``decoder_input_ids``
    up to the last counted position — then the counted labels.  Padding never enters, so the same
    sequence in another batch (other rows, other widths) has the same key."""
    labels = batch.labels[row]
    valid = labels != IGNORE
    n = int(valid.nonzero().max()) + 1 if bool(valid.any()) else 0
    parts = []
    for name in sorted(batch.inputs):
        if name in _DERIVED_INPUTS:
            continue
        ids = batch.inputs[name][row]
        if name == "input_ids":
            mask = batch.inputs.get("attention_mask")
            ids = ids[mask[row].bool()] if mask is not None else ids
        elif name == "decoder_input_ids":
            ids = ids[:n]  # causal: later decoder inputs never reach a counted position
        else:
            raise ValueError(f"the teacher cache does not know the model input {name!r}")
        parts.append(ids)
    parts.append(labels[valid])
    out = []
    for part in parts:
        out += [torch.tensor([part.numel()]), part.to("cpu", torch.int64)]
    return torch.cat(out)


def select_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The sub-batch of the given rows (same widths: the extra padding is masked as before)."""
    index = torch.tensor(list(rows), dtype=torch.long)
    return Batch({k: v[index.to(v.device)] for k, v in batch.inputs.items()}, batch.labels[index.to(batch.labels.device)],
                 [batch.ids[i] for i in rows] if batch.ids else [], batch.keep, batch.off_policy)


def _crc(tensor: Tensor) -> str:
    return f"{zlib.crc32(_tensor_bytes(tensor)):08x}"


# -- the cache --------------------------------------------------------------------------------------------


class TeacherCache:
    """One cache directory (one key).  :meth:`teacher` serves a batch's teacher from disk where it can and
    runs ``forward`` on the rest.  Counters: ``hits`` / ``misses`` (sequences served / computed),
    ``corrupt`` (unreadable entries recomputed), ``stored_bytes`` (bytes of the entries this run wrote)."""

    def __init__(self, directory: Path, fields: dict[str, Any]):
        self.directory, self.fields = Path(directory), fields
        self.mode, self.k, self.vocab_size = fields["mode"], fields["k"], fields["vocab_size"]
        self.hits = self.misses = self.corrupt = self.stored_bytes = 0
        self._warned = False
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            key_file = self.directory / KEY_FILE
            try:
                existing = json.loads(key_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                existing = None
            if existing != fields:  # missing or damaged: (re)write it; entries are checked one by one anyway
                _atomic_write_bytes(key_file, (json.dumps(fields, indent=2, sort_keys=True) + "\n").encode())
        except OSError as exc:
            raise XKDError(f"cannot use the teacher cache at {self.directory} ({exc.strerror or exc}): "
                           "check the runs directory is writable, or pass --teacher-cache off.") from None

    @classmethod
    def open(cls, runs_root: Path, task: str, **field_values: Any) -> "TeacherCache":
        fields = cache_fields(task=task, **field_values)
        return cls(Path(runs_root) / task / CACHE_DIRNAME / fields_key(fields), fields)

    def stats(self) -> dict[str, int]:
        return {"teacher_cache_hits": self.hits, "teacher_cache_misses": self.misses,
                "teacher_cache_corrupt": self.corrupt}

    def describe(self) -> dict[str, Any]:
        return {"mode": self.mode, "k": self.k, "dir": str(self.directory), "hits": self.hits,
                "misses": self.misses, "corrupt": self.corrupt, "stored_bytes": self.stored_bytes}

    # -- entries --

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _entry_from_logits(self, logits: Tensor) -> dict[str, Tensor]:
        """What is stored for one sequence from its teacher logits at the counted positions (n x W)."""
        logits = logits[:, : self.vocab_size].detach().to("cpu")
        if self.mode == "full":
            return {"logits": logits.contiguous()}
        logprobs, ids, tail = teacher_topk(logits, self.k)
        return {"logprobs": logprobs.half(), "ids": ids.int(), "tail": tail.float()}

    def _store(self, key: str, tokens: Tensor, entry: dict[str, Tensor]) -> None:
        tensors = {**entry, "tokens": tokens}
        metadata = {"format": FORMAT, "mode": self.mode, **{f"crc32:{k}": _crc(v) for k, v in tensors.items()}}
        path = self._path(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise XKDError(f"cannot write the teacher cache entry {path} ({exc.strerror or exc}): free disk space "
                           "or pass --teacher-cache off.") from None
        self.stored_bytes += path.stat().st_size

    def _load(self, key: str, tokens: Tensor, n: int) -> dict[str, Tensor] | None:
        """The stored entry of a sequence, or None when there is none or it fails a check (then it is
        counted as corrupt and will be recomputed and replaced)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            problem = self._check(tensors, metadata, tokens, n)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means the same: recompute it
            problem = f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if problem is None:
            tensors.pop("tokens")
            return tensors
        self.corrupt += 1
        if not self._warned:
            self._warned = True
            console.print(f"warning: teacher cache entry {path} is {problem}; recomputing it "
                          "(further bad entries are only counted: teacher_cache_corrupt)", markup=False, soft_wrap=True)
        return None

    def _check(self, tensors: dict[str, Tensor], metadata: dict[str, str], tokens: Tensor, n: int) -> str | None:
        if metadata.get("format") != FORMAT or metadata.get("mode") != self.mode:
            return "of another format or mode"
        expected = {"full": {"logits", "tokens"}, "topk": {"logprobs", "ids", "tail", "tokens"}}[self.mode]
        if set(tensors) != expected:
            return f"missing tensors (has {sorted(tensors)})"
        for name, tensor in tensors.items():
            if metadata.get(f"crc32:{name}") != _crc(tensor):
                return f"damaged (checksum of {name!r} does not match)"
        if not torch.equal(tensors["tokens"], tokens):
            return "for other token ids"
        if self.mode == "full":
            logits = tensors["logits"]
            if logits.shape != (n, self.vocab_size) or not logits.is_floating_point():
                return f"of the wrong shape {tuple(logits.shape)}"
            return None
        shape = (n, self.k)
        if (tensors["logprobs"].shape != shape or tensors["ids"].shape != shape or tensors["tail"].shape != (n,)
                or tensors["logprobs"].dtype != torch.float16 or tensors["ids"].dtype != torch.int32):
            return "of the wrong shape or dtype"
        ids = tensors["ids"]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            return "holding token ids outside the vocabulary"
        return None

    # -- serving a batch --

    def teacher(self, batch: Batch, forward: Callable[[Batch], Tensor | HeadLogits]) -> Tensor | HeadLogits | TopKTeacher:
        """The teacher of an off-policy batch: logits ``B x T x W`` (``full``) or a :class:`TopKTeacher`
        (``topk``).  ``forward`` may return a fused head's :class:`~xkd_cli.models.head.HeadLogits`: entries are
        then made one sequence at a time (``n x W``), and ``full`` with every row missing returns it as it is.  Stored sequences come from disk; the others go through ``forward`` (one teacher pass
        over just those rows) and are stored.  With every row missing, ``full`` returns ``forward``'s own
        logits: exactly what a run without the cache uses."""
        if not batch.off_policy:
            raise ValueError("the teacher cache only serves off-policy batches (fixed targets)")
        rows = range(batch.labels.shape[0])
        valid = [(batch.labels[r] != IGNORE).to("cpu") for r in rows]
        tokens = [row_tokens(batch, r) for r in rows]
        keys = [hashlib.sha256(t.numpy().tobytes()).hexdigest()[:32] for t in tokens]
        entries: list[dict[str, Tensor] | None] = [self._load(keys[r], tokens[r], int(valid[r].sum())) for r in rows]
        missing = [r for r in rows if entries[r] is None]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        fresh = None
        if missing:
            fresh = forward(batch if len(missing) == len(rows) else select_rows(batch, missing))
            for j, r in enumerate(missing):
                entries[r] = self._entry_from_logits(_row_logits(fresh, j, valid[r]))
                self._store(keys[r], tokens[r], entries[r])
        if self.mode == "full" and len(missing) == len(rows):
            return fresh
        return self._assemble(batch, valid, entries)

    def _assemble(self, batch: Batch, valid: list[Tensor], entries: list[dict[str, Tensor]]) -> Tensor | TopKTeacher:
        shape = tuple(batch.labels.shape)
        device = batch.labels.device
        if self.mode == "full":
            out = torch.zeros(*shape, self.vocab_size, dtype=entries[0]["logits"].dtype)
            for r, entry in enumerate(entries):
                out[r, valid[r]] = entry["logits"].to(out.dtype)
            return out.to(device)
        logprobs = torch.zeros(*shape, self.k, dtype=torch.float16)
        ids = torch.zeros(*shape, self.k, dtype=torch.int32)
        tail = torch.zeros(shape, dtype=torch.float32)
        for r, entry in enumerate(entries):
            logprobs[r, valid[r]], ids[r, valid[r]], tail[r, valid[r]] = entry["logprobs"], entry["ids"], entry["tail"]
        return TopKTeacher(logprobs.to(device), ids.to(device), tail.to(device))


def _row_logits(fresh: Tensor | HeadLogits, row: int, valid: Tensor) -> Tensor:
    """One row's teacher logits at its counted positions (``n x W``), made from a fused head if it is one."""
    if isinstance(fresh, HeadLogits):
        flat = row * fresh.hidden.shape[1] + valid.nonzero().squeeze(1)
        return fresh.at(flat.to(fresh.hidden.device))
    return fresh[row][valid.to(fresh.device)]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
