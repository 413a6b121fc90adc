"""The options of ``xkd reward`` (RewardViewConfig): which model with a reward head, which responses it scores
(the task's first examples, or one prompt and response), and where the views go."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from xkd_cli.config.checks import check, choice, in_range, quantization_problems
from xkd_cli.config.core import DTYPES, option
from xkd_cli.config.defaults import TaskDefaults
from xkd_cli.config.evaluation import SPLITS
from xkd_cli.config.fields import BATCH_SIZE, DATA, SPLIT, TASK, ModelLoading

RUN_HELP = ("An sxkd, gxkd or seqxkd run (an X-KD distillation: its student and reward head) or a reward-model "
            "run: its name under --task, or the path of its directory.")


@dataclass(frozen=True)
class RewardViewConfig(ModelLoading):
    run: str = option("", RUN_HELP, argument=True)
    task: str = option("", TASK.help + " Default: the run's own task (a path), or the only task in the "
                           "workspace.", flags=TASK.flags)
    limit: int = option(3, "Show the first N examples of the evaluation split.")
    prompt: str | None = option(None, "Score a response to this prompt instead of the task's examples (with "
                                      "--response, or --generate).")
    response: str | None = option(None, "The response to --prompt to score.")
    generate: bool = option(False, "Score the model's own greedy answer instead of the reference (or --response).")
    split: str | None = SPLIT.field()
    data: str | None = DATA.field()
    out: str | None = option(None, "Directory for reward.json, reward.html and one PNG per example (default: "
                                   "<run>/reward).", flags=("--out", "-o"))
    table: bool = option(False, "Also print each token's μ, σ, δ and Q as a table.")
    max_input_len: int | None = option(None, "Maximum prompt length in tokens (default: the run's; --prompt is "
                                             "read whole).")
    max_output_len: int | None = option(None, "Maximum response length in tokens, also of a --generate answer "
                                              "(default: the run's; --response is read whole).")
    batch_size: int = BATCH_SIZE.field()

    TASK_FROM_RUNS: ClassVar[bool] = False  # a run given as a path names its own task
    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = None  # lengths default to the run's own

    def __post_init__(self) -> None:
        found: list[str] = quantization_problems(self.load_in_8bit, self.load_in_4bit)
        if not self.run:
            found.append("RUN is required: an sxkd, gxkd, seqxkd or reward-model run, by name (with --task) or as a path")
        if self.response is not None and self.prompt is None:
            found.append("--response needs --prompt: the prompt it answers")
        if self.prompt is not None:
            if not self.prompt.strip():
                found.append("--prompt is empty: give the text the model answers")
            if self.response is None and not self.generate:
                found.append("--prompt needs --response TEXT, or --generate to score the model's own answer")
            if self.response is not None and self.generate:
                found.append("--response and --generate exclude each other: score the given response or the "
                             "model's own")
            if self.data is not None or self.split is not None:
                found.append("--data and --split choose the task's examples; they do not apply with --prompt")
        if self.response is not None and not self.response.strip():
            found.append("--response is empty: give the text to score")
        if self.out is not None and Path(self.out).expanduser().is_file():
            found.append(f"--out {self.out} is a file: pass a directory (it is made if missing)")
        choice(found, "split", self.split, SPLITS)
        choice(found, "dtype", self.dtype, DTYPES)
        for name in ("limit", "batch_size", "max_input_len", "max_output_len"):
            in_range(found, name, getattr(self, name), 1)
        check(found)
