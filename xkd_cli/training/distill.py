"""Distillation: every method is a data source composed with an objective, on the one training loop; the method
table (``xkd_cli.config.methods``) names both, ``xkd_cli.training.methods`` builds them.

| method  | source                                   | objective: loss                                        |
|---------|------------------------------------------|--------------------------------------------------------|
| seqkd   | teacher samples (gen-teacher)            | kd: NLL                                                |
| seqxkd  | teacher samples                          | kd: NLL + F_ex (Algorithm 2)                           |
| skd     | ground truth                             | kd: divergence (fkl)                                   |
| sxkd    | ground truth                             | kd: divergence + F_ex (Eq. 22)                         |
| gkd     | α-mix: ground truth / student samples    | kd: divergence (jsd β)                                 |
| gxkd    | α-mix: ground truth / student samples    | kd: divergence + F_ex (Alg. 1)                         |
| minillm | teacher-mixed student samples            | minillm: PPO reverse-KL policy gradient + reverse KL   |
|         | (each batch for --ppo-epochs steps)      | + NLL of the ground-truth targets                      |
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xkd_cli.config.checks import quantization_of
from xkd_cli.config.training import DistillConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.runtime import resolve_device
from xkd_cli.core.workspace import Run
from xkd_cli.data.taskfile import task_of
from xkd_cli.data.tasks import Example
from xkd_cli.models.chat import check_same_prompts, use_chat_template
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.models.loading import load_model
from xkd_cli.models.lora import load_trained_model, lora_record
from xkd_cli.models.tokenizers import check_same_tokenizer, tokenizers_match
from xkd_cli.objectives.teacher_cache import TeacherCache
from xkd_cli.training.checkpoint.resume import find_resume
from xkd_cli.training.distributed import current as current_processes
from xkd_cli.training.gen_teacher import load_teacher_data
from xkd_cli.training.lifecycle import load_split, run_training
from xkd_cli.training.methods import Setup, build
from xkd_cli.training.preflight import default_model_run
from xkd_cli.training.sources import EncodedSet


@dataclass
class Models:
    """The student to train and the teacher to read (None for the sequence-level methods), with the names they
    were given by and the vocabulary the losses compare over."""

    student: LoadedModel
    teacher: LoadedModel | None
    student_ref: str
    teacher_ref: str | None
    vocab_size: int
    same_tokenizer: bool


def load_models(cfg: DistillConfig, runs_root: Path, task: str) -> Models:
    """Load the student (trainable: LoRA, quantisation as configured) and, where the method reads one, the
    teacher; check that one batch layout and one vocabulary serve both unless --cross-tokenizer says otherwise."""
    method = cfg.spec
    student_ref = cfg.student or default_model_run(runs_root, task, "student", "--student")
    teacher_ref = None  # sequence-level methods need only the teacher's text (black-box teachers too)
    if method.needs_teacher_model:
        teacher_ref = cfg.teacher or default_model_run(runs_root, task, "teacher", "--teacher")

    student = use_chat_template(load_trained_model(student_ref, cfg, task=task, runs_dir=runs_root),
                                cfg.chat_template)
    teacher = None
    if teacher_ref is not None:
        teacher = load_model(teacher_ref, task=task, runs_dir=runs_root, dtype=cfg.teacher_dtype or cfg.dtype,
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
        vocab_size, same_tokenizer = len(student.tokenizer), False
    return Models(student, teacher, student_ref, teacher_ref, vocab_size, same_tokenizer)


def run_distill(cfg: DistillConfig, *, runs_root: Path, overwrite: bool = False,
                resume: bool = False) -> dict[str, Any]:
    method = cfg.spec
    task = task_of(cfg)
    name = cfg.run_name()
    resume_from = find_resume(runs_root, task.name, name, kind="distill", cfg=cfg, overwrite=overwrite, resume=resume)
    teacher_data = None  # read first: a missing gen-teacher run is refused before any model loads
    if method.source == "teacher-samples":
        teacher_data = load_teacher_data(cfg.teacher_data, task=task.name, runs_root=runs_root)
    models = load_models(cfg, runs_root, task.name)
    student, teacher, vocab_size = models.student, models.teacher, models.vocab_size
    student_ref, teacher_ref = models.student_ref, models.teacher_ref
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

    cache = None
    if cfg.teacher_cache != "off":
        cache = TeacherCache.open(runs_root, task.name, teacher=teacher.model, tokenizer=teacher.tokenizer,
                                  max_input_len=cfg.max_input_len, max_output_len=cfg.max_output_len,
                                  vocab_size=vocab_size, is_encoder_decoder=teacher.is_encoder_decoder,
                                  mode=cfg.teacher_cache, k=cfg.teacher_cache_k)
    alignment = None
    if cfg.cross_tokenizer != "off":
        prompts = {e.id: e.prompt for e in examples}
        rows = {e.id: i for i, e in enumerate(data.examples)}
        alignment = dict(teacher_vocab=len(teacher.tokenizer), prompt_text=prompts.get,
                         prompt_ids=lambda batch: [data.prompts[rows[i]] for i in batch.ids],
                         max_input_len=cfg.max_input_len, keep_end=task.keep_prompt_end,
                         same_layout=models.same_tokenizer and teacher.is_encoder_decoder == student.is_encoder_decoder)
    source, objective = build(Setup(cfg, student, teacher, data, vocab_size, cache=cache, cross_tokenizer=alignment))

    record = {"method": method.name, "paper_name": method.paper_name, "student": student_ref, "teacher": teacher_ref,
              "teacher_data": str(teacher_data.path) if teacher_data is not None else None,
              "divergence": cfg.divergence_name if method.loss == "divergence" else None,
              "base_model": student_ref, **lora_record(cfg, student),
              "teacher_quantization": quantization_of(cfg.teacher_load_in_8bit, cfg.teacher_load_in_4bit),
              "teacher_cache": cache.describe() if cache is not None else None,
              "cross_tokenizer": cfg.cross_tokenizer if cfg.cross_tokenizer != "off" else None}
    result = run_training(cfg, kind="distill", runs_root=runs_root, overwrite=overwrite, loaded=student, task=task,
                          train_set=data, eval_examples=eval_examples, source=source, objective=objective,
                          record=record, name=name, resume_from=resume_from)
    result.update(method=method.name, teacher=teacher_ref, student=student_ref)
    if cache is not None:  # the final hit / miss counts, in the result and the run record
        result["teacher_cache"] = cache.describe()
        if current_processes().is_main:
            Run(Path(result["path"]), task.name, name).update_record(teacher_cache=result["teacher_cache"])
    return result
