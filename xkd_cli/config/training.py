"""The options of the training commands, each declared once: ``xkd sft`` (SFTConfig) and ``xkd distill``
(DistillConfig), both on top of the options every training run shares (TrainingConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from xkd_cli.config.checks import check, choice, task_problems, in_range, lora_problems, quantization_problems
from xkd_cli.core.hparams import hparam_problems
from xkd_cli.config.core import DTYPES, MIXED_PRECISION, option
from xkd_cli.config.defaults import DISTILL_DEFAULTS, SFT_DEFAULTS, TaskDefaults
from xkd_cli.config.fields import (CHAT_TEMPLATE, DATA, LOAD_4BIT_HELP, LOAD_8BIT_HELP, MAX_INPUT_LEN, METRIC, MODEL,
                                   NAME, TASK, TRAIN_FRACTION, ModelLoading)
from xkd_cli.core.registry import unknown_name_message
from xkd_cli.core.workspace import slug
from xkd_cli.config.methods import (BETA_DIVERGENCES, DIVERGENCE_NAMES, METHOD_OPTIONS, METHODS, REWARD_POSITIONS, Method,
                                     methods_reading)

ROLES = ("teacher", "student")
CROSS_TOKENIZER_MODES = ("off", "uld", "shared")
TEACHER_CACHE_MODES = ("off", "full", "topk")
FUSED_HEAD_MODES = ("on", "off")  # xkd_cli.models.head's, without importing torch


def _one_of(names) -> str:
    """"a, b or c": the choices in a help text, from the table that defines them."""
    names = list(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class TrainingConfig(ModelLoading):
    """Options every training command shares (sft, and distill on top of it), besides how it loads its model."""
    task: str = TASK.field()
    name: str | None = NAME.field()
    data: str | None = DATA.field()
    metric: str | None = METRIC.field()
    chat_template: str = CHAT_TEMPLATE.field()
    max_steps: int = option(1000, "Optimizer steps.")
    batch_size: int = option(8, "Batch size (per process).")
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    lr: float = option(1e-3, "Peak learning rate (AdamW).")
    warmup_steps: int = option(0, "Linear warm-up steps, then linear decay.")
    weight_decay: float = option(0.0, "AdamW weight decay.")
    max_grad_norm: float = option(1.0, "Gradient clipping by global norm (0 = off).")
    max_input_len: int = MAX_INPUT_LEN.field()
    max_output_len: int = option(64, "Maximum target / sample length in tokens.")
    train_fraction: float = TRAIN_FRACTION.field()
    eval_every: int = option(0, "Evaluate every N steps (0 = never).")
    eval_limit: int = option(64, "Examples per in-training evaluation.")
    log_every: int = option(10, "Write a log line every N steps; the run's reported loss is the mean of its last "
                                "max(N, 10) steps.")
    dropout: float | None = option(None, "Override the model's dropout rate.")
    save_every: int = option(0, "Write a checkpoint every N steps (0 = off; SIGTERM/SIGINT always write one).")
    keep_last: int | None = option(None, "Complete checkpoints to keep (default 2 while the run trains). A run that "
                                         "finishes deletes its checkpoints unless --keep-last or --save-every is "
                                         "given: then it keeps the newest N (2 with --save-every alone).")
    # LoRA / QLoRA of the trained model: r = 0 trains every weight.
    lora_r: int = option(0, "LoRA rank: train rank-R adapters instead of all weights (0 = off).")
    lora_alpha: float = option(16.0, "LoRA scaling α (update scale α/r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA adapters' input.")
    lora_targets: tuple[str, ...] | None = option(
        None, "Comma-separated layer names to adapt (default: T5 q,v; Llama q_proj,v_proj).", cli_type=str)
    merge_lora: bool = option(False, "Also save <run>/merged: the adapter folded into the base, a plain "
                                     "transformers model.")
    # --load-in-* quantize the command's own model (sft's --model, distill's --student).
    load_in_8bit: bool = option(False, LOAD_8BIT_HELP + "; training needs --lora-r.")
    load_in_4bit: bool = option(False, LOAD_4BIT_HELP + "; training needs --lora-r (QLoRA).")
    # How the weights compute, next to how they load (ModelLoading, listed after these in --help).
    fused_head: str = option("on", "Compute the logits inside the loss, chunk by chunk from the last hidden states "
                                   "and the output head, never as one batch x length x vocabulary tensor (student "
                                   "and teacher): on, off (make them whole, the older path). A head xkd does not "
                                   "know keeps its logits, with one line saying so.")
    mixed_precision: str = option("no", "Autocast the forward passes to bf16 or fp16 (fp16 with loss scaling); "
                                        "weights, optimizer and losses stay float32: no, bf16, fp16.")

    # Whether a command may take the task from the runs directory when it holds runs of one task only.
    TASK_FROM_RUNS: ClassVar[bool] = False
    # Which per-task presets fill the options not given (config.defaults): none for the shared base.
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = None

    def problems(self) -> list[str]:
        found: list[str] = []
        task_problems(found, self.task, self.data, self.metric, self.chat_template)
        for name in ("max_steps", "batch_size", "grad_accum", "max_input_len", "max_output_len", "log_every"):
            in_range(found, name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "eval_limit", "save_every"):
            in_range(found, name, getattr(self, name), 0)
        in_range(found, "keep_last", self.keep_last, 1)
        in_range(found, "lr", self.lr, 0, lo_open=True)
        in_range(found, "weight_decay", self.weight_decay, 0)
        in_range(found, "max_grad_norm", self.max_grad_norm, 0)
        in_range(found, "train_fraction", self.train_fraction, 0, 1, lo_open=True)
        in_range(found, "dropout", self.dropout, 0, 1, hi_open=True)
        choice(found, "dtype", self.dtype, DTYPES)
        choice(found, "mixed_precision", self.mixed_precision, MIXED_PRECISION)
        choice(found, "fused_head", self.fused_head, FUSED_HEAD_MODES)
        if not (self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda")):
            found.append(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        return found + lora_problems(self)

    def __post_init__(self) -> None:
        check(self.problems())


@dataclass(frozen=True)
class SFTConfig(TrainingConfig):
    model: str = MODEL.field()
    role: str | None = option(None, "Record the run as the task's 'teacher' or 'student' (distill picks them up).")

    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = SFT_DEFAULTS

    def problems(self) -> list[str]:
        found = super().problems()
        if not self.model:
            found.append("--model is required (a built-in name such as tiny-t5-small, a run name, a path or a hub id)")
        choice(found, "role", self.role, ROLES)
        return found

    def run_name(self) -> str:
        return self.name or f"sft-{slug(self.model)}"


# The defaults of the method-specific options, for the methods that read them (xkd_cli.config.methods).
METHOD_DEFAULTS = {"lam": 0.001, "gamma": 1.0, "tau": 1.0, "alpha": 0.5, "beta": 0.5, "temperature": 1.0, "top_p": 0.95,
                   "reward_position": "next", "mix": 0.2, "ppo_epochs": 4, "lm_weight": 1.0, "whiten": True}


def _method_default(option: str) -> str:
    readers = methods_reading(option)
    return f" (default: {METHOD_DEFAULTS[option]}; {', '.join(readers)} only)"


def given_text(name: str, value: Any) -> str:
    """How an option was given, for messages: ``--mix 0.4``, ``--no-whiten``."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def options_read(method: Method, values: dict[str, Any]) -> tuple[str, ...]:
    """The method-specific options a distillation with these ``values`` reads: the method's own, less ``beta``
    where the divergence is one β does not weight (or ULD's distance replaces it)."""
    divergence = values.get("divergence") or method.default_divergence
    ignores_beta = divergence not in BETA_DIVERGENCES or values.get("cross_tokenizer") == "uld"
    return tuple(name for name in method.options if not (name == "beta" and ignores_beta))


def inapplicable_options(method: Method, values: dict[str, Any]) -> dict[str, str]:
    """The method-specific options set in ``values`` (name → value, None = not set) that a distillation with
    ``method`` would ignore, each with its one-line refusal: ``--lam`` on skd, ``--beta`` with fkl."""
    read = options_read(method, values)
    found = {}
    for name in METHOD_OPTIONS:
        if values.get(name) is None or name in read:
            continue
        given = given_text(name, values[name])
        if name in method.options:  # beta
            why = "--cross-tokenizer uld, whose distance is ULD's" if values.get("cross_tokenizer") == "uld" else \
                f"--divergence {values.get('divergence') or method.default_divergence}"
            fix = "--cross-tokenizer shared" if values.get("cross_tokenizer") == "uld" else "--divergence jsd"
            found[name] = (f"{given} has no effect with {why}: β weights {' and '.join(BETA_DIVERGENCES)} only; "
                           f"drop it, or pass {fix}")
        else:
            readers = methods_reading(name)
            other = f"--method {readers[0]}" if len(readers) == 1 else "one of those methods"
            found[name] = (f"{given} has no effect on {method.name}: it applies to {', '.join(readers)} only; "
                           f"drop it, or use {other}")
    return found


@dataclass(frozen=True)
class DistillConfig(TrainingConfig):
    method: str = option("gxkd", f"{_one_of(METHODS.names())}.")
    teacher: str | None = option(None, "Teacher model (default: the task's SFT run with --role teacher).")
    student: str | None = option(None, "Student model (default: the task's SFT run with --role student).")
    teacher_data: str | None = option(None, "gen-teacher run or samples JSONL (default: the task's latest).")
    # The method-specific options: None = not given; a method that reads one gets its default (METHOD_DEFAULTS)
    # in __post_init__, and one given to a method that does not read it is refused.
    lam: float | None = option(None, "Experiential weight λ (0 = the baseline)." + _method_default("lam"))
    gamma: float | None = option(None, "TD discount γ." + _method_default("gamma"))
    tau: float | None = option(None, "τ′ of the Q-value decoder, Eq. 28." + _method_default("tau"))
    alpha: float | None = option(None, "On-policy (student sample) probability α." + _method_default("alpha"))
    beta: float | None = option(None, "β of the generalized JSD / β-mix (--divergence jsd or mix)."
                                + _method_default("beta"))
    divergence: str | None = option(None, f"{_one_of(DIVERGENCE_NAMES)} (default: fkl for skd/sxkd, jsd for "
                                                 "gkd/gxkd).")
    temperature: float | None = option(None, "Student sampling temperature." + _method_default("temperature"))
    top_p: float | None = option(None, "Student sampling top-p." + _method_default("top_p"))
    reward_position: str | None = option(None, "Reward head input: 'next' (h_t+1, the state after the action, as the "
                                               "paper's q_φ(·|x, y_1:t+1)) or 'current' (h_t, an ablation)."
                                         + _method_default("reward_position"))
    mix: float | None = option(None, "MiniLLM teacher-mixed sampling weight." + _method_default("mix"))
    ppo_epochs: int | None = option(None, "MiniLLM policy updates (optimizer steps) per batch of rollouts."
                                    + _method_default("ppo_epochs"))
    lm_weight: float | None = option(None, "MiniLLM weight of the NLL of the ground-truth targets (its pre-training "
                                           "term; 0 = off)." + _method_default("lm_weight"))
    whiten: bool | None = option(None, "MiniLLM: whiten the advantages over the batch."
                                 + _method_default("whiten"))
    teacher_dtype: str | None = option(None, "Teacher dtype (default: --dtype).")
    teacher_device: str | None = option(None, "Teacher device (default: --device).")
    # A quantized teacher only runs forward: no LoRA needed.
    teacher_load_in_8bit: bool = option(False, "Load the teacher quantized to 8 bits (bitsandbytes).")
    teacher_load_in_4bit: bool = option(False, "Load the teacher quantized to 4 bits (bitsandbytes NF4).")
    teacher_cache: str = option("off", "Keep the teacher's view of ground-truth batches on disk and reuse it across "
                                       "epochs and runs: off, full (exact) or topk (top-k + tail, small).")
    teacher_cache_k: int = option(64, "Tokens per position kept by --teacher-cache topk.")
    cross_tokenizer: str = option("off", "Distil token by token from a teacher with another tokenizer (skd, sxkd, "
                                         "gkd, gxkd): off, uld (sorted-probability distance) or shared (--divergence "
                                         "on the shared vocabulary where both predict the same text).")

    TASK_FROM_RUNS: ClassVar[bool] = True
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = DISTILL_DEFAULTS

    def __post_init__(self) -> None:
        if self.method in METHODS:
            for name in options_read(self.spec, self.__dict__):  # frozen: the defaults are set once, here
                if getattr(self, name) is None and name in METHOD_DEFAULTS:
                    object.__setattr__(self, name, METHOD_DEFAULTS[name])
        super().__post_init__()

    def unread_options(self) -> tuple[str, ...]:
        """The method-specific options this run does not read: left out of its config.json."""
        read = options_read(self.spec, self.__dict__) if self.method in METHODS else METHOD_OPTIONS
        return tuple(name for name in METHOD_OPTIONS if name not in read)

    def problems(self) -> list[str]:
        found = super().problems()
        found += quantization_problems(self.teacher_load_in_8bit, self.teacher_load_in_4bit, prefix="teacher-")
        if self.method not in METHODS:
            found.append(unknown_name_message("method", self.method, METHODS.names()).rstrip("."))
        if self.divergence is not None and self.divergence not in DIVERGENCE_NAMES:
            found.append(unknown_name_message("divergence", self.divergence, list(DIVERGENCE_NAMES)).rstrip("."))
        elif self.method in METHODS:
            found += inapplicable_options(self.spec, self.__dict__).values()
        choice(found, "reward_position", self.reward_position, REWARD_POSITIONS)
        found += hparam_problems(lam=self.lam, gamma=self.gamma, tau=self.tau, alpha=self.alpha, beta=self.beta,
                                 mix=self.mix, temperature=self.temperature, ppo_epochs=self.ppo_epochs,
                                 lm_weight=self.lm_weight)
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        choice(found, "teacher_cache", self.teacher_cache, TEACHER_CACHE_MODES)
        if self.teacher_cache in TEACHER_CACHE_MODES[1:] and self.method in METHODS and \
                METHODS.get(self.method).source not in ("ground-truth", "alpha-mix"):
            found.append(f"--teacher-cache {self.teacher_cache} caches the teacher on fixed targets, which {self.method} "
                         "never runs it on: use it with skd, sxkd, gkd or gxkd, or pass --teacher-cache off")
        in_range(found, "teacher_cache_k", self.teacher_cache_k, 1)
        found += cross_tokenizer_problems(self)
        return found

    @property
    def spec(self) -> Method:
        return METHODS.get(self.method)

    @property
    def divergence_name(self) -> str | None:
        return self.divergence or self.spec.default_divergence

    def run_name(self) -> str:
        return self.name or self.method


def cross_tokenizer_problems(cfg: DistillConfig) -> list[str]:
    """What --cross-tokenizer cannot be combined with, one line each."""
    found: list[str] = []
    choice(found, "cross_tokenizer", cfg.cross_tokenizer, CROSS_TOKENIZER_MODES)
    if cfg.cross_tokenizer in ("off", None) or cfg.method not in METHODS or cfg.cross_tokenizer not in CROSS_TOKENIZER_MODES:
        return found
    flag = f"--cross-tokenizer {cfg.cross_tokenizer}"
    if cfg.spec.loss == "nll":
        found.append(f"{flag} has no effect on {cfg.method}: sequence-level methods read the teacher's samples as "
                     "text, re-encoded for the student, so they work across tokenizers without it; drop it")
    elif cfg.spec.loss == "minillm":
        found.append(f"{flag} does not support minillm, whose sampling mixes the teacher's and the student's "
                     "next-token distributions over one vocabulary: use gkd or gxkd (on-policy too), or a teacher "
                     "with the student's tokenizer")
    if cfg.teacher_cache != "off":
        found.append(f"--teacher-cache {cfg.teacher_cache} stores the teacher's logits at the student's token "
                     f"positions, which {flag} re-tokenises per batch: pass --teacher-cache off")
    if cfg.cross_tokenizer == "uld" and cfg.divergence is not None:
        found.append(f"--divergence {cfg.divergence} has no effect with {flag}, whose distance is ULD's: drop it, "
                     "or use --cross-tokenizer shared (the divergence on the shared vocabulary)")
    return found

