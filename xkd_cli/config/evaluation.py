"""The options of the evaluation commands, each declared once: ``xkd eval`` (EvalConfig), ``xkd diversity``
(DiversityConfig) and ``xkd judge`` (JudgeConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xkd_cli.config.checks import OPENAI_BASE, check, choice, in_range, task_problems, quantization_problems, url_problem
from xkd_cli.config.core import DTYPES, option
from xkd_cli.config.defaults import LENGTH_DEFAULTS, TaskDefaults
from xkd_cli.config.fields import (BATCH_SIZE, CHAT_TEMPLATE, DATA, DATA_HELP, MAX_INPUT_LEN, MAX_NEW_TOKENS, METRIC,
                                   MODEL, NAME, REWARD_MODEL, SPLIT, TASK, TOP_P, ApiClient, ModelLoading)
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import check_run_name, slug

SPLITS = ("train", "validation", "test")
DEFAULT_TEMPERATURES = (0.1, 0.3, 0.5, 1.0)  # the paper's diversity sweep (docs/method.md, "Evaluation")
DEFAULT_JUDGE = "gpt-4"
JUDGE_CACHE_FILE = "judge_cache.sqlite"  # in the runs directory: one cache of answers for every judge run


@dataclass(frozen=True)
class EvalConfig(ModelLoading):
    model: str = MODEL.field()
    task: str = TASK.field()
    name: str | None = NAME.field()
    data: str | None = DATA.field()
    metric: str | None = METRIC.field()
    chat_template: str = CHAT_TEMPLATE.field()
    split: str | None = SPLIT.field()
    limit: int | None = option(None, "Evaluate the first N examples only.")
    batch_size: int = BATCH_SIZE.field()
    max_input_len: int = MAX_INPUT_LEN.field()
    max_new_tokens: int = MAX_NEW_TOKENS.field()
    temperature: float = option(0.0, "0 = greedy; > 0 samples.")
    top_p: float = TOP_P.field()
    num_samples: int = option(1, "Samples per input (SelfBLEU is reported when > 1).")
    use_stemmer: bool = option(False, "Porter stemming in ROUGE.", flags=("--use-stemmer/--no-stemmer",))
    reward_model: str | None = option(None, REWARD_MODEL.help + " Also report the mean score it gives the "
                                            "predictions, with a 95% interval.")

    TASK_FROM_RUNS: ClassVar[bool] = False
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = LENGTH_DEFAULTS

    def __post_init__(self) -> None:
        found: list[str] = quantization_problems(self.load_in_8bit, self.load_in_4bit)
        task_problems(found, self.task, self.data, self.metric, self.chat_template)
        if not self.model:
            found.append("--model is required (a run name, a path, a hub id or a built-in model)")
        if self.reward_model is not None and not self.reward_model.strip():
            found.append("--reward-model is empty: pass a reward-model run's name or directory")
        choice(found, "split", self.split, SPLITS)
        for name in ("batch_size", "max_input_len", "max_new_tokens", "num_samples", "limit"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "temperature", self.temperature, 0)
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        choice(found, "dtype", self.dtype, DTYPES)
        check(found)


@dataclass(frozen=True)
class BestOfNConfig(ModelLoading):
    model: str = option("", "The policy that samples the responses: " + MODEL.help[0].lower() + MODEL.help[1:],
                        flags=MODEL.flags)
    reward_model: str = REWARD_MODEL.field(default="")
    n: int = option(4, "Responses sampled per prompt; the reward model's favourite is kept.", flags=("--n", "-n"))
    task: str = TASK.field()
    name: str | None = option(None, NAME.help.rstrip(".") + " (default: bon<N>-<model>-<reward model>).")
    data: str | None = DATA.field()
    metric: str | None = METRIC.field()
    chat_template: str = CHAT_TEMPLATE.field()
    split: str | None = SPLIT.field()
    limit: int | None = option(None, "Use the first N prompts of the split only.")
    batch_size: int = BATCH_SIZE.field()
    max_input_len: int = MAX_INPUT_LEN.field()
    max_new_tokens: int = MAX_NEW_TOKENS.field()
    temperature: float = option(1.0, "Sampling temperature, > 0 when --n > 1 (N greedy answers are one answer).")
    top_p: float = TOP_P.field()

    TASK_FROM_RUNS: ClassVar[bool] = False
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = LENGTH_DEFAULTS

    def __post_init__(self) -> None:
        found: list[str] = quantization_problems(self.load_in_8bit, self.load_in_4bit)
        task_problems(found, self.task, self.data, self.metric, self.chat_template)
        if not self.model:
            found.append("--model is required: the policy that samples (a run name, a path, a hub id or a built-in "
                         "model)")
        if not self.reward_model or not self.reward_model.strip():
            found.append("--reward-model is required: an `xkd reward-model` run's name or directory")
        if self.n < 1:
            found.append(f"--n must be at least 1, got {self.n}: the number of responses sampled per prompt")
        elif self.n > 1 and self.temperature == 0:
            found.append(f"--temperature 0 is greedy: all {self.n} samples would be the same answer; pass "
                         "--temperature > 0 (e.g. 1.0), or --n 1")
        choice(found, "split", self.split, SPLITS)
        for name in ("batch_size", "max_input_len", "max_new_tokens", "limit"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "temperature", self.temperature, 0)
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        choice(found, "dtype", self.dtype, DTYPES)
        if self.name is not None:
            try:
                check_run_name(self.name)
            except XKDError as exc:
                found.append(f"--name: {str(exc).rstrip('.')}")
        check(found)

    def run_name(self, reward_model: str) -> str:
        """``--name``, else bon<N>-<policy>-<reward model> (the reward model's run name)."""
        return self.name or f"bon{self.n}-{slug(self.model)}-{slug(reward_model)}"


@dataclass(frozen=True)
class DiversityConfig(ModelLoading):
    models: tuple[str, ...] = option((), "A model to compare; repeat for several. Run name, local path, Hugging Face "
                                         "id or built-in tiny model.", flags=("--model", "-m"), cli_type=list[str])
    task: str = TASK.field()
    name: str = option("diversity", "Summary run name (a directory under <runs-dir>/<task>/).")
    data: str | None = DATA.field()
    chat_template: str = CHAT_TEMPLATE.field()
    temperatures: tuple[float, ...] = option(DEFAULT_TEMPERATURES, "Sampling temperatures, comma-separated, each > 0 "
                                                                    "(the default is the paper's sweep).", cli_type=str)
    num_samples: int = option(4, "Samples per input, at least 2.")
    top_p: float = TOP_P.field()
    split: str | None = SPLIT.field()
    limit: int | None = option(None, "Use the first N evaluation inputs only.")
    batch_size: int = BATCH_SIZE.field()
    max_input_len: int = MAX_INPUT_LEN.field()
    max_new_tokens: int = MAX_NEW_TOKENS.field()

    TASK_FROM_RUNS: ClassVar[bool] = True
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = LENGTH_DEFAULTS

    def __post_init__(self) -> None:
        found: list[str] = []
        if not self.task:
            found.append("--task is required")
        if not self.models:
            found.append("--model is required: give it once per model to compare (run name, path, hub id or "
                         "built-in model)")
        repeated = sorted({m for m in self.models if self.models.count(m) > 1})
        if repeated:
            found.append(f"--model {repeated[0]} is given twice: name each model once")
        if self.num_samples < 2:
            found.append(f"--num-samples must be at least 2, got {self.num_samples}: SelfBLEU scores each sample "
                         "against the other samples of the same input")
        if not self.temperatures:
            found.append("--temperatures needs at least one temperature, e.g. 0.1,0.3,0.5,1.0")
        bad = [t for t in self.temperatures if not t > 0]
        if bad:
            found.append(f"--temperatures must all be > 0 (0 is greedy decoding, which has no diversity), "
                         f"got {bad[0]:g}")
        if len(set(self.temperatures)) != len(self.temperatures):
            found.append(f"--temperatures lists a temperature twice: {','.join(f'{t:g}' for t in self.temperatures)}")
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        for key in ("limit", "batch_size", "max_input_len", "max_new_tokens"):
            in_range(found, key, getattr(self, key), 1)
        choice(found, "dtype", self.dtype, DTYPES)
        try:
            check_run_name(self.name)
        except XKDError as exc:
            found.append(f"--name: {str(exc).rstrip('.')}")
        if not found:  # the evaluation's own checks (split, …), once, with a valid model and temperature
            try:
                self.eval_config(self.models[0], self.temperatures[0])
            except XKDError as exc:
                found.append(str(exc).rstrip("."))
        check(found)

    def eval_config(self, model: str, temperature: float) -> EvalConfig:
        """The evaluation of one (model, temperature) point: where its results live is run_eval's choice."""
        return EvalConfig(task=self.task, model=model, data=self.data, split=self.split, limit=self.limit,
                          batch_size=self.batch_size, max_input_len=self.max_input_len,
                          max_new_tokens=self.max_new_tokens, temperature=temperature, top_p=self.top_p,
                          num_samples=self.num_samples, seed=self.seed, dtype=self.dtype, device=self.device,
                          load_in_8bit=self.load_in_8bit, load_in_4bit=self.load_in_4bit,
                          trust_remote_code=self.trust_remote_code, chat_template=self.chat_template)


@dataclass(frozen=True)
class JudgeConfig(ApiClient):
    a: str = option("", "Run whose win rate is reported (e.g. seqxkd); evaluated first if it has no greedy "
                        "predictions.", flags=("--a",))
    b: str = option("", "Run it is compared with (e.g. seqkd).", flags=("--b",))
    task: str = TASK.field()
    name: str | None = option(None, "Results run name (default: judge-<a>-vs-<b>).")
    data: str | None = option(None, DATA_HELP + " Used only when a run has to be evaluated first.")
    split: str | None = SPLIT.field()
    limit: int | None = option(None, "Judge the first N inputs both runs answered.")
    judge_model: str = option(DEFAULT_JUDGE, "Judge model at the endpoint.", flags=("--judge-model", "--api-model"))
    base_url: str | None = option(None, f"OpenAI-compatible endpoint (default: {OPENAI_BASE}).",
                                  flags=("--base-url", "--api-base"))
    template: str | None = option(None, "Judge prompt template file (default: the built-in one of the task's family).")
    temperature: float = option(0.0, "Judge sampling temperature.")
    max_tokens: int = option(256, "Maximum tokens of a judge reply.")
    parse_retries: int = option(2, "Re-asks after a reply without exactly one verdict marker.")

    TASK_FROM_RUNS: ClassVar[bool] = True
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = None

    def __post_init__(self) -> None:
        found: list[str] = []
        if not self.task:
            found.append("--task is required")
        if not self.a or not self.b:
            found.append("--a and --b are required: the two runs to compare (e.g. --a seqxkd --b seqkd)")
        elif self.a == self.b:
            found.append(f"--a and --b both name {self.a!r}: pass two different runs")
        if not self.judge_model:
            found.append("--judge-model must not be empty (e.g. gpt-4, or the model a vLLM/Ollama server serves)")
        choice(found, "split", self.split, SPLITS)
        found += [p for p in (url_problem(self.base_url, "--base-url"),) if p] + self.client_problems()
        for name in ("limit", "max_tokens"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "parse_retries", self.parse_retries, 0)
        in_range(found, "temperature", self.temperature, 0)
        check(found)

    @property
    def results_name(self) -> str:
        return self.name or f"judge-{slug(self.a)}-vs-{slug(self.b)}"
