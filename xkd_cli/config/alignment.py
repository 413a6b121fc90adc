"""The options of ``xkd reward-model`` (RewardModelConfig) and ``xkd align`` (AlignConfig), on top of the options every
training run shares (:class:`~xkd_cli.config.training.TrainingConfig`). docs/method.md, "AVA".

- reward-model: AVA-p on preference pairs, AVA-d on demonstrations, or the Bradley–Terry baseline (bt).
- align: the same AVA-p and AVA-d on the policy itself (no reference model), or the DPO baseline (dpo), with the
  initial policy as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from xkd_cli.config.checks import choice, in_range
from xkd_cli.config.core import option
from xkd_cli.config.defaults import ALIGN_DEFAULTS, REWARD_MODEL_DEFAULTS, TaskDefaults
from xkd_cli.config.fields import MODEL
from xkd_cli.config.training import TrainingConfig, given_text
from xkd_cli.core.hparams import HPARAMS, RESPONSE_REWARDS, hparam_problems
from xkd_cli.core.workspace import slug

# The defaults of the method-specific options, where a method reads them (AVA.md: X-KD's defaults; the reward: μ of
# the last counted position, what F_c compares; DPO: TRL's β).
AVA_DEFAULTS = {"ava_beta": 1.0, "lam": 0.001, "gamma": 1.0, "tau": 1.0, "reward": "last"}
AVA_OPTIONS = tuple(AVA_DEFAULTS)
OPTION_DEFAULTS = {**AVA_DEFAULTS, "dpo_beta": 0.1}
# Each method and the method-specific options it reads: AVA reads the experiential term's λ, γ, τ′ (X-KD's F_ex is
# AVA's per-token term), its own β and which scalar scores a response; Bradley–Terry reads none; DPO its β.
REWARD_MODEL_METHODS = {"ava-p": AVA_OPTIONS, "ava-d": AVA_OPTIONS, "bt": ()}
ALIGN_METHODS = {"ava-p": AVA_OPTIONS, "ava-d": AVA_OPTIONS, "dpo": ("dpo_beta",)}


def _help(key: str, what: str, readers: str = "ava-p and ava-d") -> str:
    return f"{what} (default: {OPTION_DEFAULTS[key]}; {readers} only)."


@dataclass(frozen=True)
class PreferenceTrainingConfig(TrainingConfig):
    """What reward-model and align share: the model, the method and AVA's options. ``METHODS`` maps each method to
    the options it reads; an option a method does not read is refused, one it reads and is not given gets its
    default (:data:`OPTION_DEFAULTS`)."""
    model: str = MODEL.field()
    # None = not given: a method that reads one gets its default; the others refuse them.
    ava_beta: float | None = option(None, _help("ava_beta", "AVA's β, the weight of the likelihood β·Q"))
    lam: float | None = option(None, _help("lam", "Weight λ of log q_φ(δ_t) in the per-token term"))
    gamma: float | None = option(None, _help("gamma", "TD discount γ"))
    tau: float | None = option(None, _help("tau", "τ′ (AVA's α) of the Q from the model's probabilities, Eq. 12"))
    reward: str | None = option(None, _help("reward", "A response's reward: last (μ at its last token, what F_c "
                                                      "compares) or sum (Σ_t μ_t)"))

    METHODS: ClassVar[dict[str, tuple[str, ...]]] = {}
    COMMAND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name in self.METHODS.get(self.method, ()):  # frozen: the defaults are set once, here
            if getattr(self, name) is None:
                object.__setattr__(self, name, OPTION_DEFAULTS[name])
        super().__post_init__()

    def problems(self) -> list[str]:
        found = super().problems()
        if not self.model:
            found.append("--model is required (a built-in name such as tiny-t5-small, a run name, a path or a hub id)")
        choice(found, "method", self.method, tuple(self.METHODS))
        found += inapplicable_method_options(type(self), self.method, self.__dict__).values()
        r = HPARAMS["ava_beta"]
        in_range(found, "ava_beta", self.ava_beta, r.lo, r.hi, lo_open=r.lo_open, hi_open=r.hi_open)
        found += hparam_problems(lam=self.lam, gamma=self.gamma, tau=self.tau)
        choice(found, "reward", self.reward, RESPONSE_REWARDS)
        return found

    def unread_options(self) -> tuple[str, ...]:
        """The method-specific options this run does not read: left out of its config.json."""
        read = self.METHODS.get(self.method, ())
        return tuple(name for name in OPTION_DEFAULTS if hasattr(self, name) and name not in read)

    @property
    def preference(self) -> bool:
        """Whether the method trains on pairs rather than on single responses (ava-d)."""
        return self.method != "ava-d"


def inapplicable_method_options(cls: type[PreferenceTrainingConfig], method: str,
                                values: dict[str, Any]) -> dict[str, str]:
    """The method-specific options set in ``values`` that ``method`` of ``cls``'s command would ignore, each with its
    one-line refusal (``--lam`` with bt)."""
    if method not in cls.METHODS:
        return {}
    read = cls.METHODS[method]
    found = {}
    for name in OPTION_DEFAULTS:
        if values.get(name) is None or name in read:
            continue
        readers = [m for m, reads in cls.METHODS.items() if name in reads]
        found[name] = (f"{given_text(name, values[name])} has no effect on {method}: "
                       f"it applies to {' and '.join(readers)} only; drop it, or use --method {readers[0]}")
    return found


@dataclass(frozen=True)
class RewardModelConfig(PreferenceTrainingConfig):
    method: str = option("ava-p", "ava-p (AVA on preference pairs), ava-d (AVA on demonstrations: the chosen "
                                  "responses of a preference task, or a prompt-completion task's targets) or bt "
                                  "(Bradley–Terry, the baseline).")
    eval_pairs: int | None = option(None, "Held-out pairs whose preference accuracy is measured after training "
                                          "(default: all of the task's eval split).")

    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = REWARD_MODEL_DEFAULTS
    METHODS: ClassVar[dict[str, tuple[str, ...]]] = REWARD_MODEL_METHODS
    COMMAND: ClassVar[str] = "reward-model"

    def problems(self) -> list[str]:
        found = super().problems()
        if self.eval_every:
            found.append(f"--eval-every {self.eval_every} has no effect on reward-model: its preference accuracy is "
                         "measured once, after training; drop it")
        in_range(found, "eval_pairs", self.eval_pairs, 1)
        return found

    def run_name(self) -> str:
        return self.name or f"rm-{self.method}-{slug(self.model)}"


@dataclass(frozen=True)
class AlignConfig(PreferenceTrainingConfig):
    method: str = option("ava-p", "ava-p (AVA on preference pairs, on the policy itself: no reference model), ava-d "
                                  "(AVA on demonstrations: a preference task's chosen responses or a prompt-completion "
                                  "task's targets) or dpo (DPO, the baseline: the initial policy is the reference).")
    dpo_beta: float | None = option(None, _help("dpo_beta", "DPO's β, the strength of the pull towards the "
                                                            "reference (TRL's default)", "dpo"))

    TASK_DEFAULTS: ClassVar[TaskDefaults | None] = ALIGN_DEFAULTS
    METHODS: ClassVar[dict[str, tuple[str, ...]]] = ALIGN_METHODS
    COMMAND: ClassVar[str] = "align"

    def problems(self) -> list[str]:
        found = super().problems()
        r = HPARAMS["dpo_beta"]
        in_range(found, "dpo_beta", self.dpo_beta, r.lo, r.hi, lo_open=r.lo_open, hi_open=r.hi_open)
        return found

    def run_name(self) -> str:
        return self.name or f"align-{self.method}-{slug(self.model)}"
