"""The options of the evaluation commands, each declared once: ``xkd eval`` (EvalConfig), ``xkd diversity``
(DiversityConfig) and ``xkd judge`` (JudgeConfig)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xkd_cli.config.checks import (DEFAULT_KEY_ENV, OPENAI_BASE, check, choice, in_range, key_env_problem, task_problems,
                                   quantization_problems, url_problem)
from xkd_cli.config.core import DTYPES, option
from xkd_cli.config.defaults import LENGTH_DEFAULTS, TaskDefaults
from xkd_cli.config.training import (CHAT_TEMPLATE_HELP, DATA_HELP, METRIC_HELP, MODEL_HELP, NAME_HELP, TASK_HELP,
                                     ModelLoading)
from xkd_cli.core.errors import XKDError
from xkd_cli.core.workspace import check_run_name, slug

SPLITS = ("train", "validation", "test")
SPLIT_HELP = "train, validation or test (default: the task's eval split)."
DEFAULT_TEMPERATURES = (0.1, 0.3, 0.5, 1.0)  # the paper's diversity sweep (docs/method.md, "Evaluation")
DEFAULT_JUDGE = "gpt-4"
JUDGE_CACHE_FILE = "judge_cache.sqlite"  # in the runs directory: one cache of answers for every judge run


@dataclass(frozen=True)
class EvalConfig(ModelLoading):
    model: str = option("", MODEL_HELP, flags=("--model", "-m"))
    task: str = option("", TASK_HELP, flags=("--task", "-t"))
    name: str | None = option(None, NAME_HELP)
    data: str | None = option(None, DATA_HELP)
    metric: str | None = option(None, METRIC_HELP)
    chat_template: str = option("auto", CHAT_TEMPLATE_HELP)
    split: str | None = option(None, SPLIT_HELP)
    limit: int | None = option(None, "Evaluate the first N examples only.")
    batch_size: int = option(32, "Batch size.")
    max_input_len: int = option(512, "Maximum prompt length in tokens.")
    max_new_tokens: int = option(64, "Maximum generated tokens.")
    temperature: float = option(0.0, "0 = greedy; > 0 samples.")
    top_p: float = option(1.0, "Nucleus sampling mass.")
    num_samples: int = option(1, "Samples per input (SelfBLEU is reported when > 1).")
    use_stemmer: bool = option(False, "Porter stemming in ROUGE.", flags=("--use-stemmer/--no-stemmer",))

    TASK_FROM_RUNS: ClassVar[bool] = False
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = LENGTH_DEFAULTS

    def __post_init__(self) -> None:
        found: list[str] = quantization_problems(self.load_in_8bit, self.load_in_4bit)
        task_problems(found, self.task, self.data, self.metric, self.chat_template)
        if not self.model:
            found.append("--model is required (a run name, a path, a hub id or a built-in model)")
        choice(found, "split", self.split, SPLITS)
        for name in ("batch_size", "max_input_len", "max_new_tokens", "num_samples", "limit"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "temperature", self.temperature, 0)
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        choice(found, "dtype", self.dtype, DTYPES)
        check(found)


@dataclass(frozen=True)
class DiversityConfig(ModelLoading):
    models: tuple[str, ...] = option((), "A model to compare; repeat for several. Run name, local path, Hugging Face "
                                         "id or built-in tiny model.", flags=("--model", "-m"), cli_type=list[str])
    task: str = option("", TASK_HELP, flags=("--task", "-t"))
    name: str = option("diversity", "Summary run name (a directory under <runs-dir>/<task>/).")
    data: str | None = option(None, DATA_HELP)
    chat_template: str = option("auto", CHAT_TEMPLATE_HELP)
    temperatures: tuple[float, ...] = option(DEFAULT_TEMPERATURES, "Sampling temperatures, comma-separated, each > 0 "
                                                                    "(the default is the paper's sweep).", cli_type=str)
    num_samples: int = option(4, "Samples per input, at least 2.")
    top_p: float = option(1.0, "Nucleus sampling mass.")
    split: str | None = option(None, SPLIT_HELP)
    limit: int | None = option(None, "Use the first N evaluation inputs only.")
    batch_size: int = option(32, "Batch size.")
    max_input_len: int = option(512, "Maximum prompt length in tokens.")
    max_new_tokens: int = option(64, "Maximum generated tokens.")

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
class JudgeConfig:
    a: str = option("", "Run whose win rate is reported (e.g. seqxkd); evaluated first if it has no greedy "
                        "predictions.", flags=("--a",))
    b: str = option("", "Run it is compared with (e.g. seqkd).", flags=("--b",))
    task: str = option("", TASK_HELP, flags=("--task", "-t"))
    name: str | None = option(None, "Results run name (default: judge-<a>-vs-<b>).")
    data: str | None = option(None, DATA_HELP + " Used only when a run has to be evaluated first.")
    split: str | None = option(None, SPLIT_HELP)
    limit: int | None = option(None, "Judge the first N inputs both runs answered.")
    judge_model: str = option(DEFAULT_JUDGE, "Judge model at the endpoint.", flags=("--judge-model", "--api-model"))
    base_url: str | None = option(None, f"OpenAI-compatible endpoint (default: {OPENAI_BASE}).",
                                  flags=("--base-url", "--api-base"))
    api_key_env: str = option(DEFAULT_KEY_ENV, "Environment variable holding the API key.")
    template: str | None = option(None, "Judge prompt template file (default: the built-in one of the task's family).")
    temperature: float = option(0.0, "Judge sampling temperature.")
    max_tokens: int = option(256, "Maximum tokens of a judge reply.")
    parse_retries: int = option(2, "Re-asks after a reply without exactly one verdict marker.")
    concurrency: int = option(8, "Parallel API requests.")
    max_retries: int = option(6, "Retries of a request on 429 / 5xx / timeout.")
    timeout: float = option(60.0, "Seconds to wait for one API answer.")

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
        found += [p for p in (key_env_problem(self.api_key_env), url_problem(self.base_url, "--base-url")) if p]
        for name in ("limit", "max_tokens", "concurrency"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "parse_retries", self.parse_retries, 0)
        in_range(found, "max_retries", self.max_retries, 0)
        in_range(found, "timeout", self.timeout, 0, lo_open=True)
        in_range(found, "temperature", self.temperature, 0)
        check(found)

    @property
    def results_name(self) -> str:
        return self.name or f"judge-{slug(self.a)}-vs-{slug(self.b)}"
