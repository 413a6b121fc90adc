"""The objective of ``xkd align --method dpo``: DPO's sigmoid loss (:func:`~.ava.dpo_sum`, TRL ``DPOTrainer``) on the
policy's summed log-probabilities of both sides of a pair, one forward for the ``2P`` rows, against the initial
policy's, computed once before training (:func:`reference_logprobs`, TRL's ``precompute_ref_log_probs``): no second
model is held or run while the policy trains, and a resumed run computes the same reference again (the checkpoint
loads after it). docs/method.md, "Aligning a policy".
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from xkd_cli.core.timing import PHASES
from xkd_cli.data.batches import Batch
from xkd_cli.models.forward import evaluating, forward
from xkd_cli.objectives.ava import DPOParams, dpo_sum, sequence_logprob
from xkd_cli.objectives.steps import _Stateless


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, pairs, *, batch_size: int, vocab_size: int | None,
                       device: torch.device | str, on_batch: Callable[[int], None] | None = None
                       ) -> dict[str, tuple[float, float]]:
    """Each pair's (chosen, rejected) summed log-probability under ``model`` as it is now, by pair id; ``pairs`` an
    :class:`~xkd_cli.training.sources.EncodedPairSet` (``len`` and ``batch(indices)``: chosen rows, then rejected).
    The model runs in eval mode (no dropout), as TRL's reference model does; ``on_batch(n)`` hears of each n pairs."""
    found: dict[str, tuple[float, float]] = {}
    with evaluating(model):
        for at in range(0, len(pairs), batch_size):
            batch = pairs.batch(range(at, min(at + batch_size, len(pairs)))).to(device)
            logits, _ = forward(model, batch)
            logps = sequence_logprob(logits, batch.labels, vocab_size=vocab_size).tolist()  # 2P
            half = len(logps) // 2
            for i, pair_id in enumerate(batch.ids[:half]):
                found[pair_id] = (logps[i], logps[half + i])
            if on_batch is not None:
                on_batch(half)
    return found


class DPOObjective(_Stateless):
    """−log σ(β·[(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))]) over each pair of a ``2P``-row batch,
    normalised by the step's pairs; the reference's log-probabilities come from ``reference`` by pair id."""

    def __init__(self, model: torch.nn.Module, reference: dict[str, tuple[float, float]], *, params: DPOParams,
                 vocab_size: int | None):
        self.model, self.reference, self.params, self.vocab_size = model, reference, params, vocab_size
        self._sums: dict[str, torch.Tensor] = {}  # this step's implicit rewards, summed over its micro-batches
        self._pairs = 0

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"pairs": batch.labels.shape[0] // 2, "tokens": batch.tokens}  # tokens: the step log's throughput

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        with PHASES("student_forward"):
            logits, _ = forward(self.model, batch)
        PHASES.watch(logits)
        with PHASES("loss"):
            logps = sequence_logprob(logits, batch.labels, vocab_size=self.vocab_size)  # 2P
            pairs = logps.shape[0] // 2
            ref = torch.tensor([self.reference[pair_id] for pair_id in batch.ids[:pairs]], dtype=torch.float32,
                               device=logps.device)  # P x 2
            loss = dpo_sum(logps[:pairs], logps[pairs:], ref[:, 0], ref[:, 1], params=self.params)
        self._record(logps.detach()[:pairs] - ref[:, 0], logps.detach()[pairs:] - ref[:, 1])
        return {"dpo": (loss.total, "pairs")}

    def _record(self, chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor) -> None:
        beta = self.params.beta  # TRL's implicit rewards: β·(log π − log π_ref)
        found = {"reward_chosen": beta * chosen_logratio.sum(), "reward_rejected": beta * rejected_logratio.sum(),
                 "correct": (chosen_logratio > rejected_logratio).sum().float()}
        for key, value in found.items():
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._pairs += chosen_logratio.numel()

    def step_metrics(self) -> dict[str, float]:
        """This step's mean implicit rewards of the chosen and rejected responses, their margin and the share of
        pairs where the chosen one's is higher (TRL's ``rewards/*``), before the update."""
        if not self._pairs:
            return {}
        mean = {key: float(value) / self._pairs for key, value in self._sums.items()}
        self._sums, self._pairs = {}, 0
        return {"reward_chosen": round(mean["reward_chosen"], 4), "reward_rejected": round(mean["reward_rejected"], 4),
                "reward_margin": round(mean["reward_chosen"] - mean["reward_rejected"], 4),
                "train_pair_accuracy": round(mean["correct"], 4)}
