"""``xkd best-of-n``: sample N responses per prompt with a policy, score each with a reward model, keep the one it
scores highest (docs/method.md, "Best-of-N"; AVA.md, "The three uses").

The result is a run of kind ``best-of-n`` in ``<runs>/<task>/<name>/`` that holds answers instead of a model. Its
answers sit where a model's greedy answers sit, ``eval/<split>-greedy/`` (``predictions.jsonl``, ``metrics.json``,
``scores.jsonl``, ``settings.json``, as ``xkd eval`` writes them): they are the run's one answer per input, so
``xkd judge`` and ``xkd report`` read them unchanged, and ``xkd eval --model <run>`` scores them again (with another
``--reward-model``, say) without generating. ``settings.json`` says how they were made (``decoding``:
``best-of-N t…-p…``). Each row of ``predictions.jsonl`` also holds all N ``samples``, their ``rewards`` and the
index of the ``chosen`` one (the first of the highest). ``best_of_n.json`` (and the result) compare the first sample
of each prompt, a plain sample of the policy, with the chosen one: the reward model's mean score and the task metric.

Rows are appended batch by batch, so an interrupted run resumes with the same command (same settings; a larger
``--limit`` adds prompts).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from xkd_cli.config.checks import quantization_of
from xkd_cli.config.core import to_dict
from xkd_cli.config.evaluation import BestOfNConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.jsonl import append_rows, read_rows
from xkd_cli.core.runtime import resolve_device, seed_everything
from xkd_cli.core.ui import note
from xkd_cli.core.workspace import create_run, resumable_run, write_json
from xkd_cli.data.taskfile import task_of
from xkd_cli.data.tasks import Example, Task
from xkd_cli.evaluation.evaluate import (ANSWERS_DIR, BEST_OF_N_KIND, reward_model_for, finish_eval, predict,
                                         prediction_row, prepare_results_dir, score)
from xkd_cli.evaluation.reward_runs import ScorerFiles, locate_reward_model
from xkd_cli.evaluation.reward_scores import mean_interval, score_summary
from xkd_cli.models.chat import use_chat_template
from xkd_cli.models.generate import Sampling
from xkd_cli.models.loading import load_model, resolve_model

SUMMARY_FILE = "best_of_n.json"


def choose(rewards: Sequence[float]) -> int:
    """The index of the highest reward (the first of equals)."""
    if not rewards:
        raise ValueError("no rewards to choose from")
    return max(range(len(rewards)), key=lambda k: (rewards[k], -k))


def best_of_n_row(example: Example, samples: Sequence[str], rewards: Sequence[float]) -> dict[str, Any]:
    """One line of predictions.jsonl: the chosen answer as ``prediction``, with every sample and its reward."""
    k = choose(rewards)
    return {**prediction_row(example, samples[k]), "chosen": k, "samples": list(samples), "rewards": list(rewards)}


def sampling_of(cfg: BestOfNConfig) -> Sampling:
    return Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    num_samples=cfg.n)


def decoding_label(sampling: Sampling) -> str:
    """How the answers were made, for settings.json and the eval result: best-of-N and the sampling."""
    how = "greedy" if sampling.greedy else f"t{sampling.temperature:g}-p{sampling.top_p:g}"
    return f"best-of-{sampling.num_samples} {how}"


def run_best_of_n(cfg: BestOfNConfig, *, runs_root: Path, overwrite: bool = False,
                  rm_files: ScorerFiles | None = None) -> dict[str, Any]:
    """Sample, score, choose and record (see the module docstring); returns the summary (``best_of_n.json``).
    ``rm_files``: the reward model ``cfg.reward_model`` names, where the caller has located it already."""
    task = task_of(cfg)
    if rm_files is None:
        rm_files = locate_reward_model(cfg.reward_model, task=task.name, runs_root=runs_root)
    split = cfg.split or task.eval_split
    examples = task.load(split, cfg.data, limit=cfg.limit)
    if not examples:
        raise XKDError(f"the {split} split of task '{task.name}' is empty. Check --data / --split.")
    name = cfg.run_name(rm_files.name)
    sampling = sampling_of(cfg)
    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    _, location = resolve_model(cfg.model, task=task.name, runs_dir=runs_root)
    settings = {"task": task.name, "model": cfg.model, "model_location": location, "data": cfg.data, "split": split,
                "reward_model": str(rm_files.path), "reward_model_method": rm_files.method, "n": cfg.n,
                "max_input_len": cfg.max_input_len, "chat_template": cfg.chat_template, "seed": cfg.seed,
                **to_dict(sampling), "decoding": decoding_label(sampling), "quantization": quantization}
    run = resumable_run(runs_root, task.name, name, kind=BEST_OF_N_KIND, settings=settings, overwrite=overwrite,
                        what="best-of-n answers")
    policy = load_model(cfg.model, task=task.name, runs_dir=runs_root, dtype=cfg.dtype,
                        device=str(resolve_device(cfg.device)), for_training=False, quantization=quantization,
                        trust_remote_code=cfg.trust_remote_code)
    use_chat_template(policy, cfg.chat_template)
    reward_model = reward_model_for(rm_files, cfg, runs_root)
    if run is None:  # every input checked and both models loaded: now the disk may change
        run = create_run(runs_root, task.name, name, kind=BEST_OF_N_KIND, config={**to_dict(cfg), **settings},
                         seed=cfg.seed, overwrite=overwrite,
                         extra={"base_model": cfg.model, "model_location": location, "n": cfg.n,
                                "reward_model": reward_model.describe(), "decoding": settings["decoding"]})
    out_dir = run.path / "eval" / f"{split}-{ANSWERS_DIR}"
    prepare_results_dir(out_dir, settings, overwrite=False)  # the run's own settings were checked above
    pred_path = out_dir / "predictions.jsonl"
    done = {row["id"]: row for row in read_rows(pred_path)}
    todo = [e for e in examples if e.id not in done]
    started = time.time()
    if todo:
        if done:
            note(f"resuming: {len(done)} of {len(examples)} prompts already in {pred_path}")
        seed_everything(cfg.seed)

        def save(finished: list[tuple[Example, list[str]]]) -> None:
            rewards = reward_model.score([e for e, texts in finished for _ in texts],
                                         [t for _, texts in finished for t in texts], batch_size=cfg.batch_size)
            records = [best_of_n_row(e, texts, rewards[i * cfg.n:(i + 1) * cfg.n])
                       for i, (e, texts) in enumerate(finished)]
            append_rows(pred_path, records)
            done.update((r["id"], r) for r in records)

        predict(policy, task, todo, sampling, max_input_len=cfg.max_input_len, batch_size=cfg.batch_size,
                seed=cfg.seed, on_rows=save, description=f"best-of-{cfg.n} {task.name}/{run.name}")
    del policy
    rows = [done[e.id] for e in examples]
    evaluation = finish_eval({"task": task.name, "model": run.name, "run": run.name, "split": split,
                              "examples": len(rows), "decoding": settings["decoding"], "headline": task.headline,
                              "metrics": score(task, [[r["prediction"]] for r in rows],
                                               [r["reference"] for r in rows]),
                              "predictions": str(pred_path)},
                             run, out_dir, task, examples, rows, reward_model=None, use_stemmer=False,
                             batch_size=cfg.batch_size, started=started)
    summary = summarize(rows, task)
    result = {"task": task.name, "run": run.name, "path": str(run.path), "split": split, "examples": len(rows),
              "model": cfg.model, "reward_model": reward_model.describe(), "n": cfg.n,
              "decoding": settings["decoding"], "headline": task.headline, **summary,
              "predictions": str(pred_path), "metrics_file": str(out_dir / "metrics.json"),
              "scores": evaluation.get("scores"), "new_prompts": len(todo), "seconds": round(time.time() - started, 2)}
    write_json(run.path / SUMMARY_FILE, result)
    run.finish(started, examples=len(rows), **{k: summary[k] for k in ("reward_model_score", "metric")})
    return result


def summarize(rows: Sequence[dict], task: Task) -> dict[str, Any]:
    """What best-of-N gains: the reward model's mean score (95% interval) of the first sample of each prompt, of
    all samples and of the chosen one, and the chosen minus the first (its interval over prompts); the task metric
    of the first samples and of the chosen ones."""
    first = [r["rewards"][0] for r in rows]
    chosen = [r["rewards"][r["chosen"]] for r in rows]
    everything = [sum(r["rewards"]) / len(r["rewards"]) for r in rows]
    gain = [c - f for c, f in zip(chosen, first)]
    low, high = mean_interval(gain)
    references = [r["reference"] for r in rows]
    metric_first = score(task, [[r["samples"][0]] for r in rows], references)
    metric_chosen = score(task, [[r["prediction"]] for r in rows], references)
    headline = task.headline
    value = {"first": metric_first.get(headline), "chosen": metric_chosen.get(headline)}
    if all(isinstance(v, (int, float)) for v in value.values()):
        value["gain"] = value["chosen"] - value["first"]
    return {"reward_model_score": {"first": score_summary(first), "all": score_summary(everything),
                                   "chosen": score_summary(chosen),
                                   "gain": {"mean": sum(gain) / len(gain), "low": low, "high": high}},
            "metric": {"name": headline, **value},
            "metrics_first": metric_first, "metrics_chosen": metric_chosen,
            "chosen_first": sum(r["chosen"] == 0 for r in rows)}
