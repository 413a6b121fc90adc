"""How torch's CPU threads wait: spinning while the CPU is xkd's alone, yielding their core when it is shared.

PyTorch's CPU kernels run on OpenMP threads (GNU libgomp in torch's Linux wheels). A thread that has
finished its share of a parallel region spins, by default for about 300,000 iterations (milliseconds),
before it sleeps. When another process holds a core, every parallel region then waits for a thread that is
not running while the others spin on the cores that are free: on a 2-core machine two xkd jobs at once ran
several times slower than one after the other. A spin of 1,000 iterations (``GOMP_SPINCOUNT=1000``, the spin
libgomp itself uses when a process has more threads than cores) shares the CPU (two tiny SFT jobs at once:
1.26x one alone, against 2.7x), but on a CPU that is otherwise idle it costs a wake-up per parallel region:
10-30% of a tiny model's training loop. A spin long enough to cost nothing alone is as slow as the default
when shared, and choosing the thread count instead would change a run's numbers (docs/benchmarks.md, "Two
jobs on one CPU"). So xkd looks before it starts OpenMP: if other processes kept at least :data:`SHARED_AT`
of this process's cores busy since xkd started (``/proc/stat`` less this process's own CPU time), threads
spin briefly and yield; otherwise they keep the runtime's default. How threads wait never changes a result,
only its time.

The OpenMP runtime reads the setting once, when it is loaded, i.e. when torch is imported. So the entry
points call :func:`share_cpu_fairly` before anything imports torch (``xkd`` / ``python -m xkd_cli``,
:func:`xkd_cli.cli.app.main`); it notes the CPU's busy time then and decides when torch is first imported,
which every process xkd starts does for itself. The processes of a multi-process launch share the CPU by
construction and are started with the short spin (:func:`yield_when_waiting`), as is the test suite, which
often runs beside other work. A user's own choice wins: if any of :data:`SETTINGS` is set, nothing is changed
or measured. ``GOMP_SPINCOUNT`` is GNU OpenMP's own variable. This module imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import MutableMapping

SPIN_COUNT = "GOMP_SPINCOUNT"
SPINS = "1000"  # iterations a waiting thread spins before it sleeps (libgomp's default: 300,000)
# How OpenMP threads wait: the standard variable, GNU libgomp's spin count and Intel / LLVM OpenMP's block
# time. A user who set any of them chose how threads wait.
SETTINGS = ("OMP_WAIT_POLICY", SPIN_COUNT, "KMP_BLOCKTIME")
SHARED_AT = 0.5  # cores kept busy by other processes from which a spinning thread waits for one that is not running
WINDOW = 0.2  # seconds of the CPU's busy time looked at, at least: /proc/stat counts in 10 ms ticks
STAT = "/proc/stat"
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Cores other processes kept busy while this one started, as measured before torch loaded (None: not measured).
measured_elsewhere: float | None = None


@dataclass(frozen=True)
class CpuSample:
    """The busy time of this process's cores (all processes) and this process's own CPU time, at a moment."""
    at: float  # time.monotonic()
    busy: float  # seconds, summed over the cores this process may run on
    own: float  # seconds of CPU this process used


def busy_seconds(stat_text: str, cores: set[int]) -> float:
    """Busy seconds of ``cores`` from ``/proc/stat``'s text: every field but idle and iowait. Steal counts as
    busy: the hypervisor gave the core to someone else."""
    busy = 0
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            ticks = [int(value) for value in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / TICK


def sample() -> CpuSample | None:
    """This moment's :class:`CpuSample`, or None where the kernel does not say (no ``/proc/stat``)."""
    try:
        with open(STAT) as stat:
            text = stat.read()
        cores = os.sched_getaffinity(0)
    except (OSError, AttributeError):
        return None
    own = os.times()
    return CpuSample(time.monotonic(), busy_seconds(text, cores), own.user + own.system)


def cores_busy_elsewhere(before: CpuSample, after: CpuSample) -> float:
    """How many of this process's cores other processes kept busy, on average, between the two samples."""
    wall = after.at - before.at
    return max(0.0, (after.busy - before.busy) - (after.own - before.own)) / wall if wall > 0 else 0.0


def yield_when_waiting(env: MutableMapping[str, str] = os.environ) -> None:
    """Set ``GOMP_SPINCOUNT=1000`` in ``env`` unless one of :data:`SETTINGS` is set already. Takes effect for
    a torch imported after it, here or in a child process."""
    if not user_chose(env):
        env[SPIN_COUNT] = SPINS


def user_chose(env: MutableMapping[str, str] = os.environ) -> bool:
    return any(name in env for name in SETTINGS)


def choose(elsewhere: float | None, env: MutableMapping[str, str] = os.environ) -> None:
    """The short spin where other processes kept :data:`SHARED_AT` cores busy, or where that was not measured
    (what xkd did before it looked); the runtime's default otherwise. A user's own setting is kept."""
    if elsewhere is None or elsewhere >= SHARED_AT:
        yield_when_waiting(env)


def decide(before: CpuSample | None) -> None:
    """Measure the cores other processes kept busy since ``before`` (waiting out the rest of :data:`WINDOW` if
    less has passed), note it for the run record and :func:`choose` from it."""
    global measured_elsewhere
    if before is not None:
        time.sleep(max(0.0, WINDOW - (time.monotonic() - before.at)))
        after = sample()
        measured_elsewhere = round(cores_busy_elsewhere(before, after), 2) if after is not None else None
    choose(measured_elsewhere)


class _BeforeTorch:
    """An import finder that finds nothing: it makes the choice when torch is first imported, then steps aside.
    (It stays on ``sys.meta_path``: removing a finder while the import system walks that list skips the next.)"""

    def __init__(self, before: CpuSample | None):
        self.before, self.done = before, False

    def find_spec(self, name, path=None, target=None):
        if not self.done and (name == "torch" or name.startswith("torch.")):
            self.done = True
            decide(self.before)
        return None


def share_cpu_fairly() -> None:
    """Arrange for :func:`decide` to run just before torch is first imported in this process, measuring from
    now. Nothing to do where the user chose how threads wait, torch is loaded already, or it is arranged."""
    if user_chose() or "torch" in sys.modules or any(isinstance(f, _BeforeTorch) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorch(sample()))


def wait_settings(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The settings of :data:`SETTINGS` present in ``env``, for a run's record."""
    return {name: env[name] for name in SETTINGS if name in env}
