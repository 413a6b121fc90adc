"""Checkpoints and exact resume for the one training loop (``sft`` and ``distill``).

A checkpoint is a directory ``<run>/checkpoints/step-NNNNNNNN/`` holding

* ``model.safetensors``: the model's trainable parameters (every weight in full fine-tuning, the adapters
  with LoRA; frozen weights come back from the model the run started from), and ``<name>.safetensors`` for
  every other trained module (``reward_head.safetensors`` for the X-variants);
* ``optimizer.pt``: the optimizer state, read back with ``torch.load(weights_only=True)`` (tensors and plain
  containers only: no arbitrary unpickling);
* ``state.json``: step, LR scheduler, the fp16 loss scaler (``--mixed-precision fp16``), loop counters and
  evaluations so far, the data position (index stream, the α coin, the student sampler's counters), the
  resolved config and its hashes;
* ``rng-rank<R>.json``: the random states of process R (python ``random``, numpy, torch CPU, CUDA);
* ``COMPLETE``: written last, with the step and the size of every file.

Writing: every file goes into a temporary sibling directory and is fsync'd, the directory is renamed to its
final name, and only then is ``COMPLETE`` written (itself through a temporary name) — a checkpoint without
it does not exist for resume. Older checkpoints are rotated away (``--keep-last``) only after that, and
leftovers of a crash (temporary or unmarked directories) are removed at the same time. A failed write
(disk full) removes its temporary directory and leaves the previous checkpoint as it was.

Resume restores everything, the RNG states last, right before the first resumed step (all randomness of a
step is drawn inside the step: dropout, the α coin, student sampling), so a resumed run continues the very
same streams and ends with bit-identical weights on the same device and software.

Signals: during training SIGTERM and SIGINT finish the current step, write a checkpoint and stop with
:class:`TrainingInterrupted` (the run is recorded as ``interrupted``); a second SIGINT stops at once.

``XKD_TEST_CHECKPOINT_DELAY`` (seconds, tests only) sleeps after each file of a checkpoint and between the
rename and ``COMPLETE``, so a test can kill the process while a checkpoint is half written.

Multi-process training: every process writes its own ``rng-rank<R>.json``; the main process writes the rest
and seals the checkpoint. A stop signal that reaches any process stops all of them at the same step. Under
FSDP each process also writes its shards of the sharded model and of the optimizer state
(``model-rank<R>.safetensors``, ``optimizer-rank<R>.pt``, in place of ``model.safetensors`` and
``optimizer.pt``), and reads back its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes

from xkd_cli import __version__
from xkd_cli.config.core import config_hash, to_dict
from xkd_cli.training.distributed import Processes, current, is_sharded
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import RUN_RECORD, Run, check_new_run, now, open_run, run_path, write_json

FORMAT = "xkd-checkpoint-v1"
DIR_NAME = "checkpoints"
COMPLETE = "COMPLETE"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
DELAY_ENV = "XKD_TEST_CHECKPOINT_DELAY"
_STEP_DIR = re.compile(r"^step-(\d{8})$")

# Config keys that may differ between a checkpoint and the command that resumes it: they steer logging,
# evaluation (greedy, draws no randomness), checkpointing, placement or export, not the training trajectory. Every
# other key (including ones added later) must match. A different device resumes fine but is not bit-identical.
RESUME_FREE_KEYS = ("name", "log_every", "eval_every", "eval_limit", "save_every", "keep_last", "device",
                    "teacher_device", "merge_lora")


class TrainingInterrupted(XKDError):
    """SIGTERM / SIGINT during training: a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell convention for "ended by signal N" (130, 143)


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk."""

    path: Path
    step: int

    def state(self) -> dict[str, Any]:
        return _read_json(self.path / STATE_FILE)


@dataclass
class LoopState:
    """What the training loop itself carries from step to step (besides model, optimizer and scheduler)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    evals: list[dict] = field(default_factory=list)


# -- finding checkpoints -------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / DIR_NAME


def _is_complete(path: Path) -> bool:
    """``COMPLETE`` exists and every file it lists has the recorded size (a truncated file is not complete)."""
    try:
        marker = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
        return all((path / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def complete_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of a run, oldest first; anything half written is skipped."""
    base = checkpoint_dir(run_dir)
    if not base.is_dir():
        return []
    found = []
    for path in base.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and _is_complete(path):
            found.append(Checkpoint(path, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


# -- deciding between a new run and a resume -------------------------------------------------------------------


def differing_keys(saved: Mapping[str, Any], current: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Training-relevant config keys whose values differ (a key missing on one side counts as its default)."""
    current = json.loads(json.dumps(dict(current), default=str))  # compare as stored: tuples → lists
    keys = (set(saved) | set(current)) - set(RESUME_FREE_KEYS)
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != current.get(k, defaults.get(k)))


def config_changes(state: Mapping[str, Any], cfg: Any) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint's value, value now) for each training-relevant key that differs."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    saved, current = state.get("config", {}), to_dict(cfg)
    return [(k, saved.get(k, defaults.get(k)), current.get(k, defaults.get(k)))
            for k in differing_keys(saved, current, defaults)]


def resumable_checkpoint(run_dir: Path, cfg: Any) -> Checkpoint | None:
    """The latest complete checkpoint of a run if ``cfg`` may continue it (e.g. for ``xkd pipeline``)."""
    checkpoint = latest_checkpoint(run_dir)
    try:
        return checkpoint if checkpoint is not None and not config_changes(checkpoint.state(), cfg) else None
    except XKDError:  # a damaged state.json: not resumable
        return None


def training_hash(cfg: Any) -> str:
    """Hash of the config keys that must match for a resume."""
    return config_hash(cfg, ignore=RESUME_FREE_KEYS)


def find_resume(root: Path, task: str, name: str, *, kind: str, cfg: Any, overwrite: bool,
                resume: bool) -> Checkpoint | None:
    """The checkpoint to continue from, or None to start a fresh run; everything else is refused here,
    before any model is loaded (the training commands call it instead of ``check_new_run``)."""
    path = run_path(root, task, name)
    if resume and overwrite:
        raise XKDError("--resume and --overwrite contradict each other: --resume continues the run, --overwrite "
                       "starts it again. Pass one of them.")
    if resume and not path.exists():
        raise XKDError(f"nothing to resume: there is no run '{name}' for task '{task}' in {root}. "
                       "Drop --resume to start it.")
    if path.exists():
        _refuse_if_training(path)
    if overwrite or not (path / RUN_RECORD).is_file():
        check_new_run(root, task, name, overwrite)  # a fresh run, or the usual refusals (a foreign directory...)
        return None
    record = open_run(root, task, name).record()
    if record.get("kind") != kind:
        raise XKDError(f"run '{name}' at {path} is a {record.get('kind')} run, not a {kind} run. "
                       "Pick another --name.")
    if record.get("status") == "completed":
        if resume:
            raise XKDError(f"run '{name}' at {path} has already finished: nothing to resume. "
                           "Pass --overwrite to train it again, or --name to start another run.")
        raise XKDError(f"run '{name}' already exists at {path}. Pick another --name or pass --overwrite to replace it.")
    checkpoint = latest_checkpoint(path)
    if checkpoint is None:
        raise XKDError(f"run '{name}' at {path} did not finish and has no complete checkpoint to resume from "
                       "(checkpoints are written every --save-every steps and on SIGTERM/SIGINT). "
                       "Pass --overwrite to start it again, or --name to start another run.")
    state = checkpoint.state()
    if state.get("kind") != kind:
        raise XKDError(f"checkpoint {checkpoint.path} belongs to a {state.get('kind')} run, not a {kind} run. "
                       "Pass --overwrite to start the run again.")
    changed = config_changes(state, cfg)
    if changed:
        details = ", ".join(f"{k} ({then!r} → {now_!r})" for k, then, now_ in changed)
        raise XKDError(f"cannot resume run '{name}': its checkpoint (step {checkpoint.step}) was made with other "
                       f"settings: {details}. Use the checkpoint's values, pass --overwrite to start again, or "
                       "--name to start another run.")
    return checkpoint


# -- one writer per run --------------------------------------------------------------------------------------

LOCK_FILE = ".training.lock"


def _refuse_if_training(run_dir: Path) -> None:
    """Refuse to touch a run that a live process is training (its lock is held)."""
    path = Path(run_dir) / LOCK_FILE
    if path.is_file():
        with RunLock(run_dir, create=False):
            pass


class RunLock:
    """An advisory lock held while a process trains a run, so a second command (a re-run that would now
    resume) cannot train or overwrite the same run at the same time. The kernel drops it when the
    process dies, SIGKILL included, so a killed run is resumable at once."""

    def __init__(self, run_dir: Path, create: bool = True):
        self.path = Path(run_dir) / LOCK_FILE
        self.create = create
        self.fh = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no protection, as before
            return self
        self.fh = open(self.path, "a+" if self.create else "r", encoding="utf-8")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            self.fh = None
            raise XKDError(f"run {self.path.parent} is being trained right now by {holder}. Wait for it to end "
                           "(or stop it: it checkpoints on SIGTERM), or pick another --name.") from None
        if self.create:
            self.fh.seek(0)
            self.fh.truncate()
            self.fh.write(f"process {os.getpid()}")
            self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fh is not None:
            self.fh.close()  # closing releases the lock
            self.fh = None


# -- RNG states ------------------------------------------------------------------------------------------------


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def rng_state() -> dict[str, Any]:
    """This process's random states as plain JSON values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state.get("cuda") and torch.cuda.is_available():
        saved = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        torch.cuda.set_rng_state_all(saved[: torch.cuda.device_count()])


# -- files ------------------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    _test_delay()


def _write_json(path: Path, value: Any) -> None:
    _write(path, (json.dumps(value, separators=(",", ":")) + "\n").encode("utf-8"))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise XKDError(f"cannot read {path} ({type(exc).__name__}). The checkpoint is damaged: delete its "
                       "directory to resume from the one before, or pass --overwrite to start again.") from None


def _test_delay() -> None:
    delay = os.environ.get(DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def _has_shards(module: torch.nn.Module) -> bool:
    return any(is_sharded(p) for p in module.parameters())


def _module_file(name: str, module: torch.nn.Module) -> str:
    """A sharded (FSDP) module is saved as one file per process, each with that process's shards."""
    return f"{name}-rank{rank()}.safetensors" if _has_shards(module) else f"{name}.safetensors"


def _module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: (p.to_local() if is_sharded(p) else p).detach().to("cpu").contiguous()
            for k, p in _trainable(module).items()}


def _optimizer_file(sharded: bool) -> str:
    return f"optimizer-rank{rank()}.pt" if sharded else OPTIMIZER_FILE


def _optimizer_bytes(optimizer: torch.optim.Optimizer) -> bytes:
    """The optimizer state as ``torch.save`` bytes, with sharded states as this process's plain shards."""
    state = optimizer.state_dict()
    state["state"] = {index: {k: v.to_local() if is_sharded(v) else v for k, v in entry.items()}
                      for index, entry in state["state"].items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _reshard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` from plain shards: make the states of sharded parameters shards again (AdamW's
    moments have the parameter's layout; its step counter is a plain scalar either way)."""
    from torch.distributed.tensor import DTensor

    for group in optimizer.param_groups:
        for p in group["params"]:
            if not is_sharded(p):
                continue
            local = p.to_local()
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and not is_sharded(value) and value.dim() and value.shape == local.shape:
                    optimizer.state[p][key] = DTensor.from_local(value.to(local.device), p.device_mesh, p.placements,
                                                                 run_check=False, shape=p.shape, stride=p.stride())


# -- the checkpointer ----------------------------------------------------------------------------------------------


class Checkpointer:
    """Saves and restores everything a training run needs to continue exactly where it was.

    ``parts``: what to save, by name. Modules (``model``, ``reward_head``): their trainable parameters, in
    ``<name>.safetensors``. Anything else has ``state_dict()`` / ``load_state_dict()`` of plain JSON values
    (the index stream, the α coin, sampler counters), kept in ``state.json``."""

    def __init__(self, run_dir: Path, *, kind: str, cfg: Any, parts: Mapping[str, Any], examples: int,
                 resume: Checkpoint | None = None, processes: Processes | None = None):
        self.run_dir = Path(run_dir)
        self.processes = processes or current()
        self.kind, self.cfg = kind, cfg
        self.save_every, self.keep_last = int(getattr(cfg, "save_every", 0)), int(getattr(cfg, "keep_last", 2))
        self.modules = {k: v for k, v in parts.items() if isinstance(v, torch.nn.Module)}
        self.objects = {k: v for k, v in parts.items() if not isinstance(v, torch.nn.Module)}
        self.examples = examples
        self.resume = resume
        self.signal_received: int | None = None
        self._lock: RunLock | None = None
        if resume is not None:
            self._state = resume.state()
            saved_count = self._state.get("world_size", 1)
            if saved_count != self.processes.count:
                raise XKDError(f"checkpoint {resume.path} was written by {saved_count} process(es) and this run has "
                               f"{self.processes.count}: the global batch would change. Resume with "
                               f"--processes {saved_count}, or pass --overwrite to start again.")
            if self._state.get("sharded", False) != self.processes.sharded:
                then, now_ = ("FSDP", "without it") if self._state.get("sharded") else ("without FSDP", "with FSDP")
                raise XKDError(f"checkpoint {resume.path} was written {then} and this run is launched {now_}: "
                               "resume with the Accelerate config it was written with, or pass --overwrite.")
            if self._state.get("examples") != examples:
                raise XKDError(f"the training set changed since checkpoint {resume.path} "
                               f"({self._state.get('examples')} examples then, {examples} now). Restore the data, "
                               "or pass --overwrite to start again.")

    def lock(self) -> None:
        """Hold the run's lock (the run directory must exist) until :meth:`release` or the process ends."""
        self._lock = RunLock(self.run_dir).__enter__()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    # restore ---------------------------------------------------------------------------------------------

    def restore(self, optimizer: torch.optim.Optimizer, scheduler: Any, *, scaler: Any = None) -> LoopState:
        """Load the checkpoint into modules, optimizer, scheduler and objects; RNG states last. Call it right
        before the first step: nothing may draw random numbers between this and the step."""
        if self.resume is None:
            return LoopState()
        path, state = self.resume.path, self._state
        for name, module in self.modules.items():
            params = _trainable(module)
            if not params:
                continue
            tensors = self._load_tensors(path / _module_file(name, module))
            if set(tensors) != set(params):
                raise XKDError(f"checkpoint {path} does not fit the {name}: its parameters differ "
                               f"({len(tensors)} saved, {len(params)} now). Pass --overwrite to start again.")
            with torch.no_grad():
                for key, param in params.items():
                    (param.to_local() if is_sharded(param) else param).copy_(tensors[key])
        optimizer_file = path / _optimizer_file(self.processes.sharded)
        try:
            optimizer_state = torch.load(optimizer_file, map_location="cpu", weights_only=True)
            optimizer.load_state_dict(optimizer_state)
            _reshard_optimizer_state(optimizer)
        except XKDError:
            raise
        except Exception as exc:  # UnpicklingError for anything but tensors and containers; ValueError on a mismatch
            raise XKDError(f"cannot load the optimizer state from {optimizer_file} "
                           f"({type(exc).__name__}: {_first_line(exc)}). The checkpoint is damaged or not ours: "
                           "delete its directory to resume from the one before, or pass --overwrite.") from None
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:  # fp16 loss scaling: the scale and its growth counter
            scaler.load_state_dict(state["scaler"])
        for name, obj in self.objects.items():
            if name in state["objects"]:  # absent from checkpoints of older versions: it starts afresh
                obj.load_state_dict(state["objects"][name])
        loop = LoopState(**state["loop"])
        set_rng_state(_read_json(path / f"rng-rank{rank()}.json"))
        return loop

    @staticmethod
    def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_safetensors_bytes(path.read_bytes())
        except Exception as exc:
            raise XKDError(f"cannot read {path} ({type(exc).__name__}). The checkpoint is damaged: delete its "
                           "directory to resume from the one before, or pass --overwrite.") from None

    # save --------------------------------------------------------------------------------------------------

    def step_done(self, loop: LoopState, *, max_steps: int, optimizer: torch.optim.Optimizer, scheduler: Any,
                  scaler: Any = None) -> None:
        """After each optimizer step: save when due or when a stop signal came; stop after such a save."""
        if loop.step >= max_steps:
            return  # the final model is saved next: a checkpoint would only repeat it
        due = self.save_every > 0 and loop.step % self.save_every == 0
        # A signal may reach one process only (a node's own scheduler): all save and stop together.
        stop = self.processes.agree(self.signal_received is not None)
        if due or stop:
            saved = self.save(loop, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
        if stop:
            self.signal_received = self.signal_received or signal.SIGTERM
            name = signal.Signals(self.signal_received).name
            raise TrainingInterrupted(
                f"{name} received: stopped after step {loop.step} of {max_steps} and saved checkpoint {saved}. "
                "Run the same command again (or add --resume) to continue.", self.signal_received)

    def save(self, loop: LoopState, *, optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any = None) -> Path:
        """Write a checkpoint in three phases: the main process makes the temporary directory; every process
        writes its part (the main one everything but the other processes' RNG states and shards); the main
        one seals it (rename, ``COMPLETE``, rotation). After each phase all processes agree whether any of them
        failed, so a full disk on one process stops every process with the same message instead of leaving
        the others waiting for it."""
        base = checkpoint_dir(self.run_dir)
        final = base / f"step-{loop.step:08d}"
        # Named after the main process, so a leftover of a killed writer is never mistaken for this one.
        tmp = base / f".tmp-step-{loop.step:08d}-{self.processes.main_value(os.getpid())}"
        main = self.processes.is_main
        previous = latest_checkpoint(self.run_dir)

        def prepare() -> None:
            base.mkdir(exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()

        def write() -> None:
            if main:
                for name, module in self.modules.items():
                    if _trainable(module) and not _has_shards(module):
                        _write(tmp / _module_file(name, module),
                               safetensors_bytes(_module_tensors(module), metadata={"format": FORMAT}))
                if not self.processes.sharded:
                    _write(tmp / OPTIMIZER_FILE, _optimizer_bytes(optimizer))
                _write_json(tmp / STATE_FILE, self._state_record(loop, scheduler, scaler))
            self._write_shards(tmp, optimizer)
            _write_json(tmp / f"rng-rank{rank()}.json", rng_state())

        def seal() -> None:
            sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
            _fsync_dir(tmp)
            if final.exists():  # a leftover without COMPLETE from a crash at this very step
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(base)
            _test_delay()
            marker = final / f".{COMPLETE}.tmp"
            _write_json(marker, {"step": loop.step, "files": sizes, "written": now()})
            os.rename(marker, final / COMPLETE)
            _fsync_dir(final)

        for phase in (prepare, write, seal):
            error = None
            if main or phase is write:
                try:
                    phase()
                except OSError as exc:
                    error = exc
            if self.processes.agree(error is not None):
                if main:
                    shutil.rmtree(tmp, ignore_errors=True)
                    if final.exists() and not _is_complete(final):
                        shutil.rmtree(final, ignore_errors=True)
                kept = f"checkpoint step {previous.step} is intact" if previous else "there is no earlier checkpoint"
                reason = ("another process could not write its part" if error is None
                          else error.strerror or _first_line(error))
                raise XKDError(f"could not write the checkpoint of step {loop.step} to {base}: {reason}; {kept}. "
                               "Free disk space, then run the same command again to resume.") from None
        if main:
            self._rotate(keep=final)
        return final

    def _write_shards(self, tmp: Path, optimizer: torch.optim.Optimizer) -> None:
        """This process's part of a sharded (FSDP) run: its shards of the sharded modules and of the optimizer."""
        if not self.processes.sharded:
            return
        for name, module in self.modules.items():
            if _has_shards(module):
                _write(tmp / _module_file(name, module),
                       safetensors_bytes(_module_tensors(module), metadata={"format": FORMAT}))
        _write(tmp / _optimizer_file(True), _optimizer_bytes(optimizer))

    def _state_record(self, loop: LoopState, scheduler: Any, scaler: Any = None) -> dict[str, Any]:
        return {
            "format": FORMAT, "kind": self.kind, "step": loop.step, "examples": self.examples,
            "config": to_dict(self.cfg), "config_hash": config_hash(self.cfg),
            "training_hash": training_hash(self.cfg), "resume_free_keys": list(RESUME_FREE_KEYS),
            "loop": {"step": loop.step, "tokens_seen": loop.tokens_seen, "elapsed_s": loop.elapsed_s,
                     "evals": loop.evals},
            "scheduler": scheduler.state_dict(),
            **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            "objects": {name: obj.state_dict() for name, obj in self.objects.items()},
            "xkd": __version__, "torch": torch.__version__, "world_size": self.processes.count,
            "sharded": self.processes.sharded, "written": now(),
        }

    def _rotate(self, keep: Path) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; remove crash leftovers. Runs only after the new
        checkpoint is complete, so a failure here never costs the newest one."""
        complete = complete_checkpoints(self.run_dir)
        doomed = [c.path for c in complete[:-self.keep_last]] if self.keep_last > 0 else []
        complete_paths = {c.path for c in complete}
        doomed += [p for p in checkpoint_dir(self.run_dir).iterdir() if p not in complete_paths and p != keep]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # signals -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT end the current step, save and stop; a second SIGINT stops at once."""
        def handler(signum, frame):
            if self.signal_received is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signal_received = signum

        installed = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                installed[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        try:
            yield
        finally:
            for signum, previous in installed.items():
                signal.signal(signum, previous)


def reopen_run(root: Path, task: str, name: str, checkpoint: Checkpoint, config: dict[str, Any]) -> Run:
    """Mark a run as running again from ``checkpoint``: the config as given now, the training log cut back
    to the checkpoint's step (the steps after it are trained again)."""
    run = open_run(root, task, name)
    write_json(run.path / "config.json", config)
    log = run.path / "train_log.jsonl"
    if log.is_file():
        kept = [line for line in log.read_text(encoding="utf-8").splitlines()
                if line.strip() and _logged_step(line) <= checkpoint.step]
        write_json_lines(log, kept)
    resumes = run.record().get("resumes", [])
    run.update_record(status="running", error=None, resumes=[*resumes, {"step": checkpoint.step, "at": now()}])
    return run


def _logged_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


def write_json_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
