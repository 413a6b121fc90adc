"""The objectives a training step asks for its loss: each runs the models on a micro-batch and returns its
loss terms as sums over positions with the name of their normaliser (``xkd_cli.training.loop``).

- ``NLLObjective``: sft; the NLL of the batch's targets (Eq. 1/18).
- ``KDObjective``: seqkd, skd, gkd and their X-variants; the NLL of the targets or a divergence to the
  teacher, plus F_ex (Eq. 20) for the X-variants, in one pass. The X-variants' reward head is its own.
- ``MiniLLMObjective``: minillm; the PPO-clipped reverse-KL policy gradient plus the single-step
  reverse KL and the language-modelling term on the ground-truth targets.

Every objective has the same interface (:class:`Objective`), so the run lifecycle needs to know none of them.
Each receives the few hyperparameters it reads as small frozen objects (:class:`ExperientialParams`,
:class:`DivergenceParams`, :class:`MiniLLMParams`). The math itself lives in :mod:`.chunked`,
:mod:`.divergences`, :mod:`.experiential` and :mod:`.minillm` (docs/method.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from xkd_cli.core.errors import XKDError
from xkd_cli.core.timing import PHASES
from xkd_cli.core.workspace import REWARD_HEAD_FILE
from xkd_cli.data.batches import Batch
from xkd_cli.models.forward import forward
from xkd_cli.models.head import HeadLogits, OutputHead, output_head
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.objectives.divergences import DivergenceParams, divergence_sum, divergence_term, topk_divergence_term
from xkd_cli.objectives.chunked import KDTerm, kd_sum, nll_sum, nll_term, td_mask, token_logprobs, valid_mask
from xkd_cli.objectives.experiential import ExperientialParams, kd_experiential_sum, summarize_stats
from xkd_cli.objectives.minillm import (
    MiniLLMParams,
    clipped_fraction,
    masked_whiten,
    minillm_advantages,
    minillm_rewards,
    mixed_sampling_weights,
    ppo_clip_sum,
    sample_stats,
)
from xkd_cli.objectives.reward import RewardHead
from xkd_cli.objectives.teacher_cache import TeacherCache, TopKTeacher


class Objective(Protocol):
    def counts(self, batch: Batch) -> dict[str, int]:
        """Normalisers this objective needs, computable before any forward pass (e.g. valid tokens)."""

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        """Loss terms of one micro-batch: name → (sum over positions, name of its normaliser)."""

    def modules(self) -> dict[str, torch.nn.Module]:
        """Modules it trains besides the model (the reward head), by checkpoint name."""

    def state_dict(self) -> dict[str, Any]:
        """Its counters, for checkpoints (plain JSON values)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def step_metrics(self) -> dict[str, float]:
        """Numbers for the step log (read once per optimizer step)."""

    def save(self, run_dir: Path) -> dict[str, str]:
        """Write what it trained besides the model into ``run_dir``; the files, by result key."""


TEACHER_NONFINITE = ("the teacher produced non-finite logits at a counted position. Check the teacher "
                     "model and --teacher-dtype (float16 can overflow; try bfloat16 or float32).")


def teacher_logits(teacher: LoadedModel, batch: Batch, device: torch.device,
                   head: OutputHead | None = None) -> torch.Tensor | HeadLogits:
    """The teacher's logits on ``batch`` (no gradient), moved to ``device``; a NaN or +inf at a counted position
    is refused with the fix, at whichever step it happens.  With ``head`` (its fused output head) they are a
    :class:`~xkd_cli.models.head.HeadLogits`, checked chunk by chunk as the loss makes them."""
    teacher_device = next(teacher.model.parameters()).device
    with torch.no_grad():
        logits, _ = forward(teacher.model, batch.to(teacher_device), head=head)
    if head is not None:
        return logits.detach().to(device)._replace(nonfinite_error=TEACHER_NONFINITE)
    logits = logits.to(device)
    # The row maximum carries NaN and +inf through, so checking it avoids copying the counted rows.
    peak = logits.amax(dim=-1)[valid_mask(batch.labels.to(device))]
    if torch.isnan(peak).any() or torch.isposinf(peak).any():
        raise XKDError(TEACHER_NONFINITE)
    return logits


class _Stateless:
    """The parts of the interface an objective without counters or modules of its own shares."""

    def modules(self) -> dict[str, torch.nn.Module]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def step_metrics(self) -> dict[str, float]:
        return {}

    def save(self, run_dir: Path) -> dict[str, str]:
        return {}


class NLLObjective(_Stateless):
    """Token-level negative log-likelihood of the batch's targets (SFT; SeqKD's is KDObjective's NLL term)."""

    def __init__(self, model: torch.nn.Module, *, fused_head: str = "on"):
        self.model = model
        self.fused = output_head(model, fused_head)

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"tokens": batch.tokens}

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        logits, _ = forward(self.model, batch, head=self.fused)
        return {"nll": (nll_sum(logits, batch.labels).total, "tokens")}


class KDObjective:
    """A token-level KD loss (NLL of the batch's targets, or a divergence to the teacher) plus, for the
    X-variants, the experiential term F_ex computed from the student's own probabilities."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel | None, *, vocab_size: int,
                 divergence: DivergenceParams | None, experiential: ExperientialParams | None,
                 cache: TeacherCache | None = None, fused_head: str = "on"):
        """``divergence`` None: the NLL of the batch's targets (seqkd, seqxkd); ``experiential`` None: no F_ex.
        ``fused_head`` on: the student's and the teacher's logits are never made whole where their heads are known
        (:func:`~xkd_cli.models.head.output_head`)."""
        self.student, self.teacher, self.vocab_size, self.cache = student, teacher, vocab_size, cache
        self.fused = output_head(student.model, fused_head, name=f"the student {student.name!r}")
        self.teacher_fused = None if teacher is None or divergence is None else \
            output_head(teacher.model, fused_head, name=f"the teacher {teacher.name!r}")
        self.divergence, self.experiential = divergence, experiential
        self.head = None
        if experiential is not None:
            hidden_size = student.model.get_output_embeddings().in_features  # the run moves it to the device
            self.head = RewardHead(hidden_size, reward_position=experiential.reward_position)
        self.teacher_forwards = 0
        self._stats: dict[str, torch.Tensor] = {}  # F_ex statistics summed over this step's micro-batches
        self._td_tokens: torch.Tensor | int = 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"reward_head": self.head} if self.head is not None else {}

    def save(self, run_dir: Path) -> dict[str, str]:
        if self.head is None:
            return {}
        self.head.save(run_dir / REWARD_HEAD_FILE)
        return {"reward_head": str(run_dir / REWARD_HEAD_FILE)}

    # Checkpoints keep the counters the step log reports, so a resumed run goes on counting where it stopped.
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"teacher_forwards": self.teacher_forwards}
        if self.cache is not None:
            state["cache"] = {k: getattr(self.cache, k) for k in ("hits", "misses", "corrupt", "stored_bytes")}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher_forwards = state["teacher_forwards"]
        if self.cache is not None and "cache" in state:
            for key, value in state["cache"].items():
                setattr(self.cache, key, value)

    def counts(self, batch: Batch) -> dict[str, int]:
        counts = {"tokens": batch.tokens}
        if self.head is not None:
            counts["td_tokens"] = int(td_mask(batch.labels).sum())
        return counts

    def teacher_logits(self, batch: Batch, fused: bool = False) -> torch.Tensor | HeadLogits:
        """The teacher's logits on ``batch``; with ``fused``, as its fused head where it has one."""
        self.teacher_forwards += 1
        return teacher_logits(self.teacher, batch, batch.labels.device, head=self.teacher_fused if fused else None)

    def fused_teacher(self, batch: Batch) -> torch.Tensor | HeadLogits:
        return self.teacher_logits(batch, fused=True)

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        with PHASES("student_forward"):
            logits, hidden = forward(self.student.model, batch, hidden=self.head is not None, head=self.fused)
        PHASES.watch(logits)
        term = self.kd_term(batch)
        if self.head is None:
            with PHASES("loss"):
                kd = kd_sum(term, logits, batch.labels, vocab_size=self.vocab_size)
            return {"kd": (kd.total, "tokens")}
        with PHASES("experiential"):
            mu, log_sigma = self.head(hidden)
        with PHASES("loss"):  # both terms in one pass over the logits: one gradient buffer, not two
            ex_params = self.experiential
            kd, ex = kd_experiential_sum(term, logits, batch.labels, mu, log_sigma, lam=ex_params.lam,
                                         gamma=ex_params.gamma, tau=ex_params.tau, vocab_size=self.vocab_size)
        for key, value in ex.stats.items():  # tensors: read once per optimizer step, not per micro-batch
            self._stats[key] = self._stats[key] + value if key in self._stats else value
        self._td_tokens = self._td_tokens + ex.tokens
        return {"kd": (kd.total, "tokens"), "ex": (ex.total, "td_tokens")}

    def kd_term(self, batch: Batch) -> KDTerm:
        """The per-position KD term of this batch: NLL of the targets, or the divergence to the teacher."""
        if self.divergence is None:
            return nll_term()
        with PHASES("teacher_forward"):  # a cache hit makes this phase nearly free
            teacher = self.teacher_view(batch)
        if isinstance(teacher, TopKTeacher):
            return topk_divergence_term(self.divergence.name, *teacher, beta=self.divergence.beta)
        return divergence_term(self.divergence.name, teacher, beta=self.divergence.beta)

    def teacher_view(self, batch: Batch) -> torch.Tensor | TopKTeacher:
        """The teacher's logits, or for off-policy batches with a cache what the cache serves (never a
        cache for fresh student samples)."""
        if self.cache is not None and batch.off_policy:
            return self.cache.teacher(batch, self.fused_teacher)
        return self.fused_teacher(batch)

    def step_metrics(self) -> dict[str, float]:
        """Teacher passes and cache counters so far, and the experiential statistics of the last optimizer
        step (means and spreads of δ, μ, σ; KL and log q)."""
        counters: dict[str, float] = {}
        if self.teacher is not None:
            counters["teacher_forwards"] = self.teacher_forwards
        if self.cache is not None:
            counters.update(self.cache.stats())
        if self.head is None:
            return counters
        summary = summarize_stats(self._stats, self._td_tokens)
        self._stats, self._td_tokens = {}, 0
        return {**counters, **{f"ex_{k}": v for k, v in summary.items()}}


class MiniLLMObjective(_Stateless):
    """MiniLLM (Gu et al.): reverse KL by policy gradient on teacher-mixed student samples. Reward
    r_t = log p_T(y_t) − log p_old(y_t), length-normalised discounted return (``discount``), whitened over the
    micro-batch (``whiten``), PPO-clipped ratio (``clip``) with the mixed-sampling importance weight (``mix``),
    plus the single-step reverse KL and, with ``lm_weight`` > 0, the NLL of the prompts' ground-truth targets
    times ``lm_weight`` (MiniLLM's pre-training term, on the task's own targets here).

    ``p_old`` is the student that sampled the rollouts: the first pass over a rollout batch takes it from the
    current student (ratio 1) and keeps it, with the advantages and weights, in the batch's ``memo``; the later
    policy updates on the same rollouts (:class:`~xkd_cli.training.sources.TeacherMixed`, ``--ppo-epochs``)
    reuse them, so their ratio moves away from 1 and the clip engages."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel, *, vocab_size: int, params: MiniLLMParams,
                 fused_head: str = "on"):
        self.student, self.teacher, self.vocab_size, self.params = student, teacher, vocab_size, params
        self.fused = output_head(student.model, fused_head, name=f"the student {student.name!r}")
        self.teacher_fused = output_head(teacher.model, fused_head, name=f"the teacher {teacher.name!r}")
        self._stats: dict[str, torch.Tensor] = {}  # sums over this step's micro-batches

    def counts(self, batch: Batch) -> dict[str, int]:
        counts = {"tokens": batch.tokens}
        if self.params.lm_weight > 0 and batch.reference is not None:
            counts["lm_tokens"] = batch.reference.tokens
        return counts

    def rollout(self, batch: Batch, logp: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """The sampling policy's log-probabilities, the advantages and the importance weights of this rollout
        batch: computed on its first pass (from the current student, which sampled it), then read back."""
        memo = batch.memo if batch.memo is not None else {}
        if "old" not in memo:
            labels, p = batch.labels, self.params
            old = logp.detach().float()
            teacher_logp = token_logprobs(teacher, labels, vocab_size=self.vocab_size)
            rewards = minillm_rewards(teacher_logp, old, labels)
            advantages = minillm_advantages(rewards, labels, discount=p.discount)
            if p.whiten:
                advantages = masked_whiten(advantages, labels)
            memo.update(old=old, rewards=rewards, advantages=advantages,
                        weights=mixed_sampling_weights(old, teacher_logp, labels, mix=p.mix))
        return {k: v.to(logp.device) for k, v in memo.items()}

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        with PHASES("teacher_forward"):
            teacher = teacher_logits(self.teacher, batch, batch.labels.device, head=self.teacher_fused)
        with PHASES("student_forward"):
            logits, _ = forward(self.student.model, batch, head=self.fused)
        with PHASES("loss"):
            labels, p = batch.labels, self.params
            logp = token_logprobs(logits, labels, vocab_size=self.vocab_size)  # B x T
            r = self.rollout(batch, logp, teacher)
            pg = ppo_clip_sum(logp, r["old"], r["advantages"], labels, weights=r["weights"], clip=p.clip)
            reg = divergence_sum("rkl", logits, teacher, labels, vocab_size=self.vocab_size)
            self._collect(batch, logp, r)
        terms = {"pg": (pg.total, "tokens"), "rkl": (reg.total, "tokens")}
        if p.lm_weight > 0 and batch.reference is not None:
            with PHASES("student_forward"):
                ref_logits, _ = forward(self.student.model, batch.reference, head=self.fused)
            with PHASES("loss"):
                terms["lm"] = (p.lm_weight * nll_sum(ref_logits, batch.reference.labels).total, "lm_tokens")
        return terms

    def _collect(self, batch: Batch, logp: torch.Tensor, r: dict[str, torch.Tensor]) -> None:
        """Add this micro-batch's sums to the step's: what shows a run collapsing (docs/method.md, "MiniLLM")."""
        labels = batch.labels
        m = valid_mask(labels)
        ratio = torch.where(m, (logp.detach().float() - r["old"]).exp(), 0.0)  # the policy's own ratio, w left out
        found = {"tokens": m.sum().float(), "reward": r["rewards"].sum(), "ratio": ratio.sum(),
                 "ratio_sq": ratio.square().sum(),
                 "clipped": clipped_fraction(logp, r["old"], r["advantages"], labels, weights=r["weights"],
                                             clip=self.params.clip).float(),
                 **sample_stats(labels)}
        for key, value in found.items():
            self._stats[key] = self._stats[key] + value if key in self._stats else value

    def step_metrics(self) -> dict[str, float]:
        """The last optimizer step's collapse signals: the mean per-token reward (log p_T − log p_old of the
        sampled tokens: minus the samples' reverse KL), the mean and spread of the policy ratio p/p_old (exactly
        1 on fresh rollouts; it moves on the later PPO epochs), the share of tokens where the clip held the
        loss (its ratio includes the mixed-sampling weight w), and the samples' mean length and mean
        distinct-token share."""
        if not self._stats:
            return {}
        s = {k: float(v) for k, v in self._stats.items()}
        self._stats = {}
        tokens, samples = max(s["tokens"], 1.0), max(s["samples"], 1.0)
        mean = s["ratio"] / tokens
        return {"minillm_reward": s["reward"] / tokens, "minillm_ratio_mean": mean,
                "minillm_ratio_std": max(s["ratio_sq"] / tokens - mean * mean, 0.0) ** 0.5,
                "minillm_clipped": s["clipped"] / tokens, "sample_length": s["length"] / samples,
                "sample_distinct": s["distinct"] / samples}
