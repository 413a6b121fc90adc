"""The options of ``xkd gen-teacher`` (teacher samples for seqkd / seqxkd), each declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xkd_cli.config.checks import (DEFAULT_KEY_ENV, OPENAI_BASE, check, choice, in_range, key_env_problem, task_problems,
                                   quantization_problems, url_problem)
from xkd_cli.config.core import DTYPES, option
from xkd_cli.config.defaults import LENGTH_DEFAULTS, TaskDefaults
from xkd_cli.config.training import (CHAT_TEMPLATE_HELP, DATA_HELP, METRIC_HELP, NAME_HELP, TASK_HELP,
                                     ModelLoading)


@dataclass(frozen=True)
class GenTeacherConfig(ModelLoading):
    task: str = option("", TASK_HELP, flags=("--task", "-t"))
    teacher: str | None = option(None, "White-box teacher: run name, path, hub id or built-in model (default: the "
                                       "task's latest `xkd sft --role teacher` run).")
    name: str = option("teacher-samples", NAME_HELP)
    data: str | None = option(None, DATA_HELP)
    metric: str | None = option(None, METRIC_HELP)
    chat_template: str = option("auto", CHAT_TEMPLATE_HELP)
    train_fraction: float = option(1.0, "Keep the first fraction of the training set.")
    limit: int | None = option(None, "Keep the first N training prompts (the paper's black-box study: 1000).")
    num_samples: int = option(1, "Teacher responses per prompt (the paper's black-box study: 10).")
    max_input_len: int = option(512, "Maximum prompt length in tokens.")
    max_new_tokens: int = option(64, "Maximum response tokens.")
    temperature: float = option(1.0, "Sampling temperature (Table 7).")
    top_p: float = option(0.95, "Nucleus sampling mass (Table 7).")
    batch_size: int = option(32, "Batch size.")
    api_base: str | None = option(None, f"Black-box teacher: OpenAI-compatible endpoint (default with --api-model: "
                                        f"{OPENAI_BASE}).")
    api_model: str | None = option(None, "Black-box teacher: model name at the endpoint.")
    api_key_env: str = option(DEFAULT_KEY_ENV, "Environment variable holding the API key.")
    concurrency: int = option(8, "Parallel API requests.")
    max_retries: int = option(6, "Retries of a request on 429 / 5xx / timeout.")
    timeout: float = option(60.0, "Seconds to wait for one API answer.")

    TASK_FROM_RUNS: ClassVar[bool] = False
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = LENGTH_DEFAULTS

    @property
    def black_box(self) -> bool:
        return self.api_base is not None or self.api_model is not None

    def __post_init__(self) -> None:
        found: list[str] = quantization_problems(self.load_in_8bit, self.load_in_4bit)
        task_problems(found, self.task, self.data, self.metric, self.chat_template)
        if self.black_box:
            if not self.api_model:
                found.append("--api-model is required with --api-base (the model name the endpoint serves)")
            if self.teacher:
                found.append("--teacher (a local model) and --api-base/--api-model (an API teacher) exclude each other")
        found += [p for p in (key_env_problem(self.api_key_env), url_problem(self.api_base, "--api-base")) if p]
        for name in ("num_samples", "limit", "max_input_len", "max_new_tokens", "batch_size", "concurrency"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "max_retries", self.max_retries, 0)
        in_range(found, "timeout", self.timeout, 0, lo_open=True)
        in_range(found, "train_fraction", self.train_fraction, 0, 1, lo_open=True)
        in_range(found, "temperature", self.temperature, 0)
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        choice(found, "dtype", self.dtype, DTYPES)
        check(found)
