"""The bundled synthetic tasks (xkd_cli.data.synth) and the shared byte-level tokenizer built from them."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from xkd_cli.data import metrics, synth
from xkd_cli.core.errors import XKDError
from xkd_cli.data.synth.common import num_en
from xkd_cli.data.synth.summarization import SUM_MAX_WORDS, SUM_MIN_WORDS, TOWNS
from xkd_cli.data.synth.translation import ADJECTIVES, NOUN_BY_EN, NP, PRONOUNS, VERBS, Clause, MTSentence
from xkd_cli.data.taskfile import get_task

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_FILE = ROOT / "xkd_cli" / "assets" / "tokenizer" / "tokenizer.json"
ADJ = {a.en: a for a in ADJECTIVES}
VERB = {v.en: v for v in VERBS}
PRONOUN = {p.en: p for p in PRONOUNS}

SOURCE_KEY = {"synth-sum": lambda r: r["document"], "synth-mt": lambda r: r["translation"]["en"],
              "synth-gsm": lambda r: r["question"]}


def digest(task: str) -> str:
    rows = {split: synth.rows(task, split) for split in synth.SPLITS}
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ---------------------------------------------------------------- all three tasks

@pytest.mark.parametrize("task", synth.TASK_NAMES)
def test_deterministic_and_returns_copies(task):
    first = synth.rows(task, "train")
    first[0]["mutated"] = True
    assert synth.rows(task, "train") == synth.rows(task, "train")
    assert "mutated" not in synth.rows(task, "train")[0]


def test_same_rows_in_a_fresh_process_with_another_hash_seed():
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.test_synth import digest, synth; "
            "print(' '.join(digest(t) for t in synth.TASK_NAMES))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == [digest(t) for t in synth.TASK_NAMES]


@pytest.mark.parametrize("task", synth.TASK_NAMES)
def test_split_sizes_and_disjoint_splits(task):
    assert synth.SPLIT_SIZES == {"train": 2000, "validation": 200, "test": 200}
    sources = {split: [SOURCE_KEY[task](r) for r in synth.rows(task, split)] for split in synth.SPLITS}
    for split, keys in sources.items():
        assert len(keys) == synth.SPLIT_SIZES[split]
        assert len(set(keys)) == len(keys), f"duplicate {task} rows in {split}"
    assert not set(sources["train"]) & set(sources["validation"])
    assert not set(sources["train"]) & set(sources["test"])
    assert not set(sources["validation"]) & set(sources["test"])


@pytest.mark.parametrize("task", synth.TASK_NAMES)
def test_references_score_perfectly_against_themselves(task):
    t = get_task(task)
    refs = [e.reference for e in t.load(t.eval_split)]
    assert t.score(refs, refs)[t.headline] == pytest.approx(100.0)


def test_unknown_task_or_split():
    with pytest.raises(XKDError, match="synth-sum, synth-mt, synth-gsm"):
        synth.rows("xsum", "train")
    with pytest.raises(XKDError, match="train, validation, test"):
        synth.rows("synth-mt", "dev")


# ---------------------------------------------------------------- synth-sum

def sentences(document: str) -> list[str]:
    return re.split(r"(?<=[.!?\"])\s+(?=[A-Z0-9\"])", document)


def bigrams(text: str) -> set[tuple[str, str]]:
    words = re.findall(r"[\w£%'-]+", text.lower())
    return set(zip(words, words[1:]))


def test_sum_lengths_and_ids():
    rows = synth.rows("synth-sum", "validation")
    assert [r["id"] for r in rows] == [f"validation-{i:05d}" for i in range(200)]
    for r in synth.rows("synth-sum", "train") + rows:
        assert SUM_MIN_WORDS <= len(r["document"].split()) <= SUM_MAX_WORDS
        assert 10 <= len(r["summary"].split()) <= 20
        assert r["summary"].endswith(".") and len(sentences(r["summary"])) == 1


def test_sum_summaries_are_abstractive_and_faithful():
    for r in synth.rows("synth-sum", "train"):
        doc, summary = r["document"], r["summary"]
        assert summary not in sentences(doc), "summary copies a document sentence"
        assert bigrams(summary) - bigrams(doc), f"summary has no new wording: {summary}"
        for number in re.findall(r"\d+", summary):  # every number in the summary comes from the document
            n = int(number)
            assert re.search(rf"(?<!\d){number}(?!\d)", doc) or (n < 13 and num_en(n) in doc.lower()), (summary, doc)


def test_sum_documents_have_distractors_and_varied_order():
    rows = synth.rows("synth-sum", "train")
    assert len({r["summary"].split()[0] for r in rows}) > 20  # many event types and entities
    # distractor sentences name other towns: most documents mention more towns than their summary
    extra_towns = sum(len({t for t in TOWNS if t in r["document"]} - {t for t in TOWNS if t in r["summary"]}) >= 1
                      for r in rows)
    assert extra_towns > 0.9 * len(rows)
    assert len({r["document"].split()[0] for r in rows}) > 30  # documents do not all open the same way


# ---------------------------------------------------------------- synth-mt

@pytest.mark.parametrize("noun, det, plural, adj, case, german, english", [
    ("dog", "indef", False, "big", "nom", "ein großer Hund", "a big dog"),
    ("dog", "indef", False, "big", "acc", "einen großen Hund", "a big dog"),
    ("dog", "indef", False, "big", "dat", "einem großen Hund", "a big dog"),
    ("woman", "def", False, "old", "nom", "die alte Frau", "the old woman"),
    ("woman", "poss:my", False, "old", "dat", "meiner alten Frau", "my old woman"),
    ("child", "def", True, "small", "dat", "den kleinen Kindern", "the small children"),
    ("child", "indef", False, "small", "acc", "ein kleines Kind", "a small child"),
    ("book", "num:3", True, "expensive", "acc", "drei teure Bücher", "three expensive books"),
    ("book", "num:3", True, "expensive", "dat", "drei teuren Büchern", "three expensive books"),
    ("house", "this", False, None, "dat", "diesem Haus", "this house"),
    ("cats", "this", True, None, "nom", "diese Katzen", "these cats"),
    ("room", "poss:our", False, "dark", "nom", "unser dunkles Zimmer", "our dark room"),
    ("horse", "many", True, "white", "dat", "vielen weißen Pferden", "many white horses"),
    ("apple", "indef", False, None, "acc", "einen Apfel", "an apple"),
    ("car", "bare", True, "new", "nom", "neue Autos", "new cars"),
    ("dog", "poss:their", True, "tired", "nom", "ihre müden Hunde", "their tired dogs"),
    ("friend", "num:25", True, None, "dat", "25 Freunden", "25 friends"),
])
def test_german_noun_phrase_agreement(noun, det, plural, adj, case, german, english):
    noun = NOUN_BY_EN.get(noun) or next(n for n in NOUN_BY_EN.values() if n.en_pl == noun)
    np_ = NP(noun, det, plural, ADJ[adj] if adj else None)
    assert np_.de(case) == german
    assert np_.en() == english


def test_german_clauses_word_order_and_case():
    man = NP(NOUN_BY_EN["man"], "def", False)
    dog = NP(NOUN_BY_EN["dog"], "indef", False, ADJ["black"])
    child = NP(NOUN_BY_EN["child"], "def", False)
    garden = NP(NOUN_BY_EN["garden"], "def", False, ADJ["big"])
    yesterday = ("yesterday", "gestern")

    bought = Clause("act", "past", man, VERB["buy"], dog, place=garden, time=yesterday, front_time=True)
    assert MTSentence(bought).en() == "Yesterday the man bought a black dog in the big garden."
    assert MTSentence(bought).de() == "Gestern hat der Mann einen schwarzen Hund im großen Garten gekauft."

    gives = Clause("act", "present", PRONOUN["she"], VERB["give"], NP(NOUN_BY_EN["book"], "indef", False),
                   iobj=child)
    tired = Clause("be", "present", PRONOUN["I"], adj=ADJ["tired"])
    assert MTSentence(gives, because=tired).en() == "She gives the child a book because I am tired."
    assert MTSentence(gives, because=tired).de() == "Sie gibt dem Kind ein Buch, weil ich müde bin."

    wants = Clause("act", "want", PRONOUN["we"], VERB["see"], dog)
    assert MTSentence(wants, says=child).en() == "The child says that we want to see a black dog."
    assert MTSentence(wants, says=child).de() == "Das Kind sagt, dass wir einen schwarzen Hund sehen wollen."

    there = Clause("exist", "past", obj=NP(NOUN_BY_EN["cat"], "num:2", True), place=garden)
    assert MTSentence(there).en() == "There were two cats in the big garden."
    assert MTSentence(there).de() == "Es gab zwei Katzen im großen Garten."


def test_mt_corpus_spot_checks():
    """Sentence-initial "The ADJ NOUN" (singular subject) must start with the nominative weak form."""
    checked = 0
    for r in synth.rows("synth-mt", "train"):
        en, de = r["translation"]["en"], r["translation"]["de"]
        assert all(text[0].isupper() or text[0].isdigit() for text in (en, de))  # "25 dogs ..." may open
        assert en.endswith(".") and de.endswith(".")
        words = en.split()
        if words[0] == "The" and words[1] in ADJ and words[2] in NOUN_BY_EN:
            noun, adj = NOUN_BY_EN[words[2]], ADJ[words[1]]
            article = {"m": "Der", "f": "Die", "n": "Das"}[noun.gender]
            assert de.startswith(f"{article} {adj.stem}e {noun.de} "), (en, de)
            checked += 1
        if " weil " in de:
            assert ", weil " in de
    assert checked > 20


def test_mt_covers_the_grammar():
    text = " ".join(r["translation"]["de"] for r in synth.rows("synth-mt", "train"))
    for marker in ("dem ", "den ", "einem ", "einen ", "im ", ", weil ", ", dass ", "Es gibt", "hat ", "will ",
                   "kann ", "Gestern "):
        assert marker in text, marker


# ---------------------------------------------------------------- synth-gsm

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def test_gsm_solutions_evaluate_to_the_stated_answer():
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    for r in synth.rows("synth-gsm", "train") + synth.rows("synth-gsm", "test"):
        lines = r["answer"].split("\n")
        answer = int(lines[-1].removeprefix("#### "))
        assert lines[-1] == f"#### {answer}" and lines[-2] == f"The answer is {answer}."
        steps = [EQUATION.search(line) for line in lines[:-2]]
        assert all(steps), r["answer"]
        assert 2 <= len(steps) <= 4
        for step in steps:
            a, op, b, c = step.groups()
            assert ops[op](int(a), int(b)) == int(c), step.group(0)
        assert int(steps[-1].group(4)) == answer
        assert metrics.gold_answer(r["answer"]) == metrics.extract_answer(r["answer"]) == str(answer)


def test_gsm_questions_are_varied():
    rows = synth.rows("synth-gsm", "train")
    openings = {" ".join(r["question"].split()[1:3]) for r in rows}
    assert len(openings) > 20
    assert len({r["answer"].split("\n")[-1] for r in rows}) > 100  # many different answers


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_special_tokens_and_size():
    tok = Tokenizer.from_file(str(TOKENIZER_FILE))
    assert [tok.token_to_id(t) for t in ("<pad>", "</s>", "<unk>")] == [0, 1, 2]
    assert tok.get_vocab_size() == 2048
    assert tok.post_processor is None  # callers append </s> themselves


@pytest.mark.parametrize("text", [
    "Grüße aus Köln: Äpfel, Öl und Übungen – süß!",
    "emoji 🎉👍🏽 and ZWJ 👩‍👩‍👧",
    "中文测试，日本語のテキスト",
    "line one\nline two\r\n\ttabbed  double  spaces ",
    "The answer is $1,234.50.\n#### 1234.5",
    " leading space and trailing\n",
    "",
])
def test_tokenizer_round_trips_any_utf8(text):
    tok = Tokenizer.from_file(str(TOKENIZER_FILE))
    ids = tok.encode(text, add_special_tokens=False).ids
    assert 2 not in ids  # byte-level: nothing is unknown
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_is_compact_on_synth_data():
    tok = Tokenizer.from_file(str(TOKENIZER_FILE))
    example = get_task("synth-mt").load("validation", limit=50)
    mean = sum(len(tok.encode(e.prompt).ids) for e in example) / len(example)
    assert mean < 1.5 * sum(len(e.prompt.split()) for e in example) / len(example)


def test_tokenizer_asset_is_up_to_date():
    """The committed tokenizer equals a fresh deterministic build (regenerate after changing the generators)."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_tokenizer.py"), "--check"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
