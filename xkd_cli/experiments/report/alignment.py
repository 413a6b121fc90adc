"""The report's two AVA tables (docs/method.md, "AVA"):

- **Reward models**: each reward-model method's preference accuracy on the held-out pairs (``run.json``'s
  ``final_eval``, written by ``xkd reward-model``): mean ± sd over seeds, and the pooled accuracy over every seed's
  pairs with its 95% Wilson interval, overall and per damage kind.
- **Alignment**: the SFT student (SFT on the chosen responses) and each aligned policy: the task's headline metric
  (mean ± sd over seeds), its paired difference against the baseline (AVA against DPO, DPO against SFT) with the 95%
  paired-bootstrap interval, the mean reward-model score of its answers where its evaluation had one
  (``xkd eval --reward-model``: ``metrics.json``'s ``reward_model``), and the judge's win rates where a judge run
  compared the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xkd_cli.config.alignment import ALIGN_METHODS, REWARD_MODEL_METHODS
from xkd_cli.core.workspace import read_json
from xkd_cli.experiments.report.collect import RunInfo, greedy_eval, relative
from xkd_cli.experiments.report.differences import paired_difference
from xkd_cli.experiments.report.stats import mean_sd, wilson
from xkd_cli.experiments.report.tables import role_run, seed_group

LABELS = {"bt": "Bradley–Terry", "ava-p": "AVA-p", "ava-d": "AVA-d", "dpo": "DPO"}
# Row order: the baseline first, then AVA.
REWARD_MODEL_ROWS = sorted(REWARD_MODEL_METHODS, key=lambda m: m != "bt")
ALIGN_ROWS = sorted(ALIGN_METHODS, key=lambda m: m != "dpo")
# What each aligned policy is measured against: AVA against DPO, the paper's comparison; DPO against SFT.
ALIGN_BASELINES = {"ava-p": "dpo", "ava-d": "dpo", "dpo": "student"}


def _method_runs(runs: list[RunInfo], kind: str, prefix: str, method: str) -> dict[int | None, RunInfo]:
    """seed → run of one method of ``kind``: the pipeline's seed group "<prefix>-<method>", else the run named
    "<prefix>-<method>", else the newest run of that method (seed None)."""
    group = seed_group(runs, f"{prefix}-{method}")
    if group:
        return group
    found = [r for r in runs if r.kind == kind and r.record.get("method") == method]
    named = [r for r in found if r.name == f"{prefix}-{method}"]
    return {None: (named or found)[-1]} if found else {}


def _pooled(evals: list[dict[str, Any]]) -> dict[str, Any]:
    correct, pairs = sum(e["correct"] for e in evals), sum(e["pairs"] for e in evals)
    return {"accuracy": 100.0 * correct / pairs if pairs else None, "correct": correct, "pairs": pairs,
            "ci": wilson(correct, pairs)}


def build_reward_models(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]],
                        missing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        for method in REWARD_MODEL_ROWS:
            evals, members = [], []
            for seed, run in _method_runs(runs[task], "reward-model", "rm", method).items():
                found = run.record.get("final_eval")
                if not isinstance(found, dict) or "accuracy" not in found:
                    missing.append({"task": task, "where": "Reward models", "run": run.name,
                                    "reason": "no preference accuracy in run.json (no held-out pairs?)",
                                    "fix": f"xkd reward-model --task {task} --method {method} --name {run.name} "
                                           "--overwrite"})
                    continue
                evals.append(found)
                members.append({"seed": seed, "run": run.name, "accuracy": 100.0 * found["accuracy"],
                                "source": relative(run.path / "run.json", root)})
            if not evals:
                continue
            mean, sd = mean_sd([m["accuracy"] for m in members])
            kinds = sorted({k for e in evals for k in (e.get("per_kind") or {})})
            rows.append({"task": task, "method": method, "label": LABELS[method], "mean": mean, "sd": sd,
                         "n": len(members), **_pooled(evals), "members": members,
                         "per_kind": {k: _pooled([e["per_kind"][k] for e in evals if k in (e.get("per_kind") or {})])
                                      for k in kinds}})
    return rows


def _judged(judge_rows: list[dict[str, Any]], task: str, names: set[str]) -> list[dict[str, Any]]:
    """The judge runs of ``task`` whose A is one of the runs ``names``."""
    return [{"b": r["b"], "win_rate": r["win_rate"], "win_ci": r.get("win_ci"), "tie_rate": r["tie_rate"],
             "lose_rate": r["lose_rate"], "judged": r["judged"], "run": r["run"]}
            for r in judge_rows if r["task"] == task and r["a"] in names]


def build_alignment(root: Path, tasks: list[str], runs: dict[str, list[RunInfo]], judge_rows: list[dict[str, Any]],
                    missing: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for task in tasks:
        by_method = {method: _method_runs(runs[task], "align", "align", method) for method in ALIGN_ROWS}
        if not any(by_method.values()):
            continue
        students = seed_group(runs[task], "student")
        student = role_run(runs[task], "student", {})
        by_method = {"student": students or ({None: student} if student else {}), **by_method}
        for method, by_seed in by_method.items():
            if not by_seed:
                continue
            members = []
            for seed, run in by_seed.items():
                cell = greedy_eval(run, root)
                if cell is None:
                    missing.append({"task": task, "where": "Alignment", "run": run.name,
                                    "reason": "no greedy evaluation", "fix": f"xkd eval --model {run.name} --task {task}"})
                    continue
                scored = read_json(root / cell["source"]).get("reward_model")
                members.append({**cell, "seed": seed,
                                "reward_model": {k: scored.get(k) for k in ("run", "mean", "low", "high", "n")}
                                if isinstance(scored, dict) and isinstance(scored.get("mean"), (int, float)) else None})
            row = {"task": task, "method": method, "label": "SFT (chosen)" if method == "student" else LABELS[method],
                   "members": members, "metric": members[0]["metric"] if members else None,
                   "judge": _judged(judge_rows, task, {r.name for r in by_seed.values()})}
            if members:
                row["mean"], row["sd"] = mean_sd([m["value"] for m in members])
                row["n"] = len(members)
            scores = [m["reward_model"] for m in members if m["reward_model"]]
            if scores and len({s["run"] for s in scores}) == 1:  # one scorer, or the numbers do not compare
                mean, sd = mean_sd([s["mean"] for s in scores])
                row["reward_model"] = {"run": scores[0]["run"], "mean": mean, "sd": sd, "n": len(scores),
                                       "ci": (scores[0]["low"], scores[0]["high"]) if len(scores) == 1 else None}
            baseline = ALIGN_BASELINES.get(method)
            against = by_method.get(baseline) or {}
            if against:
                # seeds pair with seeds; a single baseline run (the one SFT student) stands for every seed
                pairs = {seed: (run, against.get(seed) or against.get(None) or next(iter(against.values())))
                         for seed, run in by_seed.items() if seed in against or len(against) == 1}
                found = paired_difference(root, task, pairs, missing) if pairs else None
                if found is not None:
                    row["difference"] = {"baseline": baseline, "label": f"{row['label']} − "
                                         f"{'SFT (chosen)' if baseline == 'student' else LABELS[baseline]}", **found}
            rows.append(row)
    return rows
