"""Distillation: every method is a data source composed with an objective, on the one training loop.

| method  | data                                   | loss                          |
|---------|----------------------------------------|-------------------------------|
| seqkd   | teacher samples (gen-teacher)          | NLL                           |
| seqxkd  | teacher samples                        | NLL + F_ex (Algorithm 2)      |
| skd     | ground truth                           | divergence (fkl)              |
| sxkd    | ground truth                           | divergence + F_ex (Eq. 22)    |
| gkd     | ground truth / student samples (α)     | divergence (jsd β)            |
| gxkd    | ground truth / student samples (α)     | divergence + F_ex (Alg. 1)    |
| minillm | teacher-mixed student samples          | PPO reverse-KL policy gradient + single-step reverse KL |
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from xkd_cli.objectives import losses
from xkd_cli.data.batches import Batch, forward
from xkd_cli.training.checkpoint import find_resume
from xkd_cli.config.checks import quantization_of
from xkd_cli.config.training import DistillConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.runtime import resolve_device
from xkd_cli.models.generate import Sampling, generate_ids
from xkd_cli.models.lora import load_trained_model, lora_record
from xkd_cli.models.loading import LoadedModel, check_same_tokenizer, load_model
from xkd_cli.objectives.reward import RewardHead
from xkd_cli.training.run import EncodedSet, load_split, run_training
from xkd_cli.training.gen_teacher import load_teacher_data
from xkd_cli.training.teacher_cache import TeacherCache, TopKTeacher
from xkd_cli.data.tasks import Example, get_task
from xkd_cli.training.timing import PHASES
from xkd_cli.training.distributed import current as current_processes
from xkd_cli.training.loop import IndexStream
from xkd_cli.core.workspace import Run, find_runs

REWARD_HEAD_FILE = "reward_head.safetensors"


# -- data sources ---------------------------------------------------------------------------------------


class StudentSampler:
    """Fresh samples from the current student for a batch's prompts (KV-cached ``generate``); the time it
    takes is kept apart from training time."""

    def __init__(self, student: LoadedModel, data: EncodedSet, sampling: Sampling, vocab_size: int):
        self.student, self.data, self.sampling, self.vocab_size = student, data, sampling, vocab_size
        self.seconds = 0.0
        self.sequences = 0

    def __call__(self, indices: Sequence[int], *, processor=None) -> list[list[int]]:
        started = time.perf_counter()
        with PHASES("generate"):
            rows = generate_ids(self.student.model, [self.data.prompts[i] for i in indices], self.sampling,
                                is_encoder_decoder=self.data.is_encoder_decoder, pad_id=self.data.pad_id,
                                eos_id=self.data.eos_id, vocab_size=self.vocab_size, logits_processor=processor)
        self.seconds += time.perf_counter() - started
        self.sequences += len(indices)
        # An empty continuation still needs one target (eos) so the row counts as a sequence.
        return [r[0] if r[0] else [self.data.eos_id] for r in rows]

    # Checkpoints keep the counters (the samples themselves come from torch's RNG, which they keep too).
    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "sequences": self.sequences}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seconds, self.sequences = state["seconds"], state["sequences"]

    def step_metrics(self) -> dict[str, Any]:
        return {"generation_s": round(self.seconds, 3), "student_samples": self.sequences}


class MixedSource:
    """Algorithm 1's data: with probability α the student's own samples, otherwise the dataset's targets.
    The coin has its own seeded generator, so α = 0 never samples and draws no model randomness."""

    def __init__(self, data: EncodedSet, batch_size: int, alpha: float, sampler: StudentSampler | None, seed: int):
        self.data, self.batch_size, self.alpha, self.sampler = data, batch_size, alpha, sampler
        self.coin = random.Random(seed)
        self.on_policy_batches = 0

    def __call__(self, stream: IndexStream) -> Batch:
        indices = stream.take(self.batch_size)
        if self.alpha > 0 and self.coin.random() < self.alpha:
            self.on_policy_batches += 1
            return self.data.batch(indices, targets=self.sampler(indices))
        batch = self.data.batch(indices)
        batch.off_policy = True  # the dataset's own targets: the teacher cache may serve them
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The coin's exact position (checkpoints): a resumed run flips the same coins."""
        version, internal, gauss = self.coin.getstate()
        return {"coin": [version, list(internal), gauss], "on_policy_batches": self.on_policy_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["coin"]
        self.coin.setstate((version, tuple(internal), gauss))
        self.on_policy_batches = state["on_policy_batches"]


# -- objectives -------------------------------------------------------------------------------------------


class KDObjective:
    """A token-level KD loss (NLL of the batch's targets, or a divergence to the teacher) plus, for the
    X-variants, the experiential term F_ex computed from the student's own probabilities."""

    def __init__(self, student: LoadedModel, teacher: LoadedModel | None, cfg: DistillConfig, vocab_size: int,
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
            counts["td_tokens"] = int(losses.td_mask(batch.labels).sum())
        return counts

    def teacher_logits(self, batch: Batch) -> torch.Tensor:
        self.teacher_forwards += 1
        teacher_device = next(self.teacher.model.parameters()).device
        with torch.no_grad():
            logits, _ = forward(self.teacher.model, batch.to(teacher_device))
        logits = logits.to(batch.labels.device)
        # The row maximum carries NaN and +inf through, so checking it avoids copying the counted rows.
        peak = logits.amax(dim=-1)[losses.valid_mask(batch.labels)]
        if torch.isnan(peak).any() or torch.isposinf(peak).any():
            raise XKDError("the teacher produced non-finite logits at a counted position. Check the teacher "
                           "model and --teacher-dtype (float16 can overflow; try bfloat16 or float32).")
        return logits

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        with PHASES("student_forward"):
            logits, hidden = forward(self.student.model, batch, hidden=self.head is not None)
        PHASES.watch(logits)
        if self.divergence is None:
            term = losses.nll_term()
        else:
            with PHASES("teacher_forward"):  # a cache hit makes this phase nearly free
                teacher = self.teacher_view(batch)
            term = (losses.topk_divergence_term(self.divergence, *teacher, beta=self.cfg.beta)
                    if isinstance(teacher, TopKTeacher) else
                    losses.divergence_term(self.divergence, teacher, beta=self.cfg.beta))
        if self.head is None:
            with PHASES("loss"):
                kd = losses.kd_sum(term, logits, batch.labels, vocab_size=self.vocab_size)
            return {"kd": (kd.total, "tokens")}
        with PHASES("experiential"):
            mu, log_sigma = self.head(hidden)
        with PHASES("loss"):  # both terms in one pass over the logits: one gradient buffer, not two
            kd, ex = losses.kd_experiential_sum(term, logits, batch.labels, mu, log_sigma, lam=self.cfg.lam,
                                                gamma=self.cfg.gamma, tau=self.cfg.tau, vocab_size=self.vocab_size)
        for key, value in ex.stats.items():  # tensors: read once per optimizer step, not per micro-batch
            self._stats[key] = self._stats[key] + value if key in self._stats else value
        self._td_tokens = self._td_tokens + ex.tokens
        return {"kd": (kd.total, "tokens"), "ex": (ex.total, "td_tokens")}

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
        summary = losses.summarize_stats(self._stats, self._td_tokens)
        self._stats, self._td_tokens = {}, 0
        return {**counters, **{f"ex_{k}": v for k, v in summary.items()}}


class TeacherMixer:
    """A ``generate`` logits processor that turns the student's next-token scores into MiniLLM's
    teacher-mixed distribution log((1 − mix)·p_S + mix·p_T). The teacher keeps a KV cache of its own,
    so each step feeds it only the tokens it has not seen (generate never reorders rows here: no beams)."""

    def __init__(self, teacher: LoadedModel, prompts: list[list[int]], data: EncodedSet, mix: float, temperature: float,
                 vocab_size: int):
        from xkd_cli.data.batches import pad_rows

        self.teacher, self.mix, self.temperature, self.vocab_size = teacher, mix, temperature, vocab_size
        self.is_encoder_decoder = data.is_encoder_decoder
        device = next(teacher.model.parameters()).device
        left = not data.is_encoder_decoder
        self.input_ids = pad_rows(prompts, data.pad_id, left=left).to(device)
        self.mask = pad_rows([[1] * len(p) for p in prompts], 0, left=left).to(device)
        self.encoder_outputs = None
        self.past = None
        self.seen = 0  # tokens of generate's ``input_ids`` already in the teacher's cache

    def teacher_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The teacher's next-token logits after ``input_ids`` (B x V), reading only the new tokens."""
        model = self.teacher.model
        device = self.input_ids.device
        new = input_ids[:, self.seen:].to(device)
        if self.is_encoder_decoder:
            if self.encoder_outputs is None:
                self.encoder_outputs = model.get_encoder()(input_ids=self.input_ids, attention_mask=self.mask)
            out = model(encoder_outputs=self.encoder_outputs, attention_mask=self.mask, decoder_input_ids=new,
                        past_key_values=self.past, use_cache=True)
        else:
            generated = input_ids.shape[1] - self.input_ids.shape[1]
            mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], generated))], dim=1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, self.seen:]
            out = model(input_ids=new, attention_mask=mask, position_ids=positions, past_key_values=self.past,
                        use_cache=True, logits_to_keep=1)
        self.past, self.seen = out.past_key_values, input_ids.shape[1]
        return out.logits[:, -1]

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_logits(input_ids)[:, : self.vocab_size].float().to(scores.device) / self.temperature
        student = scores[:, : self.vocab_size].float() / self.temperature
        mixed = losses.teacher_mixed_logprobs(student, teacher, mix=self.mix)
        full = torch.full_like(scores, float("-inf"), dtype=torch.float32)
        full[:, : self.vocab_size] = mixed
        return full


class MiniLLMObjective:
    """MiniLLM (Gu et al.): reverse KL by policy gradient on teacher-mixed student samples. Reward
    r_t = log p_T(y_t) − log p_old(y_t), length-normalised discounted return (0.95), PPO-clipped ratio
    (0.2) with the mixed-sampling importance weight, plus the single-step reverse KL."""

    discount = 0.95
    clip = 0.2

    def __init__(self, student: LoadedModel, teacher: LoadedModel, cfg: DistillConfig, vocab_size: int):
        self.student, self.teacher, self.cfg, self.vocab_size = student, teacher, cfg, vocab_size
        self.kd = KDObjective(student, teacher, cfg, vocab_size, None)

    def counts(self, batch: Batch) -> dict[str, int]:
        return {"tokens": batch.tokens}

    def terms(self, batch: Batch) -> dict[str, tuple[torch.Tensor, str]]:
        teacher_logits = self.kd.teacher_logits(batch)
        logits, _ = forward(self.student.model, batch)
        logp = losses.token_logprobs(logits, batch.labels, vocab_size=self.vocab_size)  # B x T
        old = logp.detach()  # one policy update per sample batch: the sampling policy is the current one
        teacher_logp = losses.token_logprobs(teacher_logits, batch.labels, vocab_size=self.vocab_size)
        rewards = losses.minillm_rewards(teacher_logp, old, batch.labels)
        advantages = losses.minillm_advantages(rewards, batch.labels, discount=self.discount)
        weights = losses.mixed_sampling_weights(old, teacher_logp, batch.labels, mix=self.cfg.mix)
        pg = losses.ppo_clip_sum(logp, old, advantages, batch.labels, weights=weights, clip=self.clip)
        reg = losses.divergence_sum("rkl", logits, teacher_logits, batch.labels, vocab_size=self.vocab_size)
        return {"pg": (pg.total, "tokens"), "rkl": (reg.total, "tokens")}


# -- the job ----------------------------------------------------------------------------------------------


def default_model_run(root: Path, task: str, role: str, flag: str) -> str:
    found = find_runs(root, task, kind="sft", role=role)
    if not found:
        raise XKDError(f"no SFT'd {role} for task '{task}' in {root}: run `xkd sft --task {task} --role {role} "
                       f"--model ...` first, or pass {flag}.")
    return found[-1].name


def run_distill(cfg: DistillConfig, *, runs_root: Path, overwrite: bool = False,
                resume: bool = False) -> dict[str, Any]:
    method = cfg.spec
    task = get_task(cfg.task)
    name = cfg.run_name()
    resume_from = find_resume(runs_root, task.name, name, kind="distill", cfg=cfg, overwrite=overwrite, resume=resume)
    student_ref = cfg.student or default_model_run(runs_root, task.name, "student", "--student")

    teacher_data = None
    if method.data == "teacher-samples":
        teacher_data = load_teacher_data(cfg.teacher_data, task=task.name, runs_root=runs_root)
    teacher_ref = None  # sequence-level methods need only the teacher's text (black-box teachers too)
    if method.needs_teacher_model:
        teacher_ref = cfg.teacher or default_model_run(runs_root, task.name, "teacher", "--teacher")

    student = load_trained_model(student_ref, cfg, task=task.name, runs_dir=runs_root)
    teacher = None
    if teacher_ref is not None:
        teacher = load_model(teacher_ref, task=task.name, runs_dir=runs_root, dtype=cfg.teacher_dtype or cfg.dtype,
                             device=str(resolve_device(cfg.teacher_device or cfg.device)), for_training=False,
                             quantization=quantization_of(cfg.teacher_load_in_8bit, cfg.teacher_load_in_4bit),
                             trust_remote_code=cfg.trust_remote_code)
        vocab_size = check_same_tokenizer(teacher.tokenizer, student.tokenizer, teacher_ref, student_ref)
        if teacher.is_encoder_decoder != student.is_encoder_decoder:  # one batch layout feeds both models
            kinds = {True: "an encoder-decoder (seq2seq)", False: "a decoder-only"}
            raise XKDError(f"teacher {teacher_ref!r} is {kinds[teacher.is_encoder_decoder]} model but student "
                           f"{student_ref!r} is {kinds[student.is_encoder_decoder]} one: token-level distillation "
                           "needs both of the same kind; pick e.g. tiny-t5-large with tiny-t5-small")
    else:
        vocab_size = len(student.tokenizer)
    if teacher_data is not None:
        teacher_data.check_tokenizer(student.tokenizer, student_ref)

    if teacher_data is not None:
        examples = [Example(f"{r['id']}#{r['sample']}", r["prompt"], r["response"], r.get("source", ""))
                    for r in teacher_data.rows]
    else:
        examples = load_split(task, "train", cfg, train_fraction=cfg.train_fraction)
    eval_examples = load_split(task, task.eval_split, cfg, limit=cfg.eval_limit) if cfg.eval_every else []
    data = EncodedSet(examples, student, max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len,
                      keep_end=task.keep_prompt_end)

    head = None
    if method.experiential:
        hidden_size = student.model.get_output_embeddings().in_features
        head = RewardHead(hidden_size, position=cfg.reward_position).to(resolve_device(cfg.device))

    sampling = Sampling(max_new_tokens=cfg.max_output_len, temperature=cfg.temperature, top_p=cfg.top_p)
    sampler = StudentSampler(student, data, sampling, vocab_size)
    cache = None  # MiniLLM's batches are all fresh student samples: nothing to cache (the config refuses it)
    if method.loss == "minillm":
        objective = MiniLLMObjective(student, teacher, cfg, vocab_size)

        def draw(stream: IndexStream) -> Batch:
            indices = stream.take(cfg.batch_size)
            mixer = TeacherMixer(teacher, [data.prompts[i] for i in indices], data, cfg.mix, cfg.temperature,
                                 vocab_size)
            return data.batch(indices, targets=sampler(indices, processor=mixer))
    else:
        if cfg.teacher_cache != "off":
            cache = TeacherCache.open(runs_root, task.name, teacher=teacher.model, tokenizer=teacher.tokenizer,
                                      max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len,
                                      vocab_size=vocab_size, is_encoder_decoder=teacher.is_encoder_decoder,
                                      mode=cfg.teacher_cache, k=cfg.teacher_cache_k)
        objective = KDObjective(student, teacher, cfg, vocab_size, head, cache)
        alpha = cfg.alpha if method.data == "mixed" else 0.0
        draw = MixedSource(data, cfg.batch_size, alpha, sampler, cfg.seed)

    def step_metrics() -> dict[str, Any]:
        # the objective's counters and F_ex statistics (KD objectives), then the sampler's
        return {**(objective.step_metrics() if isinstance(objective, KDObjective) else {}), **sampler.step_metrics()}

    def save_head(run: Run) -> None:
        if head is not None:
            head.save(run.path / REWARD_HEAD_FILE)

    record = {"method": method.name, "paper_name": method.paper_name, "student": student_ref, "teacher": teacher_ref,
              "teacher_data": str(teacher_data.path) if teacher_data is not None else None,
              "divergence": cfg.divergence_name if method.loss == "divergence" else None,
              "base_model": student_ref, **lora_record(cfg, student),
              "teacher_quantization": quantization_of(cfg.teacher_load_in_8bit, cfg.teacher_load_in_4bit),
              "teacher_cache": cache.describe() if cache is not None else None}
    result = run_training(cfg, kind="distill", runs_root=runs_root, overwrite=overwrite, loaded=student, task=task,
                          train_set=data, eval_examples=eval_examples, objective=objective, draw=draw,
                          extra_params=list(head.parameters()) if head is not None else [], record=record,
                          save_extra=save_head, name=name, step_metrics=step_metrics, resume_from=resume_from,
                          checkpointed={"sampler": sampler, **({"reward_head": head} if head is not None else {}),
                                        **({"objective": objective} if isinstance(objective, KDObjective) else {}),
                                        **({"source": draw} if isinstance(draw, MixedSource) else {})})
    result.update(method=method.name, teacher=teacher_ref, student=student_ref,
                  generation_seconds=round(sampler.seconds, 2))
    if cache is not None:  # the final hit / miss counts, in the result and the run record
        result["teacher_cache"] = cache.describe()
        if current_processes().is_main:
            Run(Path(result["path"]), task.name, name).update_record(teacher_cache=result["teacher_cache"])
    if head is not None:
        result["reward_head"] = str(Path(result["path"]) / REWARD_HEAD_FILE)
    return result
