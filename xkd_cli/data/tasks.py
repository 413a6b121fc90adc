"""Tasks: where the data comes from, how rows become model inputs, and how outputs are scored.

A :class:`Task` turns rows in the schema of its Hugging Face dataset into :class:`Example` s
(id, prompt, reference, source) and scores predictions with :mod:`xkd_cli.data.metrics`.

Row schemas (the real datasets' own column names):

- summarisation (``xsum``, ``synth-sum``): ``document``, ``summary`` and optionally ``id``
  (the row index is used when there is no ``id`` column).
- translation (``wmt``, ``synth-mt``): ``translation`` = ``{"de": ..., "en": ...}``. In CSV files
  either two plain columns ``en`` and ``de``, or a ``translation`` column holding that JSON
  object as text (flat ``en``/``de`` columns are accepted in every format). Ids are row indices.
- math (``gsm8k``, ``synth-gsm``): ``question`` and ``answer`` (ending ``#### N``). Ids are row
  indices.
- preference pairs (``synth-sum-pref``): TRL's preference format (:func:`xkd_cli.data.formats.parse_preference`),
  ``prompt`` (the source), ``chosen``, ``rejected``, optionally ``id``; other columns (``damage``) are kept as
  the pair's ``meta``. ``Task.load_pairs`` gives :class:`PreferencePair` s; ``Task.load`` gives the chosen
  responses as the references, so sft, distillation and evaluation run on a preference task unchanged.

Where rows come from (``Task.load(split, data=...)``):

- ``data=None``: bundled tasks generate their rows (:mod:`xkd_cli.data.synth`); real tasks call
  ``datasets.load_dataset`` (needs the network; any failure says to pass ``--data PATH``).
- ``data=FILE`` (``.jsonl``, ``.json``, ``.csv``, ``.parquet``): that file serves every split.
  A ``.json`` file holds a list of row objects, or ``{"data": [...]}`` as HF's JSON exports do.
- ``data=DIR``: ``DIR/<split>.<ext>`` for split in train/validation/test, any of those formats.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from xkd_cli.config.evaluation import SPLITS
from xkd_cli.data import formats, metrics, synth
from xkd_cli.core.errors import XKDError
from xkd_cli.core.hub import hub_unreachable
from xkd_cli.core.registry import Registry

FILE_FORMATS = (".jsonl", ".json", ".csv", ".parquet")
WMT_TRAIN_PAIRS = 10_000  # the paper trains on the first 10k pairs of WMT14 de-en


@dataclass(frozen=True)
class Example:
    id: str          # stable unique id within its split (string)
    prompt: str      # the full model input (task prefix / few-shot exemplars included)
    reference: str   # target text: trained on and scored against
    source: str      # the raw input without prefix (document / English sentence / question), for judges
    # Chat prompt turns as (role, content) pairs, system first, when the data has them (one's own data,
    # xkd_cli.data.taskfile); None: a chat model sees ``prompt`` as one user turn.
    messages: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a chosen and a rejected response (``Task.load_pairs``)."""
    example: Example  # the prompt (id, prompt, source, messages) with the chosen response as its reference
    rejected: str     # never the same text as the chosen response
    meta: dict[str, Any] = field(default_factory=dict, hash=False)  # the row's other columns, e.g. damage

    @property
    def id(self) -> str:
        return self.example.id

    @property
    def chosen(self) -> str:
        return self.example.reference


# ----------------------------------------------------------------------------------------
# Reading rows from files
# ----------------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise XKDError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise XKDError(f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    # split on "\n" only: str.splitlines() would also split on U+2028, which JSON strings may contain
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise XKDError(f"{path}, line {lineno}: malformed JSON ({exc.msg}); "
                           "fix that line: a .jsonl file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise XKDError(f"{path}, line {lineno}: expected a JSON object with named columns, "
                           f"got {type(row).__name__}; write one {{\"column\": value}} object per line")
        rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict]:
    try:
        payload = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise XKDError(f"{path}, line {exc.lineno}: malformed JSON ({exc.msg}); fix the file "
                       "(or use .jsonl for one object per line)") from None
    rows = payload.get("data") if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise XKDError(f"{path}: a .json data file must hold a list of row objects or "
                       "{\"data\": [row objects]}; convert it to that layout")
    return rows


def _read_csv(path: Path) -> list[dict]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():  # more / fewer fields than the header
                raise XKDError(f"{path}, line {reader.line_num}: the number of fields does not match the "
                               f"header ({len(reader.fieldnames or [])} columns); quote fields that "
                               "contain commas or newlines")
            rows.append(row)
    except csv.Error as exc:
        raise XKDError(f"{path}, line {reader.line_num}: malformed CSV ({exc}); fix the quoting") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow  # optional: only .parquet files need it
    import pyarrow.parquet as pq  # optional: only .parquet files need it

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as exc:
        raise XKDError(f"{path}: not a readable parquet file ({exc}); re-export it as parquet or jsonl") from None


_READERS: dict[str, Callable[[Path], list[dict]]] = {
    ".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet,
}


def read_rows(path: Path) -> list[dict]:
    """All rows of one data file, chosen by extension (see :data:`FILE_FORMATS`)."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise XKDError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
                       f"use one of {', '.join(FILE_FORMATS)}")
    return reader(path)


def split_file(data: Path, split: str) -> Path:
    """The file that holds ``split``: ``data`` itself, or ``data/<split>.<ext>`` in a directory."""
    if not data.exists():
        raise XKDError(f"data path {data} does not exist: pass a data file or a directory with "
                       "train/validation/test files")
    if data.is_file():
        return data
    found = [data / f"{split}{ext}" for ext in FILE_FORMATS if (data / f"{split}{ext}").is_file()]
    expected = ", ".join(f"{split}{ext}" for ext in FILE_FORMATS)
    if not found:
        raise XKDError(f"{data} has no {split} split: add one of {expected}")
    if len(found) > 1:
        raise XKDError(f"{data} has several {split} files ({', '.join(p.name for p in found)}): keep only one")
    return found[0]


# ----------------------------------------------------------------------------------------
# Row schemas
# ----------------------------------------------------------------------------------------

def _column(row: dict, name: str, where: str) -> Any:
    if name not in row:
        found = ", ".join(map(str, row)) or "none"
        raise XKDError(f"{where}: missing column {name!r} (columns found: {found}); "
                       "rename your columns to the task's schema")
    return row[name]


def _text(value: Any, name: str, where: str) -> str:
    if not isinstance(value, str):
        raise XKDError(f"{where}: column {name!r} must be text, got {type(value).__name__} ({value!r:.40}); "
                       "fix that value in the data")
    return value


def _text_column(row: dict, name: str, where: str) -> str:
    return _text(_column(row, name, where), name, where)


def _row_id(row: dict, index: int, where: str) -> str:
    """The ``id`` column when present (text or integer), else the row index."""
    if "id" not in row:
        return str(index)
    value = row["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise XKDError(f"{where}: column 'id' must be text or an integer, got {type(value).__name__}; fix it")
    return str(value)


def _parse_sum(row: dict, index: int, where: str) -> tuple[str, str, str]:
    return _row_id(row, index, where), _text_column(row, "document", where), _text_column(row, "summary", where)


def _parse_mt(row: dict, index: int, where: str) -> tuple[str, str, str]:
    """English -> German: (id, English source, German reference)."""
    if "translation" in row or not ("en" in row or "de" in row):
        pair = _column(row, "translation", where)
        if isinstance(pair, str):  # CSV: the translation object stored as JSON text
            try:
                pair = json.loads(pair)
            except json.JSONDecodeError:
                raise XKDError(f"{where}: column 'translation' is not a JSON object like "
                               "{\"de\": ..., \"en\": ...}; fix it or use plain 'en' and 'de' columns") from None
        if not isinstance(pair, dict):
            raise XKDError(f"{where}: column 'translation' must map languages to text like "
                           f"{{\"de\": ..., \"en\": ...}}, got {type(pair).__name__}")
        where = f"{where}, translation"
    else:
        pair = row
    return str(index), _text_column(pair, "en", where), _text_column(pair, "de", where)


def _parse_gsm(row: dict, index: int, where: str) -> tuple[str, str, str]:
    question, answer = _text_column(row, "question", where), _text_column(row, "answer", where)
    if "####" not in answer:
        raise XKDError(f"{where}: the answer does not end with '#### <number>'; "
                       "GSM8K-style answers need that final line to be scored")
    return str(index), question, answer


_PARSERS: dict[str, Callable[[dict, int, str], tuple[str, str, str]]] = {
    "sum": _parse_sum, "mt": _parse_mt, "gsm": _parse_gsm,
}


# ----------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------

# The 8 chain-of-thought exemplars of Wei et al. (2022) for math word problems, the few-shot
# prompt GKD (and the paper, which follows GKD) uses for GSM8K.
GSM8K_EXEMPLARS: tuple[tuple[str, str], ...] = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. "
     "So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops "
     "did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he "
     "have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
     "5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday "
     "to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 "
     "computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many "
     "golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 "
     "more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 "
     "dollars left. 23 - 15 is 8. The answer is 8."),
)


def qa_prompt(question: str) -> str:
    """Zero-shot question prompt (synth-gsm: tiny models have short contexts)."""
    return f"Q: {question}\nA:"


GSM8K_FEW_SHOT_PREFIX = "".join(f"{qa_prompt(q)} {a}\n\n" for q, a in GSM8K_EXEMPLARS)


def gsm8k_prompt(question: str) -> str:
    """8-shot chain-of-thought prompt followed by the question."""
    return GSM8K_FEW_SHOT_PREFIX + qa_prompt(question)


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda source: prefix + source


# ----------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    name: str
    family: str          # "sum" | "mt" | "gsm": which row schema and parser
    metric: str          # "rouge" | "bleu" | "accuracy"
    headline: str        # key of the headline metric in score()'s result
    eval_split: str      # the split the paper evaluates on
    hf_id: str | None
    hf_config: str | None
    bundled: bool        # rows generated offline by xkd_cli.data.synth when no data path is given
    make_prompt: Callable[[str], str] = field(repr=False, compare=False)
    train_cap: int | None = None  # keep only the first N training rows (WMT: 10k pairs)
    description: str = ""

    # Rows are preference pairs (TRL's prompt/chosen/rejected) and load_pairs serves them: declared by a bundled
    # preference task or a task file's 'format: preference' (with 'format: auto', load_pairs reads the rows to tell).
    preference: bool = False

    def load(self, split: str, data: str | Path | None = None, train_fraction: float = 1.0,
             limit: int | None = None) -> list[Example]:
        """Examples of one split, in data order (a preference task's: the prompts with their chosen responses).

        ``train_fraction`` keeps the first ``ceil(F * n)`` (at least 1) rows of the *train* split;
        ``limit`` then keeps the first N rows of any split. Only kept rows are parsed.
        """
        return self._examples(*self._kept_rows(split, data, train_fraction, limit))

    def load_pairs(self, split: str, data: str | Path | None = None, train_fraction: float = 1.0,
                   limit: int | None = None) -> list[PreferencePair]:
        """Preference pairs of one split, in data order; ``train_fraction`` and ``limit`` as in :meth:`load`."""
        return self._pairs(*self._kept_rows(split, data, train_fraction, limit))

    def _kept_rows(self, split: str, data: str | Path | None, train_fraction: float,
                   limit: int | None) -> tuple[list[dict], str]:
        if split not in SPLITS:
            raise XKDError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) \
                or not 0 < train_fraction <= 1:
            raise XKDError(f"train fraction must be in (0, 1], got {train_fraction!r}: "
                           "pass e.g. --train-fraction 0.1 for the first 10% of the training set")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise XKDError(f"limit must be a positive whole number of examples, got {limit!r}")

        rows, origin = self._rows(split, data)
        if not rows:
            raise XKDError(f"{origin} has no rows: give the {split} split at least one example")
        if split == "train":
            if self.train_cap is not None:
                rows = rows[: self.train_cap]
            rows = rows[: max(1, math.ceil(train_fraction * len(rows)))]
        if limit is not None:
            rows = rows[:limit]
        return rows, origin

    @property
    def keep_prompt_end(self) -> bool:
        """Few-shot prompts carry the question at the end: truncate those from the left."""
        return self.family == "gsm"

    def score(self, predictions: Sequence[str], references: Sequence[str], **kw) -> dict[str, float | str]:
        """The task's metric (``self.headline`` is the key to report first)."""
        return metrics.score(self.metric, predictions, references, **kw)

    # -- internals --
    def _rows(self, split: str, data: str | Path | None) -> tuple[list[dict], str]:
        if data is not None:
            path = split_file(Path(data), split)
            return read_rows(path), str(path)
        if self.bundled:
            return synth.rows(self.name, split), f"bundled task {self.name} [{split}]"
        return self._hub_rows(split), f"{self.hf_id} [{split}]"

    def _hub_rows(self, split: str) -> list[dict]:
        """Download/load from the Hugging Face Hub (never used by tests: they pass ``data``)."""
        spec = f"{split}[:{self.train_cap}]" if split == "train" and self.train_cap else split
        offline = hub_unreachable()
        try:
            import datasets  # heavy, and only the Hugging Face Hub's tasks need it

            return datasets.load_dataset(self.hf_id, self.hf_config, split=spec).to_list()
        except Exception as exc:  # noqa: BLE001 - network, auth, missing-split... all mean "use local files"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if offline:
                raise XKDError(f"could not load {self.hf_id} split {split}: {offline}, and it is not in the local "
                               "Hugging Face cache. Connect and retry, or pass --data PATH with local "
                               "train/validation/test files in the same schema") from None
            raise XKDError(f"could not load {self.hf_id} ({self.hf_config or 'default'}) split {split} from the "
                           f"Hugging Face Hub ({first_line[:200]}); pass --data PATH with local "
                           "train/validation/test files in the same schema") from None

    def _examples(self, rows: list[dict], origin: str) -> list[Example]:
        if self.preference:
            return [pair.example for pair in self._pairs(rows, origin)]
        parse = _PARSERS[self.family]
        examples, first_row_of_id = [], {}
        for index, row, where in numbered_rows(rows, origin):
            ex_id, source, reference = parse(row, index, where)
            _check_unique(ex_id, index, first_row_of_id, where)
            examples.append(Example(ex_id, self.make_prompt(source), reference, source))
        return examples

    def _pairs(self, rows: list[dict], origin: str) -> list[PreferencePair]:
        if not self.preference:
            raise XKDError(f"task {self.name} has no preference pairs: use a preference task such as synth-sum-pref, "
                           "or a task file whose rows are in TRL's preference format (prompt, chosen, rejected)")
        pairs, first_row_of_id = [], {}
        for index, row, where in numbered_rows(rows, origin):
            turns = formats.parse_preference(row, where)
            ex_id = _row_id(row, index, where)
            _check_unique(ex_id, index, first_row_of_id, where)
            example = Example(ex_id, self.make_prompt(turns.text), turns.chosen, turns.text)
            pairs.append(PreferencePair(example, turns.rejected, formats.extra_columns(row)))
        return pairs


def numbered_rows(rows: list[dict], origin: str) -> Iterator[tuple[int, dict, str]]:
    """(index, row, "ORIGIN, row N") of every row, refusing one that is not an object with named columns."""
    for index, row in enumerate(rows):
        where = f"{origin}, row {index + 1}"
        if not isinstance(row, dict):
            raise XKDError(f"{where}: expected a row object with named columns, got {type(row).__name__}")
        yield index, row, where


def _check_unique(ex_id: str, index: int, first_row_of_id: dict[str, int], where: str) -> None:
    if ex_id in first_row_of_id:
        raise XKDError(f"{where}: duplicate id {ex_id!r} (also row {first_row_of_id[ex_id] + 1}); "
                       "ids must be unique within a split")
    first_row_of_id[ex_id] = index


_SUM = dict(family="sum", metric="rouge", headline="rouge2", eval_split="validation",
            make_prompt=_prefixed("summarize: "))
_MT = dict(family="mt", metric="bleu", headline="bleu", eval_split="validation",
           make_prompt=_prefixed("translate English to German: "))
_GSM = dict(family="gsm", metric="accuracy", headline="accuracy", eval_split="test")

TASKS: Registry[Task] = Registry("task")
for _task in (
    Task("xsum", hf_id="EdinburghNLP/xsum", hf_config=None, bundled=False, **_SUM,
         description="XSum news summarisation (ROUGE-2)"),
    Task("wmt", hf_id="wmt/wmt14", hf_config="de-en", bundled=False, train_cap=WMT_TRAIN_PAIRS, **_MT,
         description="WMT14 English->German, first 10k training pairs (BLEU)"),
    Task("gsm8k", hf_id="openai/gsm8k", hf_config="main", bundled=False, make_prompt=gsm8k_prompt, **_GSM,
         description="GSM8K math word problems, 8-shot chain of thought (accuracy)"),
    Task("synth-sum", hf_id=None, hf_config=None, bundled=True, **_SUM,
         description="bundled offline news summarisation (ROUGE-2)"),
    Task("synth-mt", hf_id=None, hf_config=None, bundled=True, **_MT,
         description="bundled offline English->German translation (BLEU)"),
    Task("synth-gsm", hf_id=None, hf_config=None, bundled=True, make_prompt=qa_prompt, **_GSM,
         description="bundled offline arithmetic word problems, zero-shot (accuracy)"),
    Task("synth-sum-pref", hf_id=None, hf_config=None, bundled=True, preference=True, **_SUM,
         description="bundled offline preference pairs: synth-sum's reference summary over a damaged one "
                     "(ROUGE-2 of generations against the chosen summary)"),
):
    TASKS.register(_task.name, _task)

