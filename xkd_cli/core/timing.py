"""Opt-in wall-clock split of a training step into phases, for the benchmark (``bench/``) and profiling.

``PHASES`` is one process-wide timer, off by default. The engine marks its phases with
``with PHASES("teacher_forward"): ...`` (or ``PHASES.start(name)`` / ``PHASES.stop(name)`` around a block
that is awkward to indent); while the timer is off these are a shared do-nothing context and two
attribute checks, so ordinary runs pay nothing measurable. ``PHASES.enable()`` turns it on; the training
loop then adds ``phase_seconds`` (the seconds each phase took during that optimizer step) to every step's
log line and resets the counters.

Every second is counted once: a phase opened inside another (``generate`` inside ``collate``, which
draws the batch) is taken out of the outer one. What no phase covers (gradient clipping, the scheduler,
logging) is the step time minus their sum. ``backward`` is split at the moment the gradient reaches the
student's logits (a tensor hook set by ``watch``): before it the loss's own backward runs
(``loss_backward``, recomputing the checkpointed loss chunks), after it the model's
(``student_backward``). On a GPU every boundary synchronises the device, which is why timing stays opt-in.
"""

from __future__ import annotations

import contextlib
import time

import torch

NO_TIMING = contextlib.nullcontext()


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class PhaseTimer:
    def __init__(self) -> None:
        self.enabled = False
        self.seconds: dict[str, float] = {}
        self._open: list[list] = []  # [name, started, seconds of inner phases], innermost last
        self._grad_reached: float | None = None

    def enable(self, on: bool = True) -> None:
        """The switch for whoever profiles (``bench/``; no command turns timing on): on, or off again."""
        self.enabled = on
        self.seconds, self._open = {}, []

    def __call__(self, name: str):
        return _Phase(self, name) if self.enabled else NO_TIMING

    def start(self, name: str) -> None:
        if self.enabled:
            _synchronize()
            self._open.append([name, time.perf_counter(), 0.0])

    def stop(self, name: str) -> None:
        if not self.enabled:
            return
        _synchronize()
        opened, started, inner = self._open.pop()
        if opened != name:
            raise RuntimeError(f"phase {name!r} stopped while {opened!r} is open")
        elapsed = time.perf_counter() - started
        self._add(name, elapsed - inner)
        if self._open:
            self._open[-1][2] += elapsed

    def backward(self):
        return _Backward(self) if self.enabled else NO_TIMING

    def watch(self, logits: torch.Tensor) -> None:
        """Note when backward reaches ``logits`` (the end of the loss's backward, the start of the model's); a fused
        head's logits (:class:`~xkd_cli.models.head.HeadLogits`) are watched at their hidden states."""
        logits = getattr(logits, "hidden", logits)
        if self.enabled and logits.requires_grad:
            logits.register_hook(self._on_grad)

    def _on_grad(self, grad: torch.Tensor) -> None:
        _synchronize()
        self._grad_reached = time.perf_counter()

    def _add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The seconds of each phase since the last ``take`` (rounded to 0.1 ms), and start again."""
        taken = {name: round(value, 4) for name, value in self.seconds.items()}
        self.seconds = {}
        return taken


class _Phase:
    __slots__ = ("timer", "name")

    def __init__(self, timer: PhaseTimer, name: str):
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.timer.start(self.name)

    def __exit__(self, *exc) -> None:
        self.timer.stop(self.name)


class _Backward:
    __slots__ = ("timer", "started")

    def __init__(self, timer: PhaseTimer):
        self.timer = timer

    def __enter__(self) -> None:
        self.timer._grad_reached = None
        _synchronize()
        self.started = time.perf_counter()

    def __exit__(self, *exc) -> None:
        _synchronize()
        ended, reached = time.perf_counter(), self.timer._grad_reached
        if reached is None:  # nothing watched: one undivided backward
            self.timer._add("backward", ended - self.started)
        else:
            self.timer._add("loss_backward", reached - self.started)
            self.timer._add("student_backward", ended - reached)


PHASES = PhaseTimer()
