"""Saving and restoring everything a training run needs to continue exactly where it was: the trained
modules' parameters (this process's shards under FSDP), the optimizer, scheduler, loss scaler, loop counters,
data position and random states; and the stop on SIGTERM / SIGINT after a checkpoint."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as safetensors_bytes

from xkd_cli import __version__
from xkd_cli.config.core import config_hash, to_dict
from xkd_cli.core.errors import Interrupted, XKDError
from xkd_cli.core.workspace import now
from xkd_cli.training.checkpoint.files import delay_for_tests, fsync_dir, read_json_file, write_file, write_json_file
from xkd_cli.training.checkpoint.lock import RunLock
from xkd_cli.training.checkpoint.resume import (COMPLETE, RESUME_FREE_KEYS, STATE_FILE, Checkpoint, checkpoint_dir,
                                                complete_checkpoints, is_complete, latest_checkpoint, training_hash)
from xkd_cli.training.checkpoint.rng import rng_state, set_rng_state
from xkd_cli.training.distributed import Processes, current, is_sharded

FORMAT = "xkd-checkpoint-v1"
KEEP_LAST = 2  # complete checkpoints kept while a run trains when --keep-last is not given
OPTIMIZER_FILE = "optimizer.pt"


class TrainingInterrupted(Interrupted):
    """SIGTERM / SIGINT during training: a checkpoint was written and the run can be resumed."""


@dataclass
class LoopState:
    """What the training loop itself carries from step to step (besides model, optimizer and scheduler)."""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    evals: list[dict] = field(default_factory=list)
    recent_losses: list[float] = field(default_factory=list)  # behind the reported mean loss (older: none)


# -- the trained parts' files ----------------------------------------------------------------------------------


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


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
    from torch.distributed.tensor import DTensor  # here: slow to import; only sharded (FSDP) runs get here

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
        self.save_every = int(getattr(cfg, "save_every", 0))
        asked = getattr(cfg, "keep_last", None)
        self.keep_last = KEEP_LAST if asked is None else int(asked)
        # Checkpoints the user asked for outlive the run; those written only so that it could resume do not.
        self.keep_when_finished = asked is not None or self.save_every > 0
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
        set_rng_state(read_json_file(path / f"rng-rank{rank()}.json"))
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
            name = "Ctrl-C" if self.signal_received == signal.SIGINT else signal.Signals(self.signal_received).name
            raise TrainingInterrupted(
                f"{name}: stopped after step {loop.step} of {max_steps}; kept checkpoint {saved}. "
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
                        write_file(tmp / _module_file(name, module),
                               safetensors_bytes(_module_tensors(module), metadata={"format": FORMAT}))
                if not self.processes.sharded:
                    write_file(tmp / OPTIMIZER_FILE, _optimizer_bytes(optimizer))
                write_json_file(tmp / STATE_FILE, self._state_record(loop, scheduler, scaler))
            self._write_shards(tmp, optimizer)
            write_json_file(tmp / f"rng-rank{rank()}.json", rng_state())

        def seal() -> None:
            sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
            fsync_dir(tmp)
            if final.exists():  # a leftover without COMPLETE from a crash at this very step
                shutil.rmtree(final)
            os.rename(tmp, final)
            fsync_dir(base)
            delay_for_tests()
            marker = final / f".{COMPLETE}.tmp"
            write_json_file(marker, {"step": loop.step, "files": sizes, "written": now()})
            os.rename(marker, final / COMPLETE)
            fsync_dir(final)

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
                    if final.exists() and not is_complete(final):
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
                write_file(tmp / _module_file(name, module),
                       safetensors_bytes(_module_tensors(module), metadata={"format": FORMAT}))
        write_file(tmp / _optimizer_file(True), _optimizer_bytes(optimizer))

    def _state_record(self, loop: LoopState, scheduler: Any, scaler: Any = None) -> dict[str, Any]:
        return {
            "format": FORMAT, "kind": self.kind, "step": loop.step, "examples": self.examples,
            "config": to_dict(self.cfg), "config_hash": config_hash(self.cfg),
            "training_hash": training_hash(self.cfg), "resume_free_keys": list(RESUME_FREE_KEYS),
            "loop": {"step": loop.step, "tokens_seen": loop.tokens_seen, "elapsed_s": loop.elapsed_s,
                     "evals": loop.evals, "recent_losses": loop.recent_losses},
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

    def finished(self) -> int | None:
        """The run finished and its model is saved: delete its checkpoints unless the user asked to keep them
        (``--keep-last`` or ``--save-every``). Returns the bytes deleted, or None when nothing was."""
        base = checkpoint_dir(self.run_dir)
        if self.keep_when_finished or not self.processes.is_main or not base.is_dir():
            return None
        size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base, ignore_errors=True)
        return size

    # signals -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM / SIGINT end the current step, save and stop; a second SIGINT stops at once."""
        def handler(signum, frame):
            if self.signal_received is not None and signum == signal.SIGINT:
                if callable(installed.get(signum)):  # the CLI's own handler says what was kept
                    installed[signum](signum, frame)
                raise KeyboardInterrupt
            self.signal_received = signum

        installed: dict = {}
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
