"""``xkd judge``: pairwise LLM-judge win rates of one run against another (the paper's Table 2).

Both runs' greedy predictions on the same inputs (``<run>/eval/<split>-greedy/predictions.jsonl``, where a
best-of-n run keeps its chosen answers too; a run without them is evaluated first) are shown to a judge model at any OpenAI-compatible endpoint, in BOTH
orders. A win counts only when both orders agree; orders that disagree make a tie, and how often they
disagree is reported (the inconsistency rate). The judge sees the input (document / English source /
question) and the two answers, never a reference (black-box judging, as in the paper).

Prompts live in versioned template files, one per task family (``templates/judge/<family>.txt``, or
``--template FILE``): front matter with a ``version`` line, a ``---`` line, then the prompt with the
placeholders ``{source}``, ``{answer_1}`` and ``{answer_2}``. The judge must end with exactly one of
``[[1]]``, ``[[2]]`` or ``[[tie]]``; a reply with none, or with different markers, is not guessed at
(unlike FastChat, which prefers ``[[A]]``): it is re-asked up to ``--parse-retries`` times, then
recorded as "unparsed" and left out of the rates.

Every judge answer is cached in SQLite, ``<runs>/judge_cache.sqlite`` (shared by all tasks and results,
so a re-run, ``--overwrite`` or another ``--name`` costs no API call), keyed by the endpoint, the judge
model, the template's name and version, the decoding parameters and the exact messages (which hold the
input and both answers, in their order). Only answers are cached, never a failed request; the API key is
never written anywhere.

Results go to an xkd run ``<runs>/<task>/judge-<a>-vs-<b>/`` (kind "judge"): ``verdicts.jsonl`` (one row
per input id, appended as items finish; a re-run with the same settings skips finished ids) and
``results.json`` (the summary that ``--json`` prints).
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from xkd_cli.evaluation.api import ChatClient
from xkd_cli.config.core import to_dict
from xkd_cli.config.defaults import make_config
from xkd_cli.config.evaluation import JUDGE_CACHE_FILE, EvalConfig, JudgeConfig
from xkd_cli.core.errors import XKDError
from xkd_cli.core.jsonl import append_rows, read_rows
from xkd_cli.core.ui import note
from xkd_cli.core.workspace import (check_run_name, create_run, now, public_url, resumable_run, run_path, slug,
                                    write_json)
from xkd_cli.data.taskfile import task_of

KIND = "judge"
VERDICTS_FILE = "verdicts.jsonl"
RESULTS_FILE = "results.json"
ORDERS = ("a_first", "b_first")  # a_first: answer 1 is run A's; b_first: answer 1 is run B's
PLACEHOLDERS = ("source", "answer_1", "answer_2")
REASK = ("Your reply did not contain exactly one verdict marker. Reply with only one of these markers and "
         "nothing else: [[1]] if answer 1 is better, [[2]] if answer 2 is better, [[tie]] if they are equally good.")
# Settings that change the verdicts: a resumed results run must match them all.
RESULT_KEYS = ("task", "a", "b", "split", "limit", "data", "judge_model", "api_base", "template",
               "template_version", "template_sha", "temperature", "max_tokens", "parse_retries")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Templates and verdicts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    name: str        # "judge/sum" for a built-in one, else the file's path
    version: str
    body: str

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.body.encode("utf-8")).hexdigest()[:16]

    def render(self, source: str, answer_1: str, answer_2: str) -> str:
        values = {"source": source, "answer_1": answer_1, "answer_2": answer_2}
        # One pass, so an answer that contains "{answer_2}" is not substituted again.
        return re.sub(r"\{(source|answer_1|answer_2)\}", lambda m: values[m.group(1)], self.body)


def parse_template(text: str, name: str) -> Template:
    """A template file: ``key: value`` lines (``version`` required), a ``---`` line, then the prompt."""
    lines = text.replace("\r\n", "\n").split("\n")
    if "---" not in [line.strip() for line in lines]:
        raise XKDError(f"judge template {name} has no '---' line: start it with 'version: N', then '---', "
                       "then the prompt")
    cut = [line.strip() for line in lines].index("---")
    meta: dict[str, str] = {}
    for line in lines[:cut]:
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            if sep:
                meta[key.strip().lower()] = value.strip()
    body = "\n".join(lines[cut + 1:]).strip("\n")
    problems = []
    if not meta.get("version"):
        problems.append("a 'version: ...' line before '---'")
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in body]
    if missing:
        problems.append("the placeholders " + ", ".join("{" + p + "}" for p in missing) + " in the prompt")
    if problems:
        raise XKDError(f"judge template {name} lacks {' and '.join(problems)}")
    return Template(name, meta["version"], body + "\n")


def load_template(family: str, path: str | None = None) -> Template:
    """The built-in template of a task family (sum, mt, gsm), or the file at ``path``."""
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise XKDError(f"judge template not found: {file}. Check the path passed to --template")
        try:
            return parse_template(file.read_text(encoding="utf-8"), file.name)
        except UnicodeDecodeError:
            raise XKDError(f"judge template {file} is not UTF-8 text; save it as UTF-8") from None
    resource = resources.files("xkd_cli") / "templates" / "judge" / f"{family}.txt"
    if not resource.is_file():
        raise XKDError(f"no built-in judge template for task family {family!r}: pass --template FILE")
    return parse_template(resource.read_text(encoding="utf-8"), f"judge/{family}")


_MARKER = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)


def verdict_markers(text: str | None) -> set[str]:
    """The distinct verdict markers in a judge reply: a subset of {"1", "2", "tie"}."""
    return {m.group(1).lower() for m in _MARKER.finditer(text or "")}


def parse_verdict(text: str | None) -> str | None:
    """"1", "2" or "tie" when the reply holds exactly one kind of marker ([[1]], [[2]], [[tie]]); else None.

    A reply with two different markers is ambiguous and yields None: neither answer is preferred."""
    found = verdict_markers(text)
    return next(iter(found)) if len(found) == 1 else None


def combine(a_first: str | None, b_first: str | None) -> tuple[str, bool | None]:
    """The item's verdict for A from the winners of both orders ("a", "b", "tie" or None = unparsed):
    win / lose only when both orders agree, else tie; plus whether the orders agreed."""
    if a_first is None or b_first is None:
        return "unparsed", None
    if a_first != b_first:
        return "tie", False
    return {"a": "win", "b": "lose", "tie": "tie"}[a_first], True


def _winner(marker: str | None, order: str) -> str | None:
    """Which run a marker picks in an order: "a", "b", "tie" or None."""
    if marker is None or marker == "tie":
        return marker
    first, second = ("a", "b") if order == "a_first" else ("b", "a")
    return first if marker == "1" else second


# ---------------------------------------------------------------------------------------------
# The answer cache
# ---------------------------------------------------------------------------------------------


class JudgeCache:
    """Judge answers in SQLite, safe to use from :meth:`ChatClient.map`'s threads. Each answer is committed
    at once, so an interrupted run loses nothing it paid for."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, endpoint TEXT, model TEXT, "
                             "template TEXT, template_version TEXT, decoding TEXT, answer TEXT NOT NULL, "
                             "created TEXT)")
        except sqlite3.DatabaseError as exc:
            raise XKDError(f"the judge cache {self.path} cannot be used ({exc}); delete it to start a fresh cache "
                           "(judge answers will be asked again)") from None

    @staticmethod
    def key(*, endpoint: str, model: str, template: Template, decoding: dict[str, Any],
            messages: list[dict[str, str]]) -> str:
        data = {"endpoint": endpoint, "model": model, "template": template.name, "template_version": template.version,
                "decoding": decoding, "messages": messages}
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def put(self, key: str, answer: str, *, endpoint: str, model: str, template: Template,
            decoding: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (key, endpoint, model, template.name, template.version,
                              json.dumps(decoding, sort_keys=True), answer, now()))

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def _predictions_file(root: Path, task: str, ref: str, split: str) -> Path | None:
    """The greedy predictions of ``ref`` (its own run, or the eval run `xkd eval` makes for a model)."""
    names = [ref] if _is_run_name(ref) else []
    names.append(f"eval-{slug(ref)}")
    for name in names:
        path = run_path(root, task, check_run_name(name)) / "eval" / f"{split}-greedy" / "predictions.jsonl"
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


def _is_run_name(ref: str) -> bool:
    try:
        check_run_name(ref)
    except XKDError:
        return False
    return True


def load_predictions(cfg: JudgeConfig, ref: str, *, task: str, split: str, root: Path) -> tuple[Path, list[dict]]:
    """The rows of ``ref``'s greedy eval on ``split``; evaluates it first when it has none (resumable)."""
    path = _predictions_file(root, task, ref, split)
    if path is None:
        from xkd_cli.evaluation.evaluate import run_eval  # torch loads only when a run has to be evaluated first

        note(f"{ref}: no greedy predictions on {task}/{split} yet, evaluating it first")
        eval_cfg = make_config(EvalConfig, {"task": task, "model": ref, "split": split, "limit": cfg.limit,
                                            "data": cfg.data})
        result = run_eval(eval_cfg, runs_root=root)
        path = Path(result["predictions"])
    rows = read_rows(path)
    for number, row in enumerate(rows, start=1):
        if "id" not in row or not isinstance(row.get("prediction"), str):
            raise XKDError(f"{path} row {number} lacks 'id' or a text 'prediction': re-create it with "
                           f"`xkd eval --model {ref} --task {task} --split {split} --overwrite`")
    return path, rows


@dataclass(frozen=True)
class Pair:
    id: str
    source: str
    a: str
    b: str


def match_pairs(rows_a: list[dict], rows_b: list[dict], *, a: str, b: str, limit: int | None) -> list[Pair]:
    """The inputs both runs answered, in A's order (first ``limit``); inputs must be the same for an id."""
    by_b = {str(r["id"]): r for r in rows_b}
    pairs: list[Pair] = []
    seen: set[str] = set()
    for row in rows_a:
        key = str(row["id"])
        if key in seen or key not in by_b:
            continue
        seen.add(key)
        other = by_b[key]
        source_a = row.get("source", row.get("prompt", ""))
        source_b = other.get("source", other.get("prompt", ""))
        if source_a != source_b:
            raise XKDError(f"input {key!r} differs between {a} and {b} (their predictions were made on different "
                           f"data); re-evaluate both on the same --data/--split")
        pairs.append(Pair(key, str(source_a), row["prediction"], other["prediction"]))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


def _percent(count: int, total: int) -> float | None:
    return round(100.0 * count / total, 2) if total else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates (percent) of per-item verdicts: win/tie/lose over the parsed items."""
    counts = {k: sum(r["verdict"] == k for r in rows) for k in ("win", "tie", "lose", "unparsed")}
    parsed = counts["win"] + counts["tie"] + counts["lose"]
    inconsistent = sum(r.get("consistent") is False for r in rows)
    return {"judged": parsed, "win": counts["win"], "tie": counts["tie"], "lose": counts["lose"],
            "unparsed": counts["unparsed"], "inconsistent": inconsistent,
            "win_rate": _percent(counts["win"], parsed), "tie_rate": _percent(counts["tie"], parsed),
            "lose_rate": _percent(counts["lose"], parsed), "inconsistency_rate": _percent(inconsistent, parsed),
            "unparsed_rate": _percent(counts["unparsed"], len(rows))}


def run_judge(cfg: JudgeConfig, *, runs_root: Path, overwrite: bool = False,
              client: ChatClient | None = None) -> dict[str, Any]:
    """Judge A against B on their shared inputs; writes verdicts.jsonl and results.json (resumable)."""
    root = Path(runs_root)
    task = task_of(cfg)
    split = cfg.split or task.eval_split
    template = load_template(task.family, cfg.template)
    name = cfg.results_name
    run_path(root, task.name, name)  # a bad --name fails before anything else
    if client is None:  # checks the key now, before anything is computed or written
        client = ChatClient(cfg.base_url, cfg.judge_model, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                            max_retries=cfg.max_retries, concurrency=cfg.concurrency)
    endpoint = public_url(client.base_url)
    decoding = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens}
    settings = {"task": task.name, "a": cfg.a, "b": cfg.b, "split": split, "limit": cfg.limit, "data": cfg.data,
                "judge_model": client.model, "api_base": endpoint, "template": template.name,
                "template_version": template.version, "template_sha": template.sha, **decoding,
                "parse_retries": cfg.parse_retries}
    existing = resumable_run(root, task.name, name, kind=KIND, settings={k: settings.get(k) for k in RESULT_KEYS},
                             overwrite=overwrite, what="verdicts", hint=" (cached judge answers are reused)")

    path_a, rows_a = load_predictions(cfg, cfg.a, task=task.name, split=split, root=root)
    path_b, rows_b = load_predictions(cfg, cfg.b, task=task.name, split=split, root=root)
    pairs = match_pairs(rows_a, rows_b, a=cfg.a, b=cfg.b, limit=cfg.limit)
    ids_a, ids_b = {str(r["id"]) for r in rows_a}, {str(r["id"]) for r in rows_b}
    shared = len(ids_a & ids_b)
    if not pairs:
        raise XKDError(f"{cfg.a} ({len(ids_a)} predictions) and {cfg.b} ({len(ids_b)} predictions) share no input id "
                       f"on {task.name}/{split}: evaluate both on the same data (`xkd eval --model RUN --task {task.name}`)")
    started = time.time()

    run = existing
    if run is None:
        public = {"base_url": public_url(cfg.base_url) if cfg.base_url else None}  # no credentials in the record
        run = create_run(root, task.name, name, kind=KIND, config={**to_dict(cfg), **public, **settings}, seed=None,
                         overwrite=overwrite,
                         extra={"a": cfg.a, "b": cfg.b, "split": split, **client.describe(), "template": template.name,
                                "template_version": template.version, "decoding": decoding})
    verdicts_path = run.path / VERDICTS_FILE
    done = {}
    current = {p.id: p for p in pairs}
    for row in read_rows(verdicts_path):
        p = current.get(str(row.get("id")))
        if p is not None and (row.get("source"), row.get("prediction_a"), row.get("prediction_b")) == (p.source, p.a, p.b):
            done[p.id] = row
    todo = [p for p in pairs if p.id not in done]
    if done and todo:
        note(f"resuming: {len(done)} of {len(pairs)} verdicts already in {verdicts_path}")

    cache = JudgeCache(root / JUDGE_CACHE_FILE)
    lock = threading.Lock()
    stats = {"cached": 0, "reasks": 0}

    def ask(job: tuple[Pair, str]) -> dict[str, Any]:
        pair, order = job
        first, second = (pair.a, pair.b) if order == "a_first" else (pair.b, pair.a)
        messages = [{"role": "user", "content": template.render(pair.source, first, second)}]
        attempts, text, hits = 0, "", 0
        for attempt in range(1 + cfg.parse_retries):
            if attempt:
                messages = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": REASK}]
            key = JudgeCache.key(endpoint=endpoint, model=client.model, template=template, decoding=decoding,
                                 messages=messages)
            cached = cache.get(key)
            if cached is None:
                text = client.complete(messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens)
                if text.strip():  # an empty reply is not an answer worth keeping
                    cache.put(key, text, endpoint=endpoint, model=client.model, template=template, decoding=decoding)
            else:
                text, hits = cached, hits + 1
            attempts += 1
            marker = parse_verdict(text)
            if marker is not None:
                break
        with lock:
            stats["cached"] += hits
            stats["reasks"] += attempts - 1
        markers = sorted(verdict_markers(text))
        return {"winner": _winner(marker, order), "marker": marker, "attempts": attempts, "judge": text,
                **({} if marker is not None else
                   {"problem": "several different verdict markers" if len(markers) > 1 else "no verdict marker"})}

    partial: dict[str, dict[str, Any]] = {}
    new_rows: dict[str, dict[str, Any]] = {}

    def finished(job: tuple[Pair, str], answer: dict[str, Any]) -> None:
        pair, order = job
        partial.setdefault(pair.id, {})[order] = answer
        if len(partial[pair.id]) < len(ORDERS):
            return
        orders = partial.pop(pair.id)
        verdict, consistent = combine(orders["a_first"]["winner"], orders["b_first"]["winner"])
        row = {"id": pair.id, "verdict": verdict, "consistent": consistent, "source": pair.source,
               "prediction_a": pair.a, "prediction_b": pair.b, "orders": {o: orders[o] for o in ORDERS}}
        new_rows[pair.id] = row
        append_rows(verdicts_path, [row])

    try:
        if todo:
            client.map(ask, [(p, o) for p in todo for o in ORDERS], on_result=finished,
                       description=f"judge {task.name}/{name}")
    finally:
        cache.close()

    rows = [done.get(p.id) or new_rows[p.id] for p in pairs]
    tmp = verdicts_path.with_name(f".{VERDICTS_FILE}.tmp")  # rewritten in input order, without stale rows
    tmp.unlink(missing_ok=True)
    append_rows(tmp, rows)
    tmp.replace(verdicts_path)

    summary = summarize(rows)
    result = {"task": task.name, "a": cfg.a, "b": cfg.b, "split": split, "run": run.name, "path": str(run.path),
              "items": len(pairs), "predictions_a": len(ids_a), "predictions_b": len(ids_b), "shared": shared,
              **summary,
              "judge": {"model": client.model, "api_base": endpoint, "template": template.name,
                        "template_version": template.version, **decoding, "parse_retries": cfg.parse_retries},
              "requests": client.requests, "retries": client.retries, "cached": stats["cached"],
              "reasks": stats["reasks"], "new_items": len(todo),
              "predictions": {"a": str(path_a), "b": str(path_b)}, "verdicts": str(verdicts_path),
              "results": str(run.path / RESULTS_FILE), "cache": str(root / JUDGE_CACHE_FILE),
              "seconds": round(time.time() - started, 2)}
    write_json(run.path / RESULTS_FILE, result)
    run.log(f"judged {len(pairs)} items: win {summary['win']}, tie {summary['tie']}, lose {summary['lose']}, "
            f"unparsed {summary['unparsed']}, {client.requests} requests")
    run.finish(started, items=len(pairs), win_rate=summary["win_rate"], tie_rate=summary["tie_rate"],
               lose_rate=summary["lose_rate"])
    return result


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
