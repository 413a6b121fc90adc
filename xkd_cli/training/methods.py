"""A method's table entry (``xkd_cli.config.methods``) made real: the one place the distillation config's
hyperparameters become the small frozen objects the objectives read, and the data source and objective an
entry names are built.

Adding a method is one table entry; a new source or objective adds one builder here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from xkd_cli.config.training import DistillConfig
from xkd_cli.models.generate import Sampling
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.objectives.cross_tokenizer import CrossTokenizerObjective
from xkd_cli.objectives.divergences import DivergenceParams
from xkd_cli.objectives.experiential import ExperientialParams
from xkd_cli.objectives.minillm import MiniLLMParams
from xkd_cli.objectives.steps import KDObjective, MiniLLMObjective, Objective
from xkd_cli.objectives.teacher_cache import TeacherCache
from xkd_cli.training.sources import AlphaMix, EncodedSet, Source, StudentSampler, TeacherMixed, Targets


def experiential_params(cfg: DistillConfig) -> ExperientialParams | None:
    if not cfg.spec.experiential:
        return None
    return ExperientialParams(lam=cfg.lam, gamma=cfg.gamma, tau=cfg.tau, reward_position=cfg.reward_position)


def divergence_params(cfg: DistillConfig) -> DivergenceParams | None:
    """The divergence the loss compares with (None: the NLL of the targets, or ULD's distance)."""
    if cfg.spec.loss != "divergence" or cfg.cross_tokenizer == "uld":
        return None
    return DivergenceParams(cfg.divergence_name, **({"beta": cfg.beta} if cfg.beta is not None else {}))


def sampling(cfg: DistillConfig) -> Sampling:
    return Sampling(max_new_tokens=cfg.max_output_len, temperature=cfg.temperature, top_p=cfg.top_p)


@dataclass
class Setup:
    """What the builders read: the config, the loaded models and the encoded training set."""

    cfg: DistillConfig
    student: LoadedModel
    teacher: LoadedModel | None
    data: EncodedSet
    vocab_size: int
    cache: TeacherCache | None = None
    cross_tokenizer: dict | None = None  # CrossTokenizerObjective's alignment arguments, with --cross-tokenizer


def _alpha_mix(s: Setup) -> Source:
    sampler = StudentSampler(s.student, s.data, sampling(s.cfg), s.vocab_size)
    return AlphaMix(Targets(s.data, s.cfg.batch_size), sampler, s.cfg.alpha, s.cfg.seed)


def _teacher_mixed(s: Setup) -> Source:
    sampler = StudentSampler(s.student, s.data, sampling(s.cfg), s.vocab_size)
    return TeacherMixed(sampler, s.teacher, s.cfg.batch_size, s.cfg.mix, ppo_epochs=s.cfg.ppo_epochs,
                        per_step=s.cfg.grad_accum)


SOURCES: dict[str, Callable[[Setup], Source]] = {
    "ground-truth": lambda s: Targets(s.data, s.cfg.batch_size),
    "teacher-samples": lambda s: Targets(s.data, s.cfg.batch_size),  # the data set is the teacher's samples
    "alpha-mix": _alpha_mix,
    "teacher-mixed": _teacher_mixed,
}


def _kd(s: Setup) -> Objective:
    common = dict(vocab_size=s.vocab_size, divergence=divergence_params(s.cfg), experiential=experiential_params(s.cfg),
                  fused_head=s.cfg.fused_head)
    if s.cross_tokenizer is not None:
        return CrossTokenizerObjective(s.student, s.teacher, method=s.cfg.cross_tokenizer, **common, **s.cross_tokenizer)
    return KDObjective(s.student, s.teacher, cache=s.cache, **common)


OBJECTIVES: dict[str, Callable[[Setup], Objective]] = {
    "kd": _kd,
    "minillm": lambda s: MiniLLMObjective(s.student, s.teacher, vocab_size=s.vocab_size,
                                          params=MiniLLMParams(mix=s.cfg.mix, whiten=s.cfg.whiten,
                                                               lm_weight=s.cfg.lm_weight),
                                          fused_head=s.cfg.fused_head),
}


def build(setup: Setup) -> tuple[Source, Objective]:
    """The data source and the objective the config's method names."""
    method = setup.cfg.spec
    return SOURCES[method.source](setup), OBJECTIVES[method.objective](setup)
