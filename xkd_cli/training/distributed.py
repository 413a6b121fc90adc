"""Data parallelism across processes, on Hugging Face Accelerate.

``accelerate launch -m xkd_cli distill …`` (or ``xkd distill --processes N``, which runs exactly that)
starts N copies of the command. Accelerate sets up the process group (gloo on CPU, NCCL on GPUs,
several nodes through its own config) and gives each process its device; this module holds the few
things the training loop needs from it:

* every process draws the *same* global micro-batch of ``batch × processes`` indices from the same
  seeded stream and keeps its own slice (:class:`ShardedStream`), so a run with 2 processes × batch 4
  sees exactly the examples of 1 process × batch 8, in the same order;
* token counts are summed over processes before any loss is formed, and gradients are summed after the
  backward passes (:meth:`Processes.sum_gradients`), so the update is the per-token-normalised gradient
  of the whole global batch — the same arithmetic as one big batch, up to float reduction order;
* only the main process writes runs, logs and checkpoints.

Gradients are all-reduced as one flat buffer after the step's micro-batches rather than through a
``DistributedDataParallel`` wrapper: the student and the reward head (a separate module the objective
calls on the student's hidden states) are reduced alike, and the model object stays the plain
``transformers`` model that ``generate`` and ``save_pretrained`` expect.

FSDP (an Accelerate config with ``distributed_type: FSDP``, which sets ``ACCELERATE_USE_FSDP``): the
trained model is sharded in place with torch's FSDP2 (:meth:`Processes.shard`); FSDP then sums its
gradients (reduce-scatter) and :meth:`Processes.sum_gradients` reduces only what is not sharded (the
reward head). ``generate`` keeps every process in step, checkpoints save each process's shards, and
the final model is gathered (:meth:`Processes.full_state_dict`). DeepSpeed is refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cached_property
from typing import Iterable, Sequence

import torch

from xkd_cli.core.errors import XKDError
from xkd_cli.core.runtime import launched
from xkd_cli.core.threads import yield_when_waiting


FSDP_ENV = "ACCELERATE_USE_FSDP"  # what ``accelerate launch`` sets for a config with ``distributed_type: FSDP``
DEEPSPEED_ENV = "ACCELERATE_USE_DEEPSPEED"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def refuse_deepspeed() -> None:
    """DeepSpeed would run unsharded here (xkd does not hand its model to DeepSpeed), every process still
    holding the whole student: refuse it before it runs out of memory somewhere later."""
    if _env_true(DEEPSPEED_ENV):
        raise XKDError(
            "this Accelerate config uses DeepSpeed, which xkd does not support: for sharded training use "
            "recipes/accelerate/fsdp.yaml (FSDP, like ZeRO-3), for data parallel recipes/accelerate/multi-gpu.yaml "
            "(or --processes N); big models also fit with --lora-r and --load-in-4bit / --teacher-load-in-4bit.")


def check_shardable(cfg) -> None:
    """Under FSDP (``ACCELERATE_USE_FSDP``), refuse the training settings xkd does not run sharded."""
    if not _env_true(FSDP_ENV):
        return
    clashing = [flag for flag, value in (("--lora-r", cfg.lora_r), ("--load-in-8bit", cfg.load_in_8bit),
                                         ("--load-in-4bit", cfg.load_in_4bit), ("--eval-every", cfg.eval_every),
                                         ("--mixed-precision fp16", cfg.mixed_precision == "fp16"))
                if value]
    if clashing:
        raise XKDError(f"FSDP (this Accelerate config) does not combine with {', '.join(clashing)} in xkd: drop "
                       f"{'it' if len(clashing) == 1 else 'them'}, or launch data parallel with "
                       "recipes/accelerate/multi-gpu.yaml (adapters and quantized weights fit without sharding).")


def is_sharded(tensor: torch.Tensor) -> bool:
    """A parameter (or gradient, optimizer state) that FSDP split across the processes (a DTensor)."""
    from torch.distributed.tensor import DTensor  # seconds to import: not when this module loads (e.g. for the CLI)

    return isinstance(tensor, DTensor)


class Processes:
    """The processes of this run: one (no Accelerate state at all) or several under a launcher."""

    def __init__(self, device: str = "auto"):
        self.accelerator = None
        if launched():
            refuse_deepspeed()
            try:
                from accelerate import Accelerator  # only a multi-process launch needs it
            except ImportError as exc:  # pragma: no cover - accelerate is a dependency
                raise XKDError("multi-process training needs accelerate: `pip install accelerate`") from exc
            # Without cpu=True Accelerate sees no GPU and falls back to a single process.
            self.accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())

    @property
    def count(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP (an Accelerate config with ``distributed_type: FSDP``): the trained model's parameters,
        gradients and optimizer state are split across the processes (:meth:`shard`)."""
        return self.count > 1 and _env_true(FSDP_ENV)

    def shard(self, model: torch.nn.Module) -> None:
        """FSDP2 (``fully_shard``) on each transformer block of ``model`` (the classes it names in
        ``_no_split_modules``), then on the whole model, in place. FSDP sums the gradients over processes
        (reduce-scatter) instead of :meth:`sum_gradients`; it sums rather than averages, because every
        process's loss is already divided by the token count of the whole global batch."""
        from torch.distributed.fsdp import FSDPModule, fully_shard  # only FSDP runs need it (slow to import)

        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in list(model.modules()):
            if module is not model and type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(model)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)  # plain sums: gloo has no pre-scaled reduction
        # FSDP picks its root at the first forward; generate may call the encoder first, which would make a block
        # the root. Settle it now (torch has no public call for this).
        model._get_fsdp_state()._lazy_init()

    def full_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The whole (unsharded) state dict of a sharded model on the main process's CPU, an empty dict on the
        others. Every process must call it: the shards are gathered."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # FSDP runs only

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        # Tied weights (T5's shared embedding and head) come back once per name, as copies that save_pretrained
        # cannot tell are one tensor: keep the names an unsharded model's own state dict keeps.
        kept = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
        return {name: tensor for name, tensor in full.items() if name in kept}

    @cached_property
    def device(self) -> torch.device | None:
        """The device Accelerate assigned to this process (None when single-process: the caller decides)."""
        if self.accelerator is None:
            return None
        return torch.device("cpu") if self.accelerator.device.type == "cpu" else self.accelerator.device

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Token counts of the whole global batch (every process passes its own counts under the same keys)."""
        return self._sum(counts, torch.int64)

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Sum of per-process loss terms (each already normalised by the global count): the global loss."""
        return self._sum(values, torch.float64)

    def _sum(self, numbers: dict, dtype: torch.dtype) -> dict:
        if self.count == 1 or not numbers:
            return numbers
        keys = sorted(numbers)
        tensor = torch.tensor([numbers[k] for k in keys], dtype=dtype, device=self._comm_device)
        torch.distributed.all_reduce(tensor)
        return dict(zip(keys, tensor.tolist()))

    def sum_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of ``params`` as one flat buffer; a missing gradient counts as 0 so
        every process reduces the same layout. Sharded (FSDP) parameters are left out: FSDP sums those."""
        if self.count == 1:
            return
        params = [p for p in params if p.requires_grad and not is_sharded(p)]  # FSDP reduced those already
        if not params:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch._utils._flatten_dense_tensors(grads)
        torch.distributed.all_reduce(flat)
        for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(reduced)

    def main_value(self, value: int) -> int:
        """The main process's ``value`` (an int), on every process."""
        if self.count == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self._comm_device)
        torch.distributed.broadcast(tensor, src=0)
        return int(tensor.item())

    def wait(self) -> None:
        if self.count > 1:
            torch.distributed.barrier()

    def agree(self, flag: bool) -> bool:
        """True when any process says so (e.g. "stop: a signal arrived"), so all act together."""
        if self.count == 1:
            return flag
        value = torch.tensor([int(flag)], device=self._comm_device)
        torch.distributed.all_reduce(value)
        return bool(value.item())

    @property
    def _comm_device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device("cpu") if backend == "gloo" else self.accelerator.device


_CURRENT: Processes | None = None


def current(device: str = "auto") -> Processes:
    """This process's view of the run's processes (made once: Accelerate's state is per process)."""
    global _CURRENT
    if _CURRENT is None:
        _CURRENT = Processes(device)
    return _CURRENT


def relaunch(processes: int, argv: Sequence[str]) -> int:
    """Run this same ``xkd`` command under ``accelerate launch`` with ``processes`` processes (the
    ``--processes`` flag); returns the launcher's exit code."""
    if processes < 1:
        raise XKDError(f"--processes must be >= 1, got {processes}")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if processes > 1:
        command.append("--multi_gpu")  # Accelerate's name for "data parallel"; it uses gloo when there is no GPU
    command += ["-m", "xkd_cli", *argv]
    env = dict(os.environ)
    yield_when_waiting(env)  # the processes share the CPU by construction: their threads must not spin on it
    return subprocess.call(command, env=env)
