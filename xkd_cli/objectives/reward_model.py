"""The objective of ``xkd reward-model``: a backbone read as a Q-function through its own LM head, with a Gaussian
reward head (:class:`~xkd_cli.objectives.reward.RewardHead`) on its last hidden states (docs/method.md, "AVA").

- ``ava-p``: −F_p − F_c on a preference batch (2P rows, chosen first; :func:`~.ava.ava_p_sum`).
- ``ava-d``: −F_d on demonstrations (:func:`~.ava.ava_d_sum`).
- ``bt``: Bradley–Terry, −log σ(r⁺ − r⁻) (:func:`~.ava.bradley_terry_sum`), the baseline. Its scalar reward is the
  same head's μ at the last counted position (TRL's reward trainer reads a sequence-classification head at the
  last real token: the same thing, a linear map of the last token's state), so a BT model is saved, loaded and
  viewed (``xkd reward``) exactly as an AVA one; its log σ is never trained and stays at 0.

The head reads ``reward_position="current"`` (h_t, the state whose logits predict y_t, as the Q head; AVA Eq. 9):
with ``next`` the last counted position, where F_c and a response's reward read μ, would read a state that is never
computed (the last target is never fed as input), so its μ would be only the head's bias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from xkd_cli.core.timing import PHASES
from xkd_cli.core.workspace import REWARD_HEAD_FILE
from xkd_cli.data.batches import Batch
from xkd_cli.models.forward import forward
from xkd_cli.models.head import output_head
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.objectives.ava import AVAParams, ava_counts, ava_d_sum, ava_p_sum, bradley_terry_sum, response_reward
from xkd_cli.objectives.experiential import summarize_stats
from xkd_cli.objectives.reward import RewardHead

REWARD_MODEL_POSITION = "current"  # see the module docstring
METHODS = ("ava-p", "ava-d", "bt")


class RewardModelObjective:
    """One of :data:`METHODS` on the model's forward (one forward for both sides of a pair), training the reward
    head beside the model. ``params`` (AVA's) is None for bt."""

    def __init__(self, loaded: LoadedModel, method: str, *, params: AVAParams | None, vocab_size: int,
                 fused_head: str = "on"):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        self.loaded, self.method, self.params, self.vocab_size = loaded, method, params, vocab_size
        # Fused: the LM head's logits are made chunk by chunk inside the loss (bt never makes them at all).
        self.fused = output_head(loaded.model, fused_head)
        hidden_size = loaded.model.get_output_embeddings().in_features  # the run moves the head to the device
        self.head = RewardHead(hidden_size, reward_position=REWARD_MODEL_POSITION)
        self._stats: dict[str, torch.Tensor] = {}  # F_ex statistics summed over this step's micro-batches
        self._td_tokens: torch.Tensor | int = 0
        self._correct: torch.Tensor | int = 0  # training pairs with r⁺ > r⁻ in this step (before the update)
        self._pairs = 0

    @property
    def preference(self) -> bool:
        return self.method != "ava-d"

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"reward_head": self.head}

    def save(self, run_dir: Path) -> dict[str, str]:
        self.head.save(run_dir / REWARD_HEAD_FILE)
        return {"reward_head": str(run_dir / REWARD_HEAD_FILE)}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def counts(self, batch: Batch) -> dict[str, int]:
        if self.method == "bt":  # tokens: no term reads it; the step log's throughput does
            return {"pairs": batch.labels.shape[0] // 2, "tokens": batch.tokens}
        return ava_counts(batch.labels, preference=self.preference)

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        with PHASES("student_forward"):
            logits, hidden = forward(self.loaded.model, batch, hidden=True, head=self.fused)  # B x T x V, B x T x H
        PHASES.watch(logits)
        with PHASES("experiential"):
            mu, log_sigma = self.head(hidden)  # B x T each, float32
        labels = batch.labels
        with PHASES("loss"):
            if self.method == "bt":
                reward = response_reward(mu, labels, how="last")  # 2P
                pairs = labels.shape[0] // 2
                self._count_correct(reward, pairs)
                return {"bt": (bradley_terry_sum(reward[:pairs], reward[pairs:]).total, "pairs")}
            ava = ava_p_sum if self.preference else ava_d_sum
            parts = ava(logits, labels, mu, log_sigma, params=self.params, vocab_size=self.vocab_size)
        for key, value in parts.experiential.stats.items():  # tensors: read once per optimizer step
            self._stats[key] = self._stats[key] + value if key in self._stats else value
        self._td_tokens = self._td_tokens + parts.experiential.tokens
        if self.preference:
            self._count_correct(response_reward(mu, labels, how=self.params.reward), labels.shape[0] // 2)
        return parts.terms()

    def _count_correct(self, reward: torch.Tensor, pairs: int) -> None:
        reward = reward.detach()
        self._correct = self._correct + (reward[:pairs] > reward[pairs:]).sum()
        self._pairs += pairs

    def step_metrics(self) -> dict[str, float]:
        """This optimizer step's training-pair accuracy (pairs only) and, for AVA, the per-token term's
        statistics (means and spreads of δ, μ, σ; KL and log q)."""
        found: dict[str, float] = {}
        if self._pairs:
            found["train_pair_accuracy"] = round(float(self._correct) / self._pairs, 4)
        if self.method != "bt":
            found.update({f"ex_{k}": v for k, v in summarize_stats(self._stats, self._td_tokens).items()})
        self._stats, self._td_tokens, self._correct, self._pairs = {}, 0, 0, 0
        return found
