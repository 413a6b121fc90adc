"""Evaluation: generate on a task split, append predictions as they come, score with the task metric.

Results live in ``<run>/eval/<split>-<decoding>/``: ``predictions.jsonl`` (one row per input id) and
``metrics.json``, and for one prediction per input ``scores.jsonl`` (each example's share of the headline
metric, for the report's intervals). A re-run with the same settings skips finished ids; other settings are refused
unless ``--overwrite``, so two decodings never mix in one file.

With ``--reward-model`` a reward model also scores the predictions (:mod:`xkd_cli.evaluation.reward_scores`):
their mean score with its 95% interval goes into the result (``reward_model``), each input's scores into
``reward-scores-<rm>.jsonl``. A best-of-n run (:mod:`xkd_cli.evaluation.best_of_n`) holds answers, not a model:
its ``<split>-greedy`` answers are scored as they are, nothing is generated.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from xkd_cli.data import metrics
from xkd_cli.data.batches import IGNORE, make_batch, special_ids
from xkd_cli.config.checks import quantization_of
from xkd_cli.config.core import to_dict
from xkd_cli.config.evaluation import EvalConfig
from xkd_cli.core.errors import EvalCancelled, XKDError
from xkd_cli.models.generate import Sampling, decode, generate_batched
from xkd_cli.core.jsonl import append_rows, read_rows
from xkd_cli.evaluation.example_scores import SUPPORTED, example_stats
from xkd_cli.core.runtime import resolve_device, seed_everything
from xkd_cli.models.loaded_model import LoadedModel
from xkd_cli.models.loading import load_model
from xkd_cli.data.tasks import Example, Task
from xkd_cli.data.taskfile import task_of
from xkd_cli.models.forward import forward
from xkd_cli.models.chat import encode_example_prompts, encode_example_targets, stop_ids, use_chat_template
from xkd_cli.core.ui import note, progress
from xkd_cli.core.workspace import (Run, create_run, is_run, open_run, read_json, run_path, run_path_or_none, slug,
                                    write_json)
from xkd_cli.evaluation.reward_runs import ScorerFiles, locate_reward_model
from xkd_cli.evaluation.reward_scores import RewardModel, load_reward_model, score_summary



def sampling_of(cfg: EvalConfig) -> Sampling:
    return Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                    num_samples=cfg.num_samples)


def predict(loaded: LoadedModel, task: Task, examples: Sequence[Example], sampling: Sampling, *, max_input_len: int,
            batch_size: int, seed: int | None = None, on_rows=None, description: str = "generate") -> list[list[str]]:
    """Generated texts per example (``num_samples`` each); ``on_rows(rows)`` gets finished rows batch by batch."""
    pad, eos, _ = special_ids(loaded.tokenizer, loaded.model.config)
    prompts = encode_example_prompts(loaded, examples, max_len=max_input_len, keep_end=task.keep_prompt_end)
    with progress() as bar:
        bar_id = bar.add_task(description, total=len(examples), info="")

        def finished(indices: list[int], outputs: list[list[list[int]]]) -> None:
            if on_rows is not None:
                on_rows([(examples[i], decode(loaded.tokenizer, out)) for i, out in zip(indices, outputs)])
            bar.update(bar_id, advance=len(indices))

        outputs = generate_batched(loaded.model, prompts, sampling, is_encoder_decoder=loaded.is_encoder_decoder,
                                   pad_id=pad, eos_id=eos, batch_size=batch_size, seed=seed, on_batch=finished,
                                   stop_ids=stop_ids(loaded))
    return [decode(loaded.tokenizer, out) for out in outputs]


def score(task: Task, predictions: Sequence[Sequence[str]], references: Sequence[str], *,
          use_stemmer: bool = False) -> dict[str, Any]:
    """Task metric of each sample index, averaged over samples; SelfBLEU too when there are several samples."""
    k = len(predictions[0]) if predictions else 1
    per_sample = [task.score([p[j] for p in predictions], list(references), **({"use_stemmer": True} if use_stemmer else {}))
                  for j in range(k)]
    out: dict[str, Any] = {}
    for key, value in per_sample[0].items():
        out[key] = sum(s[key] for s in per_sample) / k if isinstance(value, (int, float)) else value
    if k > 1:
        out["self_bleu"] = metrics.self_bleu([list(p) for p in predictions])
        out["diversity"] = max(0.0, round(100.0 - out["self_bleu"], 9))  # identical samples: 0, not -2.8e-14
    return out


@torch.no_grad()
def reference_loss(loaded: LoadedModel, task: Task, examples: Sequence[Example], *, max_input_len: int,
                   max_output_len: int, batch_size: int) -> dict[str, float]:
    """Mean token NLL of the references under the model and its perplexity (``metric: none`` tasks)."""
    pad, _, start = special_ids(loaded.tokenizer, loaded.model.config)
    prompts = encode_example_prompts(loaded, examples, max_len=max_input_len, keep_end=task.keep_prompt_end)
    targets = encode_example_targets(loaded, [e.reference for e in examples], max_len=max_output_len)
    device = next(loaded.model.parameters()).device
    total, tokens = 0.0, 0
    loaded.model.eval()
    for at in range(0, len(examples), batch_size):
        batch = make_batch(prompts[at:at + batch_size], targets[at:at + batch_size],
                           is_encoder_decoder=loaded.is_encoder_decoder, pad_id=pad, decoder_start_id=start).to(device)
        logits, _ = forward(loaded.model, batch)
        total += float(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(),
                                                         ignore_index=IGNORE, reduction="sum"))
        tokens += batch.tokens
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def quick_eval(loaded: LoadedModel, task: Task, examples: Sequence[Example], *, max_input_len: int,
               max_new_tokens: int, batch_size: int, should_stop: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """Greedy metric on a few examples, for progress checks during training; raises :class:`EvalCancelled` after
    the first batch that finishes once ``should_stop()`` is true."""
    def check(rows) -> None:
        if should_stop():
            raise EvalCancelled("stop requested during the in-training evaluation")

    texts = predict(loaded, task, examples, Sampling(max_new_tokens=max_new_tokens), max_input_len=max_input_len,
                    batch_size=batch_size, description="eval", on_rows=check)
    result = score(task, texts, [e.reference for e in examples])
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}


def _eval_run(cfg: EvalConfig, task: Task, runs_root: Path, source: str) -> Run:
    """The run that receives the results: the model's own run, or an 'eval' run named after the model."""
    if source == "run" and cfg.name is None:
        run = open_run(runs_root, task.name, cfg.model)
        run.record()  # a damaged run.json fails now, before any result is written into the run
        return run
    name = cfg.name or f"eval-{slug(cfg.model)}"
    path = run_path(runs_root, task.name, name)
    if path.exists():
        run = open_run(runs_root, task.name, name)
        kind = run.record().get("kind")
        if kind != "eval" and name != cfg.model:  # never write one model's results into another run
            raise XKDError(f"run '{name}' at {path} is a {kind} run, not an eval run of {cfg.model!r}: "
                           "pick another --name (or leave it out)")
        return run
    return create_run(runs_root, task.name, name, kind="eval", config={"model": cfg.model}, seed=cfg.seed,
                      extra={"base_model": cfg.model})


SCORES_FILE = "scores.jsonl"


def write_example_scores(path: Path, headline: str, rows: Sequence[dict], use_stemmer: bool = False) -> Path:
    """One line per example, in the evaluation's order: its id and the statistics behind the headline
    metric (:mod:`xkd_cli.evaluation.example_scores`).  Rewritten whole, like metrics.json."""
    stats = example_stats(headline, [r["prediction"] for r in rows], [r["reference"] for r in rows], use_stemmer)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    append_rows(tmp, [{"id": r["id"], "metric": headline, "stats": st} for r, st in zip(rows, stats)])
    os.replace(tmp, path)
    return path


def run_eval(cfg: EvalConfig, *, runs_root: Path, overwrite: bool = False) -> dict[str, Any]:
    task = task_of(cfg)
    split = cfg.split or task.eval_split
    examples = task.load(split, cfg.data, limit=cfg.limit)
    if not examples:
        raise XKDError(f"the {split} split of task '{task.name}' is empty. Check --data / --split.")
    rm_files = locate_reward_model(cfg.reward_model, task=task.name, runs_root=runs_root) if cfg.reward_model else None
    answers = answers_run(runs_root, task.name, cfg.model)
    if answers is not None:  # a best-of-n run: its answers are made, only scored here
        return _score_answers(cfg, task, split, examples, answers, rm_files, runs_root=runs_root)
    sampling = sampling_of(cfg)
    quantization = quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)
    loaded = load_model(cfg.model, task=task.name, runs_dir=runs_root, dtype=cfg.dtype,
                        device=str(resolve_device(cfg.device)), for_training=False, quantization=quantization,
                        trust_remote_code=cfg.trust_remote_code)
    use_chat_template(loaded, cfg.chat_template)
    run = _eval_run(cfg, task, runs_root, loaded.source)
    out_dir = run.path / "eval" / f"{split}-{sampling.label()}"
    settings = {"task": task.name, "model": cfg.model, "model_location": loaded.location, "data": cfg.data,
                "split": split, "max_input_len": cfg.max_input_len,
                **({"chat_template": loaded.chat.origin} if loaded.chat is not None else {}), "seed": cfg.seed, **to_dict(sampling),
                **({"quantization": quantization} if quantization else {})}
    prepare_results_dir(out_dir, settings, overwrite=overwrite)
    pred_path = out_dir / "predictions.jsonl"
    done = {row["id"]: row for row in read_rows(pred_path)}
    todo = [e for e in examples if e.id not in done]
    started = time.time()
    if todo:
        if done:
            note(f"resuming: {len(done)} of {len(examples)} predictions already in {pred_path}")
        seed_everything(cfg.seed)

        def save(rows) -> None:
            records = [{**prediction_row(e, texts[0]),
                        **({"predictions": texts} if cfg.num_samples > 1 else {})} for e, texts in rows]
            append_rows(pred_path, records)
            done.update((r["id"], r) for r in records)

        predict(loaded, task, todo, sampling, max_input_len=cfg.max_input_len, batch_size=cfg.batch_size,
                seed=cfg.seed, on_rows=save, description=f"eval {task.name}/{run.name}")
    rows = [done[e.id] for e in examples]
    texts = [r.get("predictions", [r["prediction"]]) for r in rows]
    values = score(task, texts, [r["reference"] for r in rows], use_stemmer=cfg.use_stemmer)
    if task.metric == "none":  # nothing to compare the texts with: how well the model predicts the references
        values.update(reference_loss(loaded, task, examples, max_input_len=cfg.max_input_len,
                                     max_output_len=cfg.max_new_tokens, batch_size=cfg.batch_size))
    del loaded  # the reward model, if any, loads in its place
    result = {"task": task.name, "model": cfg.model, "run": run.name, "split": split, "examples": len(rows),
              "decoding": sampling.label(), "headline": task.headline, "metrics": values,
              "predictions": str(pred_path), "seconds": round(time.time() - started, 2)}
    reward_model = reward_model_for(rm_files, cfg, runs_root) if rm_files is not None else None
    return finish_eval(result, run, out_dir, task, examples, rows, reward_model=reward_model,
                       use_stemmer=cfg.use_stemmer, batch_size=cfg.batch_size, started=started)


def prediction_row(example: Example, prediction: str) -> dict[str, Any]:
    """One line of predictions.jsonl: the input, its reference and the answer (judge and report read these)."""
    return {"id": example.id, "source": example.source, "prompt": example.prompt, "reference": example.reference,
            "prediction": prediction}


def prepare_results_dir(out_dir: Path, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Make ``out_dir`` for results made with ``settings`` (in its settings.json): emptied first with
    ``overwrite``; results made with other settings are refused, so two decodings never mix in one file."""
    if out_dir.exists() and overwrite:
        shutil.rmtree(out_dir)
    if (out_dir / "settings.json").is_file():
        previous = read_json(out_dir / "settings.json")
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise XKDError(f"{out_dir} holds results made with other settings ({', '.join(changed)}). "
                           "Pass --overwrite to replace them, or --name to write elsewhere.")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "settings.json", settings)


def finish_eval(result: dict[str, Any], run: Run, out_dir: Path, task: Task, examples: Sequence[Example],
                rows: Sequence[dict], *, reward_model: RewardModel | None, use_stemmer: bool, batch_size: int,
                started: float) -> dict[str, Any]:
    """The end every evaluation shares: each example's statistics for the report (``scores.jsonl``, one
    prediction per input), the reward model's mean score of the predictions with its 95% interval
    (``result["reward_model"]``, each example's scores in ``reward-scores-<rm>.jsonl``), then ``metrics.json``."""
    if not any("predictions" in r for r in rows) and task.headline in SUPPORTED:  # the report's bootstrap reads these
        result["scores"] = str(write_example_scores(out_dir / SCORES_FILE, task.headline, rows, use_stemmer))
    if reward_model is not None:
        result["reward_model"] = score_predictions(reward_model, examples, rows, out_dir, batch_size=batch_size)
    result["seconds"] = round(time.time() - started, 2)
    write_json(out_dir / "metrics.json", result)
    if run.record().get("kind") == "eval":
        run.update_record(status="completed")
    return result


def score_predictions(reward_model: RewardModel, examples: Sequence[Example], rows: Sequence[dict], out_dir: Path,
                      *, batch_size: int) -> dict[str, Any]:
    """The reward model's score of every prediction (each sample, with several per input), averaged per input;
    their mean over inputs with its 95% interval, and which reward model gave them. Each input's scores go to
    ``out_dir/reward-scores-<rm>.jsonl``."""
    texts = [r.get("predictions", [r["prediction"]]) for r in rows]
    flat = reward_model.score([e for e, t in zip(examples, texts) for _ in t], [x for t in texts for x in t],
                              batch_size=batch_size)
    per_input, at = [], 0
    for t in texts:
        per_input.append(flat[at:at + len(t)])
        at += len(t)
    path = out_dir / f"reward-scores-{slug(reward_model.files.name)}.jsonl"
    path.unlink(missing_ok=True)
    append_rows(path, [{"id": r["id"], "rewards": v} for r, v in zip(rows, per_input)])
    return {**reward_model.describe(), **score_summary([sum(v) / len(v) for v in per_input]), "scores": str(path)}


def reward_model_for(files: ScorerFiles, cfg: Any, runs_root: Path) -> RewardModel:
    """The reward model, loaded as the command loads its own model (dtype, device, --load-in-*)."""
    return load_reward_model(files, runs_root=runs_root, dtype=cfg.dtype, device=cfg.device,
                             quantization=quantization_of(cfg.load_in_8bit, cfg.load_in_4bit),
                             trust_remote_code=cfg.trust_remote_code)


BEST_OF_N_KIND = "best-of-n"  # a run that holds answers (one per input) rather than a model
ANSWERS_DIR = "greedy"  # where a model's one answer per input lives: <run>/eval/<split>-greedy/


def answers_run(root: Path, task: str, ref: str) -> Run | None:
    """The best-of-n run ``ref`` names, if it names one: a run of answers, which eval scores as they are."""
    path = run_path_or_none(root, task, ref)
    if path is None or not is_run(path):
        return None
    run = Run(path, task, path.name)
    return run if run.record().get("kind") == BEST_OF_N_KIND else None


def _score_answers(cfg: EvalConfig, task: Task, split: str, examples: Sequence[Example], run: Run,
                   rm_files: ScorerFiles | None, *, runs_root: Path) -> dict[str, Any]:
    """Score the answers a best-of-n run holds for ``examples`` (``<run>/eval/<split>-greedy/``), as the
    evaluation of a model scores its greedy predictions; nothing is generated."""
    if cfg.temperature != 0 or cfg.num_samples != 1:
        raise XKDError(f"{run.name!r} is a best-of-n run: it holds one answer per input and samples nothing; drop "
                       "--temperature and --num-samples (to sample again, run `xkd best-of-n`)")
    if cfg.name not in (None, run.name):
        raise XKDError(f"{run.name!r} is a best-of-n run: its answers are scored in place; drop --name")
    out_dir = run.path / "eval" / f"{split}-{ANSWERS_DIR}"
    pred_path = out_dir / "predictions.jsonl"
    if not pred_path.is_file():
        made = sorted(p.parent.name.rsplit("-", 1)[0]
                      for p in (run.path / "eval").glob(f"*-{ANSWERS_DIR}/predictions.jsonl"))
        has = f" (it has {', '.join(made)})" if made else ""
        raise XKDError(f"best-of-n run {run.name!r} has no answers on the {split} split{has}: pass --split "
                       f"{made[0] if made else 'SPLIT'}, or run `xkd best-of-n ... --split {split}`")
    done = {row["id"]: row for row in read_rows(pred_path)}
    if cfg.limit is None:  # all the inputs the run answered (the first of the split: best-of-n's --limit)
        examples = [e for e in examples if e.id in done]
    missing = [e.id for e in examples if e.id not in done]
    if not examples:
        raise XKDError(f"best-of-n run {run.name!r} answered none of the inputs of the {split} split of "
                       f"{task.name} (made with another --data?): pass the --data it was run on")
    if missing:
        raise XKDError(f"best-of-n run {run.name!r} answered {len(done)} inputs of the {split} split; "
                       f"{len(missing)} of the {len(examples)} asked for are not among them (first: {missing[0]}): "
                       f"pass --limit {len(done)}, or run `xkd best-of-n` again with a larger --limit")
    started = time.time()
    rows = [done[e.id] for e in examples]
    values = score(task, [[r["prediction"]] for r in rows], [r["reference"] for r in rows], use_stemmer=cfg.use_stemmer)
    settings = read_json(out_dir / "settings.json") if (out_dir / "settings.json").is_file() else {}
    result = {"task": task.name, "model": cfg.model, "run": run.name, "split": split, "examples": len(rows),
              "decoding": settings.get("decoding", BEST_OF_N_KIND), "headline": task.headline, "metrics": values,
              "predictions": str(pred_path)}
    reward_model = reward_model_for(rm_files, cfg, runs_root) if rm_files is not None else None
    return finish_eval(result, run, out_dir, task, examples, rows, reward_model=reward_model,
                       use_stemmer=cfg.use_stemmer, batch_size=cfg.batch_size, started=started)
