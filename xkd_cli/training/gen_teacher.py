"""``xkd gen-teacher``: the teacher-behaviour dataset for sequence-level KD (SeqKD / SeqX-KD, Algorithm 2).

For each training prompt, ``num_samples`` teacher responses (temperature 1.0, top-p 0.95 by default,
Table 7), from a local model (white-box: batched, KV-cached generation) or from any OpenAI-compatible
endpoint (black-box: ``--api-base`` / ``--api-model``, bounded concurrency, our retry policy).

The run ``<runs>/<task>/<name>/`` holds ``samples.jsonl``: one row per (prompt id, sample index),
appended as they finish. A re-run of the same command resumes: finished pairs are skipped, a torn
last line is redone, nothing is duplicated. Other settings are refused unless ``--overwrite``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xkd_cli.evaluation.api import ChatClient
from xkd_cli.config.core import to_dict
from xkd_cli.config.generation import GenTeacherConfig
from xkd_cli.config.checks import quantization_of
from xkd_cli.core.errors import XKDError
from xkd_cli.core.jsonl import append_rows, read_rows
from xkd_cli.core.runtime import resolve_device, seed_everything
from xkd_cli.core.ui import note
from xkd_cli.core.workspace import (RUN_RECORD, create_run, find_runs, is_run, open_run, public_url, read_record,
                                    resumable_run, run_path_or_none)
from xkd_cli.data.taskfile import task_of
from xkd_cli.models.chat import use_chat_template
from xkd_cli.evaluation.evaluate import predict
from xkd_cli.models.generate import Sampling
from xkd_cli.models.loading import load_model
from xkd_cli.models.references import resolve_model
from xkd_cli.models.tokenizers import tokenizer_fingerprint
from xkd_cli.training.preflight import default_model_run

KIND = "gen-teacher"
SAMPLES_FILE = "samples.jsonl"
ROW_COLUMNS = ("id", "sample", "prompt", "response")
# Settings that change the samples: a resumed run must match them all.
_WHITE_KEYS = ("task", "mode", "teacher_location", "data", "train_fraction", "limit", "num_samples",
               "max_input_len", "max_new_tokens", "temperature", "top_p", "seed", "quantization")
_BLACK_KEYS = ("task", "mode", "teacher", "api_base", "data", "train_fraction", "limit", "num_samples",
               "max_new_tokens", "temperature", "top_p")


def run_gen_teacher(cfg: GenTeacherConfig, *, runs_root: Path, overwrite: bool = False,
                    client: ChatClient | None = None) -> dict[str, Any]:
    """Sample the teacher on the training prompts into ``<run>/samples.jsonl`` (resumable)."""
    task = task_of(cfg)
    examples = task.load("train", cfg.data, train_fraction=cfg.train_fraction, limit=cfg.limit)
    decoding = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p}
    common = {"task": task.name, "data": cfg.data, "train_fraction": cfg.train_fraction, "limit": cfg.limit,
              "num_samples": cfg.num_samples, **decoding}
    if cfg.black_box:
        if client is None:  # checks the key now, before anything is written
            client = ChatClient(cfg.api_base, cfg.api_model or "", api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                                max_retries=cfg.max_retries, concurrency=cfg.concurrency)
        settings = {**common, "mode": "black-box", "teacher": client.model, "api_base": public_url(client.base_url)}
        keys, teacher_info = _BLACK_KEYS, {**client.describe(), "tokenizer": "api"}
    else:
        teacher = cfg.teacher or default_model_run(runs_root, task.name, "teacher", "--teacher")
        _, location = resolve_model(teacher, task=task.name, runs_dir=runs_root)

        settings = {**common, "mode": "white-box", "teacher": teacher, "teacher_location": location,
                    "max_input_len": cfg.max_input_len, "seed": cfg.seed,
                    "quantization": quantization_of(cfg.load_in_8bit, cfg.load_in_4bit)}
        keys, teacher_info = _WHITE_KEYS, {"teacher_location": location, "tokenizer": location}
    run = resumable_run(runs_root, task.name, cfg.name, kind=KIND, settings={k: settings[k] for k in keys},
                        overwrite=overwrite, what="teacher samples")
    samples_path = run.path / SAMPLES_FILE if run else None
    done: set[tuple[str, int]] = set()
    if samples_path is not None:
        done = {(str(r.get("id")), r.get("sample")) for r in read_rows(samples_path)}  # drops a torn last line
    pairs = [(e, k) for e in examples for k in range(cfg.num_samples)]
    todo = [(e, k) for e, k in pairs if (e.id, k) not in done]
    started = time.time()

    loaded = None
    if todo and not cfg.black_box:
        loaded = load_model(settings["teacher"], task=task.name, runs_dir=runs_root, dtype=cfg.dtype,
                            device=str(resolve_device(cfg.device)), for_training=False,
                            quantization=settings["quantization"], trust_remote_code=cfg.trust_remote_code)
        use_chat_template(loaded, cfg.chat_template)
    # Which tokenizer made the samples, for the record: distill re-encodes their text for any student.
    tokenizer_sha = tokenizer_fingerprint(loaded.tokenizer) if loaded is not None else None
    if tokenizer_sha:
        teacher_info["tokenizer_sha"] = tokenizer_sha
    if run is None:  # every input checked and the teacher loaded: now the disk may change
        run = create_run(runs_root, task.name, cfg.name, kind=KIND, config={**to_dict(cfg), **settings},
                         seed=cfg.seed, overwrite=overwrite,
                         extra={"mode": settings["mode"], "teacher": settings["teacher"], **teacher_info,
                                "num_samples": cfg.num_samples, "limit": cfg.limit,
                                "train_fraction": cfg.train_fraction, "prompts": len(examples), "decoding": decoding})
        samples_path = run.path / SAMPLES_FILE
        samples_path.touch()
    elif done and todo:
        note(f"resuming: {len(pairs) - len(todo)} of {len(pairs)} teacher samples already in {samples_path}")

    row_settings = {"task": task.name, "teacher": settings["teacher"], "mode": settings["mode"], **decoding,
                    **({"tokenizer_sha": tokenizer_sha} if tokenizer_sha else {})}

    def row(example, k: int, text: str) -> dict[str, Any]:
        return {"id": example.id, "sample": k, "prompt": example.prompt, "response": text, "source": example.source,
                **({"messages": [list(m) for m in example.messages]} if example.messages is not None else {}),
                **row_settings}

    description = f"gen-teacher {task.name}/{run.name}"
    if todo and cfg.black_box:
        assert client is not None

        def ask(pair) -> str:
            messages = [{"role": r, "content": c} for r, c in pair[0].messages] if pair[0].messages else pair[0].prompt
            return client.complete(messages, temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_tokens=cfg.max_new_tokens)

        client.map(ask, todo, on_result=lambda pair, text: append_rows(samples_path, [row(pair[0], pair[1], text)]),
                   description=description)
    elif todo:
        missing: dict[str, list[int]] = {}
        for e, k in todo:
            missing.setdefault(e.id, []).append(k)
        prompts = [e for e in examples if e.id in missing]  # a prompt with any sample missing is sampled again

        def save(finished) -> None:
            append_rows(samples_path, [row(e, k, texts[k]) for e, texts in finished for k in missing[e.id]])

        seed_everything(cfg.seed)
        predict(loaded, task, prompts, Sampling(num_samples=cfg.num_samples, **decoding),
                max_input_len=cfg.max_input_len, batch_size=cfg.batch_size, seed=cfg.seed, on_rows=save,
                description=description)

    rows = read_rows(samples_path)
    have = {(str(r["id"]), r["sample"]) for r in rows}
    if len(rows) != len(have) or any((e.id, k) not in have for e, k in pairs):
        raise XKDError(f"{samples_path} does not hold exactly one row per (prompt, sample) "
                       f"({len(rows)} rows for {len(pairs)} pairs). Re-run with --overwrite to start afresh.")
    if todo or run.record().get("status") != "completed":
        run.finish(started, rows=len(rows))
    result = {"task": task.name, "run": run.name, "path": str(run.path), "samples": str(samples_path),
              "mode": settings["mode"], "teacher": settings["teacher"], "prompts": len(examples),
              "num_samples": cfg.num_samples, "rows": len(rows), "new_rows": len(todo),
              "decoding": decoding, "seconds": round(time.time() - started, 2)}
    if cfg.black_box and client is not None:
        result.update(requests=client.requests, retries=client.retries)
    return result


# ---------------------------------------------------------------------------------------------
# Reading teacher data back (for `xkd distill --method seqkd/seqxkd`)
# ---------------------------------------------------------------------------------------------


@dataclass
class TeacherData:
    rows: list[dict[str, Any]]                   # id, sample, prompt, response (+ task and settings)
    record: dict[str, Any] = field(default_factory=dict)  # the gen-teacher run's run.json, or {} for a bare file
    path: Path = Path()

    @property
    def num_samples(self) -> int:
        """Samples per prompt. Kept as public API for readers of teacher data (distill itself reads the rows)."""
        return 1 + max(int(r["sample"]) for r in self.rows)


def load_teacher_data(ref: str | None, *, task: str, runs_root: Path) -> TeacherData:
    """Teacher samples from ``ref``: None (the task's latest completed gen-teacher run), a run name, or a
    path to a samples JSONL file (or a run directory holding one). Checked: non-empty, columns present,
    one row per (id, sample), made for ``task``."""
    root = Path(runs_root)
    record: dict[str, Any] = {}
    if ref is None:
        found = find_runs(root, task, kind=KIND)
        if not found:
            raise XKDError(f"no teacher samples for task {task} in {root}: run `xkd gen-teacher --task {task} ...` "
                           "first or pass --teacher-data")
        path, record = found[-1].path / SAMPLES_FILE, found[-1].record()
    else:
        candidate = run_path_or_none(root, task, ref)  # None: not a run name, a path
        if candidate is not None and is_run(candidate):
            record = open_run(root, task, ref).record()
            if record.get("kind") != KIND:
                raise XKDError(f"run '{ref}' of task {task} is a {record.get('kind')} run, not a {KIND} run: "
                               "pass a gen-teacher run or a samples .jsonl file as --teacher-data")
            if record.get("status") != "completed":
                raise XKDError(f"teacher samples in run '{ref}' are incomplete: re-run the same `xkd gen-teacher` "
                               "command to finish them")
            path = candidate / SAMPLES_FILE
        else:
            path = Path(ref).expanduser()
            if path.is_dir():
                path = path / SAMPLES_FILE
            if not path.is_file():
                raise XKDError(f"no gen-teacher run '{ref}' for task {task} in {root} and no file {path}: "
                               "pass a run name or the path of a samples .jsonl file")
            if is_run(path.parent):
                record = read_record(path.parent / RUN_RECORD)
    if record.get("task") not in (None, task):
        raise XKDError(f"{path} holds teacher samples for task {record['task']}, not {task}: "
                       f"pass --task {record['task']} or teacher data made for {task}")
    return TeacherData(_checked_rows(path, task), record, path)


def _checked_rows(path: Path, task: str) -> list[dict[str, Any]]:
    rows = read_rows(path, repair=False)  # a bad line is an error here: loading never edits the file
    if not rows:
        raise XKDError(f"{path} holds no teacher samples: re-run `xkd gen-teacher --task {task} ...`")
    numbers = [n for n, line in enumerate(path.read_bytes().split(b"\n"), start=1) if line.strip()]
    first_line: dict[tuple[str, int], int] = {}
    for number, row in zip(numbers, rows):
        where = f"{path} line {number}"
        missing = [c for c in ROW_COLUMNS if c not in row]
        if missing:
            raise XKDError(f"{where} lacks {', '.join(repr(c) for c in missing)}: every row needs "
                           f"{', '.join(ROW_COLUMNS)}. Fix that line or re-create the file with `xkd gen-teacher`")
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool) \
                or not isinstance(row["sample"], int) or isinstance(row["sample"], bool) or row["sample"] < 0 \
                or not isinstance(row["prompt"], str) or not isinstance(row["response"], str):
            raise XKDError(f"{where}: 'id' must be a string, 'sample' a whole number >= 0, 'prompt' and 'response' "
                           "text. Fix that line or re-create the file with `xkd gen-teacher`")
        if row.get("task") not in (None, task):
            raise XKDError(f"{where} is a teacher sample for task {row['task']}, not {task}: "
                           f"pass --task {row['task']} or teacher data made for {task}")
        key = (str(row["id"]), row["sample"])
        if key in first_line:
            raise XKDError(f"{where} repeats id {key[0]!r} sample {key[1]} (also line {first_line[key]}). "
                           "Delete the duplicate line")
        first_line[key] = number
    return rows


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
