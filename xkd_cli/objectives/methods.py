"""The method table: each distillation method is a data source composed with a loss, with or without
the experiential term F_ex (docs/method.md, "Baselines" and "The experiential term").

Plain data with no torch import, so configs, the pipeline planner and the report can read method names cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

from xkd_cli.core.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    paper_name: str
    data: str            # "teacher-samples" | "ground-truth" | "mixed" | "student-mixed"
    loss: str            # "nll" | "divergence" | "minillm"
    experiential: bool
    default_divergence: str | None = None

    @property
    def needs_teacher_model(self) -> bool:
        return self.loss != "nll"


METHODS: Registry[Method] = Registry("method")
for _m in (
    Method("seqkd", "SeqKD", "teacher-samples", "nll", False),
    Method("seqxkd", "SeqXKD", "teacher-samples", "nll", True),
    Method("skd", "SKD", "ground-truth", "divergence", False, "fkl"),
    Method("sxkd", "S-XKD", "ground-truth", "divergence", True, "fkl"),
    Method("gkd", "GKD", "mixed", "divergence", False, "jsd"),
    Method("gxkd", "G-XKD", "mixed", "divergence", True, "jsd"),
    Method("minillm", "MiniLLM", "student-mixed", "minillm", False),
):
    METHODS.register(_m.name, _m)

# Names only, for validating options without importing torch; the functions behind them live in
# objectives/divergences.py (DIVERGENCES) and objectives/reward.py (the reward head).
DIVERGENCE_NAMES = ("jsd", "fkl", "rkl", "mix", "tvd")
REWARD_POSITIONS = ("current", "next")
