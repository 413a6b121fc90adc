"""A reward model's score of whole responses: what ``xkd eval --reward-model``, ``xkd best-of-n`` and the report's
alignment table read (docs/method.md, "AVA", "Best-of-N").

A reward model is a run of ``xkd reward-model`` (AVA-p, AVA-d or Bradley–Terry): its ``model/`` and its
``reward_head.safetensors``, found without torch by
:func:`~xkd_cli.evaluation.reward_runs.locate_reward_model`. A response's score is the scalar that run was trained
and measured with (:func:`~xkd_cli.objectives.ava.response_reward`): the head's mean μ at the response's last token
(``reward: last``, AVA's default and always Bradley–Terry's), or Σ_t μ_t (an AVA run trained with ``--reward sum``).

The text is encoded afresh with the reward model's own tokenizer and prompt format (its run's ``--chat-template``,
its task's prompt truncation, its run's ``--max-input-len`` and ``--max-output-len``), so a policy and a reward model
need not share a tokenizer. The response is scored as a finished answer (its end token appended, as in training);
one longer than the reward model's ``max_output_len`` tokens is scored on its first ``max_output_len``.

Use::

    rm = load_reward_model(locate_reward_model("rm-ava-p", task="synth-sum-pref", runs_root=root), runs_root=root)
    scores = rm.score(prompts, responses)        # one float per (prompt, response); prompts: texts or Examples

or, once: ``reward_model_scores("rm-ava-p", prompts, responses, runs_root=root)``. :func:`mean_interval` gives the
95% bootstrap interval of a mean score over examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import RESPONSE_REWARDS
from xkd_cli.data.taskfile import get_task
from xkd_cli.data.tasks import Example
from xkd_cli.evaluation.reward_runs import ScorerFiles, locate_reward_model
from xkd_cli.evaluation.reward_view import Scorer, load_scorer, score_tokens
from xkd_cli.models.chat import encode_example_prompts, encode_example_targets

LEVEL = 0.95
REPLICATES = 2000
DEFAULT_LENGTHS = (512, 64)  # max_input_len, max_output_len where a run's config records none


@dataclass
class RewardModel:
    """A loaded reward model and how it reads a response: ``how`` (last or sum) and the lengths it was trained on."""
    scorer: Scorer
    how: str
    max_input_len: int
    max_output_len: int
    keep_end: bool  # its task truncates long prompts from the left (keeps their end)

    @property
    def files(self) -> ScorerFiles:
        return self.scorer.files

    def score(self, prompts: Sequence[str | Example], responses: Sequence[str], *, batch_size: int = 32
              ) -> list[float]:
        """The reward of each ``responses[i]`` as the answer to ``prompts[i]`` (a prompt text, or a task's
        :class:`~xkd_cli.data.tasks.Example`, whose chat turns a chat reward model then sees)."""
        if len(prompts) != len(responses):
            raise ValueError(f"one prompt per response: {len(prompts)} prompts, {len(responses)} responses")
        if not responses:
            return []
        examples = [p if isinstance(p, Example) else Example(id=str(i), prompt=p, reference="", source=p)
                    for i, p in enumerate(prompts)]
        loaded = self.scorer.loaded
        prompt_ids = encode_example_prompts(loaded, examples, max_len=self.max_input_len, keep_end=self.keep_end)
        target_ids = encode_example_targets(loaded, list(responses), max_len=self.max_output_len)
        values = score_tokens(self.scorer, prompt_ids, target_ids, batch_size=batch_size)
        return [v[f"reward_{self.how}"] for v in values]

    def describe(self) -> dict[str, Any]:
        """Which reward model, for a result's JSON: run, task, path, method and the reward it reads."""
        files = self.files
        return {"run": files.name, "task": files.task, "path": str(files.path), "method": files.method,
                "reward": self.how}


def response_reward_of(files: ScorerFiles) -> str:
    """Which scalar the run scores a response with: its config's ``reward`` (AVA), else ``last`` (Bradley–Terry)."""
    how = files.config.get("reward") or "last"
    if how not in RESPONSE_REWARDS:
        raise XKDError(f"reward model {files.name} ({files.path}) records reward {how!r}; expected one of "
                       f"{', '.join(RESPONSE_REWARDS)}: re-train it")
    return how


def _keeps_prompt_end(files: ScorerFiles) -> bool:
    spec = files.config.get("task") or files.task
    try:
        return bool(spec) and get_task(spec).keep_prompt_end
    except XKDError:  # a task file that moved: truncate from the right, as most tasks do
        return False


def load_reward_model(files: ScorerFiles, *, runs_root: Path, dtype: str = "float32", device: str = "auto",
                      quantization: str | None = None, trust_remote_code: bool = False) -> RewardModel:
    """The reward model ``files`` names (:func:`~xkd_cli.evaluation.reward_runs.locate_reward_model`), loaded for
    scoring (eval mode, one device)."""
    config = files.config
    lengths = (config.get("max_input_len") or DEFAULT_LENGTHS[0], config.get("max_output_len") or DEFAULT_LENGTHS[1])
    scorer = load_scorer(files, runs_root=runs_root, dtype=dtype, device=device, quantization=quantization,
                         trust_remote_code=trust_remote_code)
    return RewardModel(scorer, response_reward_of(files), int(lengths[0]), int(lengths[1]), _keeps_prompt_end(files))


def reward_model_scores(reward_model: str, prompts: Sequence[str | Example], responses: Sequence[str], *,
                        runs_root: Path, task: str | None = None, batch_size: int = 32, device: str = "auto"
                        ) -> list[float]:
    """Load the reward-model run ``reward_model`` (a name, looked up under ``task`` then every task, or a run
    directory) and score each (prompt, response): one float each, as :meth:`RewardModel.score`."""
    files = locate_reward_model(reward_model, task=task, runs_root=runs_root)
    return load_reward_model(files, runs_root=runs_root, device=device).score(prompts, responses,
                                                                              batch_size=batch_size)


def mean_interval(values: Sequence[float], *, level: float = LEVEL, replicates: int = REPLICATES,
                  seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of ``values`` (examples drawn with replacement
    ``replicates`` times; deterministic for a given ``seed``): the interval the report's paired bootstrap gives a
    difference (:mod:`xkd_cli.experiments.report.stats`), for one mean. One value: that value twice."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("mean_interval needs a non-empty list of numbers")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (replicates, x.size))].mean(1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def score_summary(values: Sequence[float]) -> dict[str, Any]:
    """``mean``, its 95% interval ``low``..``high`` (:func:`mean_interval`) and the number of values ``n``."""
    low, high = mean_interval(values)
    return {"mean": float(np.mean(values)), "low": low, "high": high, "n": len(values), "level": LEVEL}
