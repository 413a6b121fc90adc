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

from xkd_cli.data.batches import Batch
from xkd_cli.training.checkpoint.resume import find_resume
from xkd_cli.config.checks import quantization_of
from xkd_cli.config.training import DistillConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.runtime import resolve_device
from xkd_cli.models.generate import Sampling, generate_ids
from xkd_cli.models.lora import load_trained_model, lora_record
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.models.loading import load_model
from xkd_cli.models.tokenizers import check_same_tokenizer, tokenizers_match
from xkd_cli.objectives.cross_tokenizer import CrossTokenizerObjective
from xkd_cli.objectives.objectives import KDObjective, MiniLLMObjective, TeacherMixer
from xkd_cli.objectives.reward import RewardHead
from xkd_cli.training.run import EncodedSet, load_split, run_training
from xkd_cli.training.gen_teacher import load_teacher_data
from xkd_cli.training.teacher_cache import TeacherCache
from xkd_cli.data.tasks import Example
from xkd_cli.data.taskfile import task_of
from xkd_cli.models.chat import check_same_prompts, use_chat_template
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
                                eos_id=self.data.eos_id, vocab_size=self.vocab_size, logits_processor=processor,
                                stop_ids=self.data.stop_ids)
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
    task = task_of(cfg)
    name = cfg.run_name()
    resume_from = find_resume(runs_root, task.name, name, kind="distill", cfg=cfg, overwrite=overwrite, resume=resume)
    student_ref = cfg.student or default_model_run(runs_root, task.name, "student", "--student")

    teacher_data = None
    if method.data == "teacher-samples":
        teacher_data = load_teacher_data(cfg.teacher_data, task=task.name, runs_root=runs_root)
    teacher_ref = None  # sequence-level methods need only the teacher's text (black-box teachers too)
    if method.needs_teacher_model:
        teacher_ref = cfg.teacher or default_model_run(runs_root, task.name, "teacher", "--teacher")

    student = use_chat_template(load_trained_model(student_ref, cfg, task=task.name, runs_dir=runs_root),
                                cfg.chat_template)
    teacher = None
    if teacher_ref is not None:
        teacher = load_model(teacher_ref, task=task.name, runs_dir=runs_root, dtype=cfg.teacher_dtype or cfg.dtype,
                             device=str(resolve_device(cfg.teacher_device or cfg.device)), for_training=False,
                             quantization=quantization_of(cfg.teacher_load_in_8bit, cfg.teacher_load_in_4bit),
                             trust_remote_code=cfg.trust_remote_code)
        use_chat_template(teacher, cfg.chat_template)
        same_tokenizer = tokenizers_match(teacher.tokenizer, student.tokenizer)
        if cfg.cross_tokenizer == "off" or same_tokenizer:
            vocab_size = check_same_tokenizer(teacher.tokenizer, student.tokenizer, teacher_ref, student_ref)
        else:
            vocab_size = len(student.tokenizer)
        if cfg.cross_tokenizer == "off" and teacher.is_encoder_decoder != student.is_encoder_decoder:
            # one batch layout feeds both models (--cross-tokenizer builds the teacher a batch of its own)
            kinds = {True: "an encoder-decoder (seq2seq)", False: "a decoder-only"}
            raise XKDError(f"teacher {teacher_ref!r} is {kinds[teacher.is_encoder_decoder]} model but student "
                           f"{student_ref!r} is {kinds[student.is_encoder_decoder]} one: token-level distillation "
                           "needs both of the same kind; pick e.g. tiny-t5-large with tiny-t5-small, or pass "
                           "--cross-tokenizer uld")
    else:
        vocab_size = len(student.tokenizer)
    if teacher_data is not None:
        examples = [Example(f"{r['id']}#{r['sample']}", r["prompt"], r["response"], r.get("source", ""),
                            tuple(map(tuple, r["messages"])) if r.get("messages") else None)
                    for r in teacher_data.rows]
    else:
        examples = load_split(task, "train", cfg, train_fraction=cfg.train_fraction)
    eval_examples = load_split(task, task.eval_split, cfg, limit=cfg.eval_limit) if cfg.eval_every else []
    if teacher is not None and cfg.cross_tokenizer == "off":  # one prompt, the same tokens for both models, before any compute
        check_same_prompts(teacher, student, examples[0], teacher_ref=teacher_ref, student_ref=student_ref,
                           max_len=cfg.max_input_len)
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
        if cfg.cross_tokenizer != "off":
            prompts = {e.id: e.prompt for e in examples}
            rows = {e.id: i for i, e in enumerate(data.examples)}
            objective = CrossTokenizerObjective(
                student, teacher, cfg, vocab_size, head, method=cfg.cross_tokenizer,
                teacher_vocab=len(teacher.tokenizer), prompt_text=prompts.get,
                prompt_ids=lambda batch: [data.prompts[rows[i]] for i in batch.ids],
                max_input_len=cfg.max_input_len, keep_end=task.keep_prompt_end,
                same_layout=same_tokenizer and teacher.is_encoder_decoder == student.is_encoder_decoder)
        else:
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
              "teacher_cache": cache.describe() if cache is not None else None,
              "cross_tokenizer": cfg.cross_tokenizer if cfg.cross_tokenizer != "off" else None}
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
