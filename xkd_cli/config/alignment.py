"""The options of ``xkd reward-model`` (RewardModelConfig): a reward model trained on preference pairs or
demonstrations with AVA (AVA-p, AVA-d) or the Bradley–Terry baseline (bt), on top of the options every training
run shares (:class:`~xkd_cli.config.training.TrainingConfig`). docs/method.md, "AVA"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from xkd_cli.config.checks import choice, in_range
from xkd_cli.config.core import option
from xkd_cli.config.defaults import REWARD_MODEL_DEFAULTS, TaskDefaults
from xkd_cli.config.fields import MODEL
from xkd_cli.config.training import TrainingConfig
from xkd_cli.core.hparams import HPARAMS, RESPONSE_REWARDS, hparam_problems
from xkd_cli.core.workspace import slug

# Each reward-model method and the method-specific options it reads: AVA reads the experiential term's λ, γ, τ′
# (X-KD's F_ex is AVA's per-token term), its own β and which scalar scores a response; Bradley–Terry reads none.
REWARD_MODEL_METHODS = {
    "ava-p": ("ava_beta", "lam", "gamma", "tau", "reward"),
    "ava-d": ("ava_beta", "lam", "gamma", "tau", "reward"),
    "bt": (),
}
# The defaults of those options, where a method reads them (AVA.md: X-KD's defaults; the reward: μ of the last
# counted position, what F_c compares).
AVA_DEFAULTS = {"ava_beta": 1.0, "lam": 0.001, "gamma": 1.0, "tau": 1.0, "reward": "last"}
AVA_OPTIONS = tuple(AVA_DEFAULTS)


def _help(key: str, what: str) -> str:
    return f"{what} (default: {AVA_DEFAULTS[key]}; ava-p and ava-d only)."


@dataclass(frozen=True)
class RewardModelConfig(TrainingConfig):
    model: str = MODEL.field()
    method: str = option("ava-p", "ava-p (AVA on preference pairs), ava-d (AVA on demonstrations: the chosen "
                                  "responses of a preference task, or a prompt-completion task's targets) or bt "
                                  "(Bradley–Terry, the baseline).")
    # None = not given: a method that reads one gets its default (AVA_DEFAULTS); bt refuses them.
    ava_beta: float | None = option(None, _help("ava_beta", "AVA's β, the weight of the likelihood β·Q"))
    lam: float | None = option(None, _help("lam", "Weight λ of log q_φ(δ_t) in the per-token term"))
    gamma: float | None = option(None, _help("gamma", "TD discount γ"))
    tau: float | None = option(None, _help("tau", "τ′ (AVA's α) of the Q from the model's probabilities, Eq. 12"))
    reward: str | None = option(None, _help("reward", "A response's reward: last (μ at its last token, what F_c "
                                                      "compares) or sum (Σ_t μ_t)"))
    eval_pairs: int | None = option(None, "Held-out pairs whose preference accuracy is measured after training "
                                          "(default: all of the task's eval split).")

    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = REWARD_MODEL_DEFAULTS

    def __post_init__(self) -> None:
        for name in REWARD_MODEL_METHODS.get(self.method, ()):  # frozen: the defaults are set once, here
            if getattr(self, name) is None:
                object.__setattr__(self, name, AVA_DEFAULTS[name])
        super().__post_init__()

    def problems(self) -> list[str]:
        found = super().problems()
        if not self.model:
            found.append("--model is required (a built-in name such as tiny-t5-small, a run name, a path or a hub id)")
        choice(found, "method", self.method, tuple(REWARD_MODEL_METHODS))
        found += inapplicable_reward_options(self.method, self.__dict__).values()
        if self.eval_every:
            found.append(f"--eval-every {self.eval_every} has no effect on reward-model: its preference accuracy is "
                         "measured once, after training; drop it")
        r = HPARAMS["ava_beta"]
        in_range(found, "ava_beta", self.ava_beta, r.lo, r.hi, lo_open=r.lo_open, hi_open=r.hi_open)
        found += hparam_problems(lam=self.lam, gamma=self.gamma, tau=self.tau)
        choice(found, "reward", self.reward, RESPONSE_REWARDS)
        in_range(found, "eval_pairs", self.eval_pairs, 1)
        return found

    def unread_options(self) -> tuple[str, ...]:
        """The method-specific options this run does not read: left out of its config.json."""
        read = REWARD_MODEL_METHODS.get(self.method, ())
        return tuple(name for name in AVA_OPTIONS if name not in read)

    @property
    def preference(self) -> bool:
        """Whether the method trains on pairs (ava-p, bt) rather than on single responses (ava-d)."""
        return self.method != "ava-d"

    def run_name(self) -> str:
        return self.name or f"rm-{self.method}-{slug(self.model)}"


def inapplicable_reward_options(method: str, values: dict[str, Any]) -> dict[str, str]:
    """The method-specific options set in ``values`` that ``method`` would ignore, each with its one-line
    refusal (``--lam`` with bt)."""
    if method not in REWARD_MODEL_METHODS:
        return {}
    read = REWARD_MODEL_METHODS[method]
    found = {}
    for name in AVA_OPTIONS:
        if values.get(name) is None or name in read:
            continue
        found[name] = (f"--{name.replace('_', '-')} {values[name]} has no effect on {method}: it applies to ava-p "
                       "and ava-d only; drop it, or use --method ava-p")
    return found
