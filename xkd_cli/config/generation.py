"""The options of ``xkd gen-teacher`` (teacher samples for seqkd / seqxkd), each declared once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from xkd_cli.config.checks import OPENAI_BASE, check, choice, in_range, task_problems, quantization_problems, url_problem
from xkd_cli.config.core import DTYPES, option
from xkd_cli.config.defaults import LENGTH_DEFAULTS, TaskDefaults
from xkd_cli.config.fields import (BATCH_SIZE, CHAT_TEMPLATE, DATA, MAX_INPUT_LEN, METRIC, NAME, TASK, TRAIN_FRACTION,
                                   ApiClient, ModelLoading)


@dataclass(frozen=True)
class GenTeacherConfig(ApiClient, ModelLoading):
    task: str = TASK.field()
    teacher: str | None = option(None, "White-box teacher: run name, path, hub id or built-in model (default: the "
                                       "task's latest `xkd sft --role teacher` run).")
    name: str = NAME.field(default="teacher-samples")
    data: str | None = DATA.field()
    metric: str | None = METRIC.field()
    chat_template: str = CHAT_TEMPLATE.field()
    train_fraction: float = TRAIN_FRACTION.field()
    limit: int | None = option(None, "Keep the first N training prompts (the paper's black-box study: 1000).")
    num_samples: int = option(1, "Teacher responses per prompt (the paper's black-box study: 10).")
    max_input_len: int = MAX_INPUT_LEN.field()
    max_new_tokens: int = option(64, "Maximum response tokens.")
    temperature: float = option(1.0, "Sampling temperature (Table 7).")
    top_p: float = option(0.95, "Nucleus sampling mass (Table 7).")
    batch_size: int = BATCH_SIZE.field()
    api_base: str | None = option(None, f"Black-box teacher: OpenAI-compatible endpoint (default with --api-model: "
                                        f"{OPENAI_BASE}).")
    api_model: str | None = option(None, "Black-box teacher: model name at the endpoint.")

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
        found += [p for p in (url_problem(self.api_base, "--api-base"),) if p] + self.client_problems()
        for name in ("num_samples", "limit", "max_input_len", "max_new_tokens", "batch_size"):
            in_range(found, name, getattr(self, name), 1)
        in_range(found, "train_fraction", self.train_fraction, 0, 1, lo_open=True)
        in_range(found, "temperature", self.temperature, 0)
        in_range(found, "top_p", self.top_p, 0, 1, lo_open=True)
        choice(found, "dtype", self.dtype, DTYPES)
        check(found)
