"""How torch's CPU threads wait: xkd has them spin briefly, then yield their core.

PyTorch's CPU kernels run on OpenMP threads (GNU libgomp in torch's Linux wheels). A thread that has
finished its share of a parallel region spins, by default for about 300,000 iterations (milliseconds),
before it sleeps. When another process holds a core, every parallel region then waits for a thread that is
not running while the others spin on the cores that are free: on a 2-core machine two xkd jobs at once ran
several times slower than one after the other. Not spinning at all (``OMP_WAIT_POLICY=PASSIVE``) fixes that
but costs a wake-up per parallel region, which slowed a tiny SFT's training loop alone by half. A spin of
1,000 iterations (``GOMP_SPINCOUNT=1000``, the spin libgomp itself uses when a process has more threads than
cores) shares the CPU as well as passive waiting (two tiny SFT jobs at once: 1.26x one alone, against 2.7x)
and costs a job alone less, though not nothing: 10-30% of a tiny model's training loop on an idle machine,
where a spin long enough to cost nothing alone is as slow as the default when shared (docs/benchmarks.md,
"Two jobs on one CPU"). xkd takes the trade for the shared case.

The OpenMP runtime reads the setting once, when it is loaded, i.e. when torch is imported. So the entry
points call :func:`yield_when_waiting` before anything imports torch (``xkd`` / ``python -m xkd_cli``,
:func:`xkd_cli.cli.app.main`, the test suite's conftest), and every process they start (the workers of
``--processes N`` or ``accelerate launch``) inherits it. A user's own choice wins: if any of
:data:`SETTINGS` is set, nothing is changed. ``GOMP_SPINCOUNT`` is GNU OpenMP's own variable.
This module imports nothing heavy.
"""

from __future__ import annotations

import os
from typing import MutableMapping

SPIN_COUNT = "GOMP_SPINCOUNT"
SPINS = "1000"  # iterations a waiting thread spins before it sleeps (libgomp's default: 300,000)
# How OpenMP threads wait: the standard variable, GNU libgomp's spin count and Intel / LLVM OpenMP's block
# time. A user who set any of them chose how threads wait.
SETTINGS = ("OMP_WAIT_POLICY", SPIN_COUNT, "KMP_BLOCKTIME")


def yield_when_waiting(env: MutableMapping[str, str] = os.environ) -> None:
    """Set ``GOMP_SPINCOUNT=1000`` in ``env`` (this process's environment) unless one of :data:`SETTINGS`
    is set already. Takes effect for a torch imported after it, here or in a child process."""
    if not any(name in env for name in SETTINGS):
        env[SPIN_COUNT] = SPINS


def wait_settings(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The settings of :data:`SETTINGS` present in ``env``, for a run's record."""
    return {name: env[name] for name in SETTINGS if name in env}
