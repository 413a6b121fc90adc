"""How torch's CPU threads wait: xkd has them yield their core instead of spinning for it.

PyTorch's CPU kernels run on OpenMP threads (GNU libgomp in the CPU wheels). A thread that has finished
its share of a parallel region spins, by default for about 300,000 iterations (milliseconds), before it
sleeps. When another process holds a core, every parallel region then waits for a thread that is not
running while the others spin on the cores that are free: on a 2-core machine two xkd jobs at once ran
five times slower than one after the other. ``OMP_WAIT_POLICY=PASSIVE`` makes a waiting thread sleep at
once and give its core away (docs/benchmarks.md, "Two jobs on one CPU", has the figures).

The OpenMP runtime reads the setting once, when it is loaded, i.e. when torch is imported. So the entry
points call :func:`yield_when_waiting` before anything imports torch (``xkd`` / ``python -m xkd_cli``,
:func:`xkd_cli.cli.app.main`, the test suite's conftest), and every process they start (the workers of
``--processes N`` or ``accelerate launch``) inherits it. A user's own choice wins: if any of
:data:`SETTINGS` is set, nothing is changed. This module imports nothing heavy.
"""

from __future__ import annotations

import os
from typing import MutableMapping

WAIT_POLICY = "OMP_WAIT_POLICY"
# How OpenMP threads wait: the standard variable, GNU libgomp's spin count and Intel OpenMP's block time.
# A user who set any of them chose how threads wait.
SETTINGS = (WAIT_POLICY, "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def yield_when_waiting(env: MutableMapping[str, str] = os.environ) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``env`` (this process's environment) unless one of
    :data:`SETTINGS` is set already. Takes effect for a torch imported after it, here or in a child process."""
    if not any(name in env for name in SETTINGS):
        env[WAIT_POLICY] = "PASSIVE"


def wait_settings(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The settings of :data:`SETTINGS` present in ``env``, for a run's record."""
    return {name: env[name] for name in SETTINGS if name in env}
