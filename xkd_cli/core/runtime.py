"""Where a command computes and how its randomness starts: ``--device`` resolved to a torch device (under a
multi-process launcher, this process's own), and every random number generator seeded at once. Training,
evaluation, teacher sampling and model loading all ask here; the process group itself (Accelerate) is
``xkd_cli.training.distributed``'s."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from xkd_cli.core.errors import XKDError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def launched() -> bool:
    """True inside ``accelerate launch`` / ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(name: str) -> torch.device:
    """The device named by --device; ``auto`` under a multi-process launcher is this process's own device."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # Under a launcher each process takes the GPU of its local rank, as Accelerate assigns it.
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}") if launched() else torch.device("cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XKDError(f"--device {name} asked for a GPU but torch sees none. Use --device cpu (or auto).")
    return torch.device(name)
