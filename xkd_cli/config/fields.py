"""Options that several job configs share, each declared once: single options (:class:`Shared`, such as
``--task``) and two groups that configs take as bases, :class:`ModelLoading` (how a command loads its model) and
:class:`ApiClient` (how it calls an OpenAI-compatible endpoint).

A config's ``--help`` lists its own options first, then each base's, nearest base first (``cli.options``), so a
group sits together at the end of every command that has it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xkd_cli.config.checks import DEFAULT_KEY_ENV, in_range, key_env_problem
from xkd_cli.config.core import option

TASK_HELP = ("Task: xsum, wmt, gsm8k, synth-sum, synth-mt, synth-gsm, synth-sum-pref (preference pairs), or a task "
             "file (.yaml) of your own data.")
METRIC_HELP = ("Metric when --data is a bare prompt-completion/messages/preference file and --task is left out: "
               "rouge, bleu, chrf, exact, number, none.")
CHAT_TEMPLATE_HELP = ("Prompt format of decoder-only models: auto (the tokenizer's chat template when it has one), "
                      "none (the raw prompt), or a .jinja template file. T5 never uses one.")
NAME_HELP = "Run name (a directory under <runs-dir>/<task>/)."
DATA_HELP = "Local data file or directory in the task's Hugging Face schema (JSONL/JSON/CSV/Parquet)."
MODEL_HELP = "Run name, local path, Hugging Face id (t5-small … t5-xl aliases) or built-in tiny model."
SPLIT_HELP = "train, validation or test (default: the task's eval split)."
LOAD_8BIT_HELP = "Load the model quantized to 8 bits (bitsandbytes)"
LOAD_4BIT_HELP = "Load the model quantized to 4 bits (bitsandbytes NF4)"


@dataclass(frozen=True)
class Shared:
    """One option that several configs declare alike: each config's field is ``NAME.field()`` (``default=``
    where one command's default differs; the help stays the same)."""
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    cli_type: Any = None

    def field(self, *, default: Any = None) -> Any:
        return option(self.default if default is None else default, self.help, flags=self.flags,
                      cli_type=self.cli_type)


TASK = Shared("", TASK_HELP, flags=("--task", "-t"))
MODEL = Shared("", MODEL_HELP, flags=("--model", "-m"))
NAME = Shared(None, NAME_HELP)
DATA = Shared(None, DATA_HELP)
METRIC = Shared(None, METRIC_HELP)
CHAT_TEMPLATE = Shared("auto", CHAT_TEMPLATE_HELP)
SPLIT = Shared(None, SPLIT_HELP)
TRAIN_FRACTION = Shared(1.0, "Keep the first fraction of the training set.")
MAX_INPUT_LEN = Shared(512, "Maximum prompt length in tokens.")
# The decoding options of the commands that generate to score (eval, diversity; gen-teacher says its own).
BATCH_SIZE = Shared(32, "Batch size.")
MAX_NEW_TOKENS = Shared(64, "Maximum generated tokens.")
TOP_P = Shared(1.0, "Nucleus sampling mass.")
REWARD_MODEL = Shared(None, "A reward model: an `xkd reward-model` run's name (looked up under --task, then under "
                            "every task) or its directory.")


@dataclass(frozen=True)
class ModelLoading:
    """How a command loads its model: the base of every config that runs one (training, eval, diversity,
    gen-teacher). Training says more about --load-in-* (its own fields of the same names)."""
    seed: int = option(42, "Random seed.")
    dtype: str = option("float32", "Model dtype: float32, bfloat16, float16, auto.")
    device: str = option("auto", "auto, cpu, cuda or cuda:N.")
    load_in_8bit: bool = option(False, LOAD_8BIT_HELP + ".")
    load_in_4bit: bool = option(False, LOAD_4BIT_HELP + ".")
    trust_remote_code: bool = option(False, "Run Python code shipped with a model (auto_map) to load it. Off by "
                                            "default: review that code first.")


@dataclass(frozen=True)
class ApiClient:
    """How a command calls an OpenAI-compatible endpoint (gen-teacher's black-box teacher, the judge); the
    endpoint and model options are each command's own."""
    api_key_env: str = option(DEFAULT_KEY_ENV, "Environment variable holding the API key.")
    concurrency: int = option(8, "Parallel API requests.")
    max_retries: int = option(6, "Retries of a request on 429 / 5xx / timeout.")
    timeout: float = option(60.0, "Seconds to wait for one API answer.")

    def client_problems(self) -> list[str]:
        found = [p for p in (key_env_problem(self.api_key_env),) if p]
        in_range(found, "concurrency", self.concurrency, 1)
        in_range(found, "max_retries", self.max_retries, 0)
        in_range(found, "timeout", self.timeout, 0, lo_open=True)
        return found
