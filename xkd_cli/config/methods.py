"""The method table: each distillation method is a data source composed with an objective, with or without
the experiential term F_ex (docs/method.md, "Baselines" and "The experiential term"), and the method-specific
options each one reads.

Plain data with no torch import, so configs, the pipeline planner and the report can read method names
cheaply; ``xkd_cli.training.methods`` builds the source and the objective an entry names.
"""

from __future__ import annotations

from dataclasses import dataclass

from xkd_cli.core.hparams import BETA_DIVERGENCES, DIVERGENCE_NAMES, REWARD_POSITIONS  # noqa: F401 (re-exported)
from xkd_cli.core.registry import Registry


# The data sources (xkd_cli.training.sources): the dataset's targets, the teacher's samples (gen-teacher),
# Algorithm 1's α-mix of targets and fresh student samples, MiniLLM's teacher-mixed student samples.
SOURCES = ("ground-truth", "teacher-samples", "alpha-mix", "teacher-mixed")
# The objectives (xkd_cli.objectives): a token-level KD loss (NLL of the targets or a divergence to the
# teacher, plus F_ex for the X-variants), and MiniLLM's policy gradient.
OBJECTIVES = ("kd", "minillm")

EXPERIENTIAL_OPTIONS = ("lam", "gamma", "tau", "reward_position")
SAMPLING_OPTIONS = ("temperature", "top_p")
MINILLM_OPTIONS = ("mix", "ppo_epochs", "lm_weight", "whiten")


@dataclass(frozen=True)
class Method:
    name: str
    paper_name: str
    source: str          # one of SOURCES
    objective: str       # one of OBJECTIVES
    loss: str            # "nll" | "divergence" | "minillm": what the objective compares
    experiential: bool
    default_divergence: str | None = None

    @property
    def needs_teacher_model(self) -> bool:
        return self.loss != "nll"

    @property
    def options(self) -> tuple[str, ...]:
        """The method-specific options this method reads (``--beta`` only with a divergence β weights:
        :func:`xkd_cli.config.training.inapplicable_options`)."""
        found: list[str] = []
        if self.source == "teacher-samples":
            found.append("teacher_data")
        if self.source in ("alpha-mix", "teacher-mixed"):
            found += SAMPLING_OPTIONS
        if self.source == "alpha-mix":
            found.append("alpha")
        if self.loss == "divergence":
            found += ("divergence", "beta")
        if self.objective == "minillm":
            found += MINILLM_OPTIONS
        if self.experiential:
            found += EXPERIENTIAL_OPTIONS
        return tuple(found)


METHODS: Registry[Method] = Registry("method")
for _m in (
    Method("seqkd", "SeqKD", "teacher-samples", "kd", "nll", False),
    Method("seqxkd", "SeqXKD", "teacher-samples", "kd", "nll", True),
    Method("skd", "SKD", "ground-truth", "kd", "divergence", False, "fkl"),
    Method("sxkd", "S-XKD", "ground-truth", "kd", "divergence", True, "fkl"),
    Method("gkd", "GKD", "alpha-mix", "kd", "divergence", False, "jsd"),
    Method("gxkd", "G-XKD", "alpha-mix", "kd", "divergence", True, "jsd"),
    Method("minillm", "MiniLLM", "teacher-mixed", "minillm", "minillm", False),
):
    METHODS.register(_m.name, _m)

# Every option some method reads and another does not.
METHOD_OPTIONS = tuple(dict.fromkeys(o for m in METHODS.names() for o in METHODS.get(m).options))


def methods_reading(option: str) -> list[str]:
    """The methods that read ``option`` (for the refusal's "it applies to ...")."""
    return [m for m in METHODS.names() if option in METHODS.get(m).options]
