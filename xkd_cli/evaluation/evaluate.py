"""Evaluation: generate on a task split, append predictions as they come, score with the task metric.

Results live in ``<run>/eval/<split>-<decoding>/``: ``predictions.jsonl`` (one row per input id) and
``metrics.json``, and for one prediction per input ``scores.jsonl`` (each example's share of the headline
metric, for the report's intervals). A re-run with the same settings skips finished ids; other settings are refused
unless ``--overwrite``, so two decodings never mix in one file.
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
from xkd_cli.core.workspace import Run, create_run, open_run, read_json, run_path, slug, write_json



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
    pred_path = out_dir / "predictions.jsonl"
    done = {row["id"]: row for row in read_rows(pred_path)}
    todo = [e for e in examples if e.id not in done]
    started = time.time()
    if todo:
        if done:
            note(f"resuming: {len(done)} of {len(examples)} predictions already in {pred_path}")
        seed_everything(cfg.seed)

        def save(rows) -> None:
            records = [{"id": e.id, "source": e.source, "prompt": e.prompt, "reference": e.reference,
                        "prediction": texts[0],
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
    result = {"task": task.name, "model": cfg.model, "run": run.name, "split": split, "examples": len(rows),
              "decoding": sampling.label(), "headline": task.headline, "metrics": values,
              "predictions": str(pred_path), "seconds": round(time.time() - started, 2)}
    if cfg.num_samples == 1 and task.headline in SUPPORTED:  # the report's paired bootstrap resamples these
        result["scores"] = str(write_example_scores(out_dir / SCORES_FILE, task.headline, rows, cfg.use_stemmer))
    write_json(out_dir / "metrics.json", result)
    if run.record().get("kind") == "eval":
        run.update_record(status="completed")
    return result
