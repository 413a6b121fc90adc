"""The objectives the training loop composes with a data source (``xkd_cli.training.loop.Objective``):
each runs the models on a batch and returns its loss terms as sums over positions with the name of
their normaliser.

- ``NLLObjective``: sft; the NLL of the batch's targets (Eq. 1/18).
- ``KDObjective``: seqkd, skd, gkd and their X-variants; the NLL of the targets or a divergence to the
  teacher, plus F_ex (Eq. 20) for the X-variants, in one pass.
- ``MiniLLMObjective``: minillm; the PPO-clipped reverse-KL policy gradient plus the single-step
  reverse KL.

``TeacherMixer`` makes MiniLLM's teacher-mixed samples.  The math itself lives in
:mod:`.engine`, :mod:`.divergences`, :mod:`.experiential` and :mod:`.minillm` (docs/method.md).
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch

from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import Batch, pad_rows
from xkd_cli.models.forward import forward
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.objectives.divergences import divergence_sum, divergence_term, topk_divergence_term
from xkd_cli.objectives.engine import KDTerm, kd_sum, nll_sum, nll_term, td_mask, token_logprobs, valid_mask
from xkd_cli.objectives.experiential import kd_experiential_sum, summarize_stats
from xkd_cli.objectives.methods import Method
from xkd_cli.objectives.minillm import (
    minillm_advantages,
    minillm_rewards,
    mixed_sampling_weights,
    ppo_clip_sum,
    teacher_mixed_logprobs,
)
from xkd_cli.objectives.reward import RewardHead
from xkd_cli.training.teacher_cache import TeacherCache, TopKTeacher
from xkd_cli.training.timing import PHASES


# The configs and data sets below are described by what the objectives read of them, because the
# modules that define them (training/distill.py, training/sft.py) import this one.


class DistillSettings(Protocol):
    """The hyperparameters the objectives read (``xkd_cli.training.distill.DistillConfig``)."""

    beta: float
    lam: float
    gamma: float
    tau: float
    mix: float

    @property
    def spec(self) -> Method: ...

    @property
    def divergence_name(self) -> str | None: ...


class PromptSet(Protocol):
    """The layout of encoded prompts (``xkd_cli.training.sft.EncodedSet``)."""

    is_encoder_decoder: bool
    pad_id: int


class NLLObjective:
    """Token-level negative log-likelihood of the batch's targets (SFT; SeqKD's is KDObjective's NLL term)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"tokens": batch.tokens}

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        logits, _ = forward(self.model, batch)
        return {"nll": (nll_sum(logits, batch.labels).total, "tokens")}


class KDObjective:
    """A token-level KD loss (NLL of the batch's targets, or a divergence to the teacher) plus, for the
    X-variants, the experiential term F_ex computed from the student's own probabilities."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel | None, cfg: DistillSettings, vocab_size: int,
                 head: RewardHead | None, cache: TeacherCache | None = None):
        self.student, self.teacher, self.cfg, self.vocab_size, self.head = student, teacher, cfg, vocab_size, head
        self.divergence = cfg.divergence_name if cfg.spec.loss == "divergence" else None
        self.cache = cache
        self.teacher_forwards = 0
        self._stats: dict[str, torch.Tensor] = {}  # F_ex statistics summed over this step's micro-batches
        self._td_tokens: torch.Tensor | int = 0

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

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        self.teacher_forwards += 1
        teacher_device = next(self.teacher.model.parameters()).device
        with torch.no_grad():
            logits, _ = forward(self.teacher.model, batch.to(teacher_device))
        logits = logits.to(batch.labels.device)
        # The row maximum carries NaN and +inf through, so checking it avoids copying the counted rows.
        peak = logits.amax(dim=-1)[valid_mask(batch.labels)]
        if torch.isnan(peak).any() or torch.isposinf(peak).any():
            raise XKDError("the teacher produced non-finite logits at a counted position. Check the teacher "
                           "model and --teacher-dtype (float16 can overflow; try bfloat16 or float32).")
        return logits

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        with PHASES("student_forward"):
            logits, hidden = forward(self.student.model, batch, hidden=self.head is not None)
        PHASES.watch(logits)
        term = self.kd_term(batch)
        if self.head is None:
            with PHASES("loss"):
                kd = kd_sum(term, logits, batch.labels, vocab_size=self.vocab_size)
            return {"kd": (kd.total, "tokens")}
        with PHASES("experiential"):
            mu, log_sigma = self.head(hidden)
        with PHASES("loss"):  # both terms in one pass over the logits: one gradient buffer, not two
            kd, ex = kd_experiential_sum(term, logits, batch.labels, mu, log_sigma, lam=self.cfg.lam,
                                         gamma=self.cfg.gamma, tau=self.cfg.tau, vocab_size=self.vocab_size)
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
            return topk_divergence_term(self.divergence, *teacher, beta=self.cfg.beta)
        return divergence_term(self.divergence, teacher, beta=self.cfg.beta)

    def teacher_view(self, batch: Batch) -> torch.Tensor | TopKTeacher:
        """The teacher's logits, or for off-policy batches with a cache what the cache serves (never a
        cache for fresh student samples)."""
        if self.cache is not None and batch.off_policy:
            return self.cache.teacher(batch, self.teacher_logits)
        return self.teacher_logits(batch)

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


class TeacherMixer:
    """A ``generate`` logits processor that turns the student's next-token scores into MiniLLM's
    teacher-mixed distribution log((1 − mix)·p_S + mix·p_T). The teacher keeps a KV cache of its own,
    so each step feeds it only the tokens it has not seen (generate never reorders rows here: no beams)."""

    def __init__(self, teacher: LoadedModel, prompts: list[list[int]], data: PromptSet, mix: float, temperature: float,
                 vocab_size: int):
        self.teacher, self.mix, self.temperature, self.vocab_size = teacher, mix, temperature, vocab_size
        self.is_encoder_decoder = data.is_encoder_decoder
        device = next(teacher.model.parameters()).device
        left = not data.is_encoder_decoder
        self.input_ids = pad_rows(prompts, data.pad_id, left=left).to(device)
        self.mask = pad_rows([[1] * len(p) for p in prompts], 0, left=left).to(device)
        self.encoder_outputs = None
        self.past = None
        self.seen = 0  # tokens of generate's ``input_ids`` already in the teacher's cache
        base = teacher.model.get_base_model() if hasattr(teacher.model, "get_base_model") else teacher.model
        # transformers 5.2x renamed forward's past_key_values to cache (the old name warns); older ones lack it
        self.cache_key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def teacher_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The teacher's next-token logits after ``input_ids`` (B x V), reading only the new tokens."""
        model = self.teacher.model
        device = self.input_ids.device
        new = input_ids[:, self.seen:].to(device)
        if self.is_encoder_decoder:
            if self.encoder_outputs is None:
                self.encoder_outputs = model.get_encoder()(input_ids=self.input_ids, attention_mask=self.mask)
            out = model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask, decoder_input_ids=new,
                        use_cache=True, **{self.cache_key: self.past})
        else:
            generated = input_ids.shape[1] - self.input_ids.shape[1]
            mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], generated))], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, self.seen:]
            out = model(input_ids=new, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                        **{self.cache_key: self.past})
        self.past, self.seen = out[self.cache_key] if self.cache_key in out else out.past_key_values, input_ids.shape[1]
        return out.logits[:, -1]

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_logits(input_ids)[:, : self.vocab_size].float().to(scores.device) / self.temperature
        student = scores[:, : self.vocab_size].float() / self.temperature
        mixed = teacher_mixed_logprobs(student, teacher, mix=self.mix)
        full = torch.full_like(scores, float("-inf"), dtype=torch.float32)
        full[:, : self.vocab_size] = mixed
        return full


class MiniLLMObjective:
    """MiniLLM (Gu et al.): reverse KL by policy gradient on teacher-mixed student samples. Reward
    r_t = log p_T(y_t) − log p_old(y_t), length-normalised discounted return (0.95), PPO-clipped ratio
    (0.2) with the mixed-sampling importance weight, plus the single-step reverse KL."""

    discount = 0.95
    clip = 0.2

    def __init__(self, student: LoadedModel, teacher: LoadedModel, cfg: DistillSettings, vocab_size: int):
        self.student, self.teacher, self.cfg, self.vocab_size = student, teacher, cfg, vocab_size
        self.kd = KDObjective(student, teacher, cfg, vocab_size, None)

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"tokens": batch.tokens}

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        teacher_logits = self.kd.teacher_logits(batch)
        logits, _ = forward(self.student.model, batch)
        logp = token_logprobs(logits, batch.labels, vocab_size=self.vocab_size)  # B x T
        old = logp.detach()  # one policy update per sample batch: the sampling policy is the current one
        teacher_logp = token_logprobs(teacher_logits, batch.labels, vocab_size=self.vocab_size)
        rewards = minillm_rewards(teacher_logp, old, batch.labels)
        advantages = minillm_advantages(rewards, batch.labels, discount=self.discount)
        weights = mixed_sampling_weights(old, teacher_logp, batch.labels, mix=self.cfg.mix)
        pg = ppo_clip_sum(logp, old, advantages, batch.labels, weights=weights, clip=self.clip)
        reg = divergence_sum("rkl", logits, teacher_logits, batch.labels, vocab_size=self.vocab_size)
        return {"pg": (pg.total, "tokens"), "rkl": (reg.total, "tokens")}
