"""Preference data: TRL's preference format in all three shapes, `format: auto` telling it from the other formats,
every bad row as one line naming file, row and fix, the pairs encoded with and without a chat template, and the
bundled synth-sum-pref task (deterministic, each kind of damage present, recorded and of its kind)."""

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import FIXTURES
from xkd_cli.config.fields import TASK_HELP
from xkd_cli.core.errors import XKDError
from xkd_cli.data import synth
from xkd_cli.data.batches import IGNORE, make_pair_batch, special_ids
from xkd_cli.data.formats import detect_format, parse_preference
from xkd_cli.data.synth.preference import DAMAGES, damage
from xkd_cli.data.taskfile import get_task
from xkd_cli.data.tasks import TASKS, Example, PreferencePair
from xkd_cli.models.chat import encode_example_pairs, encode_example_prompts, encode_example_targets, use_chat_template
from xkd_cli.models.zoo import build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
PREFS = FIXTURES / "preference"


def write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def msgs(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in turns]


def task_file(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "prefs.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


# -- the three shapes ---------------------------------------------------------------------------------------

def test_explicit_prompt_as_strings():
    task = get_task(str(PREFS / "explicit.jsonl"))
    first, second = task.load_pairs("train")
    assert (first.id, first.example.prompt, first.chosen, first.rejected) == \
        ("0", "What is the capital of France?", "Paris.", "Lyon.")
    assert first.example.messages == (("user", "What is the capital of France?"),)
    assert first.meta == {"source": "hand-written"}  # the columns besides prompt, chosen and rejected
    assert (second.chosen, second.rejected) == ("mice", "mouses")
    # One target wanted (sft, distillation, eval): the chosen response, the same prompt.
    assert [(e.prompt, e.reference, e.messages) for e in task.load("train")] == \
        [(p.example.prompt, p.chosen, p.example.messages) for p in (first, second)]


def test_explicit_prompt_as_message_lists_with_the_task_system_message(tmp_path):
    task = get_task(str(task_file(tmp_path, data=str(PREFS / "conversational.jsonl"), system="Default system.")))
    first, second = task.load_pairs("validation")
    assert first.example.messages == (("system", "Be brief."), ("user", "2+2?"))
    assert (first.example.prompt, first.chosen, first.rejected) == ("2+2?", "4", "22")
    assert second.example.messages == (("system", "Default system."), ("user", "Say hi to Ann."))
    assert (second.chosen, second.rejected, second.meta) == ("Hi Ann!", "Hi Bo!", {})


def test_implicit_prompt_is_the_shared_opening_turns():
    task = get_task(str(PREFS / "implicit.jsonl"))
    first, second = task.load_pairs("test")
    assert first.example.messages == (("user", "Capital of France?"), ("assistant", "Paris"), ("user", "And of Italy?"))
    assert first.example.prompt == "Capital of France?\n\nParis\n\nAnd of Italy?"
    assert (first.chosen, first.rejected) == ("Rome", "Milan")
    assert second.example.messages == (("user", "Opposite of hot?"),)
    assert (second.chosen, second.rejected) == ("cold", "warm")


def test_train_fraction_and_limit_apply_to_pairs():
    task = get_task(str(PREFS / "explicit.jsonl"))
    assert [p.chosen for p in task.load_pairs("train", train_fraction=0.5)] == ["Paris."]
    assert [p.chosen for p in task.load_pairs("test", limit=1)] == ["Paris."]


# -- format: auto, and the formats that hold no pairs ------------------------------------------------------

def test_format_auto_recognises_preference_rows_and_leaves_the_others_as_they_were():
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}, "w") == "preference"
    assert detect_format({"chosen": [], "rejected": []}, "w") == "preference"
    assert detect_format({"prompt": "p", "chosen": "a"}, "w") == "preference"  # then: no 'rejected' column
    assert detect_format({"messages": [], "chosen": "a"}, "w") == "messages"
    assert detect_format({"prompt": "p", "completion": "c", "rejected": "r"}, "w") == "prompt-completion"
    with pytest.raises(XKDError, match=r"^w: neither a 'messages' column nor 'prompt' and 'completion' columns nor "
                                       r"'chosen' and 'rejected' columns \(columns found: text\)"):
        detect_format({"text": "t"}, "w")


def test_format_preference_in_a_task_file_and_formats_without_pairs(tmp_path):
    data = str(PREFS / "explicit.jsonl")
    task = get_task(str(task_file(tmp_path, name="prefs", data=data, format="preference", metric="exact")))
    assert task.preference and [p.rejected for p in task.load_pairs("train")] == ["Lyon.", "mouses"]
    assert [e.reference for e in task.load("train")] == ["Paris.", "mice"]
    messages = get_task(str(task_file(tmp_path, data=data, format="messages")))
    with pytest.raises(XKDError, match=r"task prefs \(.*prefs.yaml\) has 'format: messages', which holds no preference "
                                       r"pairs; give it rows with prompt, chosen and rejected"):
        messages.load_pairs("train")
    completions = write(tmp_path / "hi.jsonl", [{"prompt": "Say hi.", "completion": "Hi!"}])
    with pytest.raises(XKDError, match=r"hi.jsonl, row 1: no 'chosen' column; write each preference row"):
        get_task(str(completions)).load_pairs("train")
    with pytest.raises(XKDError, match=r"^task synth-sum has no preference pairs: use a preference task such as "
                                       r"synth-sum-pref"):
        get_task("synth-sum").load_pairs("validation")


# -- bad rows: one line naming the file, the row and the fix ------------------------------------------------

CONV_A = msgs(("user", "Hi?"), ("assistant", "Hello."))
CONV_B = msgs(("user", "Hi?"), ("assistant", "Go away."))
PAIR_ROW = '{"prompt": ..., "chosen": ..., "rejected": ...}'
SAME = "'chosen' and 'rejected' are the same response; a preference pair needs two different responses: " \
       "fix or drop that row"
BAD_PAIRS = [
    ({"prompt": "p", "chosen": "a"},
     f"no 'rejected' column; write each preference row as {PAIR_ROW}, or as "
     '{"chosen": [...], "rejected": [...]} conversations that share their opening turns'),
    ({"prompt": "p", "rejected": "b"}, "no 'chosen' column; write each preference row as"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, SAME),
    ({"prompt": "p", "chosen": "same", "rejected": " same\n"}, SAME),
    ({"chosen": CONV_A, "rejected": CONV_A}, SAME),
    ({"prompt": "p", "chosen": "a", "rejected": "  "},
     "the 'rejected' response is empty; give every row a non-empty 'rejected' response (or drop the row)"),
    ({"prompt": "p", "chosen": msgs(("assistant", "")), "rejected": "b"},
     "the 'chosen' response is empty; give every row a non-empty 'chosen' response (or drop the row)"),
    ({"chosen": CONV_A, "rejected": msgs(("user", "Hi?"), ("assistant", " "))},
     "the 'rejected' response is empty"),
    ({"chosen": CONV_A, "rejected": msgs(("user", "Yo?"), ("assistant", "Hm."))},
     "'chosen' and 'rejected' share no opening turn, so they have no common prompt; start both conversations with "
     "the same prompt turns, or add a 'prompt' column"),
    ({"chosen": CONV_A + msgs(("user", "More?")), "rejected": CONV_B},
     "the last message of 'chosen' is a user turn, not an assistant turn; end both conversations with the assistant "
     "reply"),
    ({"chosen": msgs(("user", "Hi?"), ("assistant", "Hello."), ("user", "Name?"), ("assistant", "Bo.")),
      "rejected": msgs(("user", "Hi?"), ("assistant", "Hey."), ("user", "Name?"), ("assistant", "Al."))},
     "'chosen' and 'rejected' differ before their last turn (they share 1 opening turns); after the shared prompt "
     "turns each must hold only its assistant reply"),
    ({"chosen": CONV_A, "rejected": CONV_A + msgs(("user", "And?"), ("assistant", "Bye."))},
     "'chosen' and 'rejected' differ before their last turn (they share 2 opening turns)"),
    ({"chosen": "Hello.", "rejected": "Go away."},
     "no 'prompt' column and 'chosen' is text; add a 'prompt' column, or write 'chosen' and 'rejected' as "
     "conversations (message lists) that share their opening turns"),
    ({"prompt": "p", "chosen": 4, "rejected": "b"},
     "column 'chosen' must be text or a list of {\"role\": ..., \"content\": ...} messages, got int; fix that row"),
    ({"prompt": 7, "chosen": "a", "rejected": "b"},
     "column 'prompt' must be a non-empty list of {\"role\": ..., \"content\": ...} messages, got int; fix that row"),
    ({"prompt": "p", "chosen": "a", "rejected": msgs(("assistant", "x"), ("assistant", "y"))},
     "column 'rejected' holds 2 messages; with a 'prompt' column each response is one assistant message: move the "
     "earlier turns into 'prompt'"),
    ({"prompt": "p", "chosen": msgs(("user", "a")), "rejected": "b"},
     "the 'chosen' message is a user turn, not an assistant turn; write the reply as "
     "[{\"role\": \"assistant\", \"content\": ...}]"),
    ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "b"},
     "message 1 of 'chosen' must be {\"role\": one of system, user, assistant, \"content\": text}"),
    ({"chosen": CONV_A, "rejected": None}, "column 'rejected' must be a non-empty list of"),
]


@pytest.mark.parametrize("row, message", BAD_PAIRS, ids=[str(i) for i in range(len(BAD_PAIRS))])
def test_bad_pairs_are_one_line_naming_file_and_row(tmp_path, row, message):
    data = write(tmp_path / "train.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(XKDError) as info:
        get_task(str(data)).load_pairs("train")
    text = str(info.value)
    assert text.startswith(f"{data}, row 2: {message}") and "\n" not in text, text
    with pytest.raises(XKDError) as info:  # the same row stops the commands that read one target per row
        get_task(str(data)).load("train")
    assert str(info.value) == text


@pytest.mark.parametrize("index", [0, 2, 8, 13])
def test_bad_pairs_through_the_command_line(xkd, runs, tmp_path, index):
    row, message = BAD_PAIRS[index]
    data = write(tmp_path / "prefs.jsonl", [row])
    result = xkd("sft", "--model", "tiny-gpt-small", "--data", data, "--max-steps", "1")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert f"{data}, row 1: {message}" in result.err
    assert not runs.exists()


def test_parse_preference_alone():
    pair = parse_preference({"prompt": msgs(("user", "q")), "chosen": "a", "rejected": msgs(("assistant", "b"))},
                            "w", system="S")
    assert (pair.messages, pair.text, pair.chosen, pair.rejected) == ((("system", "S"), ("user", "q")), "q", "a", "b")


# -- encoding: one prompt, two targets ---------------------------------------------------------------------

PAIR = PreferencePair(Example("0", "Plural of cat?", "cats", "Plural of cat?",
                              (("system", "Be brief."), ("user", "Plural of cat?"))), "cat", {"damage": "x"})


@pytest.fixture(scope="module")
def chat_model():
    return use_chat_template(build_tiny_model("tiny-chat-small"), "auto")


def test_pairs_encode_with_the_chat_template_as_the_whole_conversation(chat_model):
    tok = chat_model.tokenizer
    encoded = encode_example_pairs(chat_model, [PAIR], max_input_len=256, max_output_len=16)
    assert encoded.prompts == encode_example_prompts(chat_model, [PAIR.example], max_len=256)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert encoded.chosen == [tok("cats", add_special_tokens=False)["input_ids"] + [end]]
    assert encoded.rejected == [tok("cat", add_special_tokens=False)["input_ids"] + [end]]
    for response, target in (("cats", encoded.chosen[0]), ("cat", encoded.rejected[0])):
        conversation = [{"role": r, "content": c} for r, c in PAIR.example.messages + (("assistant", response),)]
        rendered = tok.apply_chat_template(conversation, tokenize=False)
        assert tok.decode(encoded.prompts[0] + target) == rendered[:rendered.rindex("<|im_end|>") + len("<|im_end|>")]


def test_pairs_encode_raw_without_a_template():
    raw = use_chat_template(build_tiny_model("tiny-chat-small"), "none")
    encoded = encode_example_pairs(raw, [PAIR, PAIR], max_input_len=256, max_output_len=2)
    tok = raw.tokenizer
    assert tok.decode(encoded.prompts[0]) == "Plural of cat?\n"  # the raw prompt, no system message
    assert encoded.chosen == encode_example_targets(raw, ["cats", "cats"], max_len=2)
    assert all(ids[-1] == tok.eos_token_id and len(ids) <= 2 for ids in encoded.chosen + encoded.rejected)


@pytest.mark.parametrize("model", ["tiny-chat-small", "tiny-t5-small"])
def test_a_pair_batch_holds_both_sides_after_the_same_prompts(model):
    loaded = use_chat_template(build_tiny_model(model), "auto")
    other = PreferencePair(Example("1", "Plural of mouse?", "mice", "Plural of mouse?"), "mouses")
    encoded = encode_example_pairs(loaded, [PAIR, other], max_input_len=64, max_output_len=16)
    pad, _, start = special_ids(loaded.tokenizer, loaded.model.config)
    batch = make_pair_batch(encoded.prompts, encoded.chosen, encoded.rejected, pad_id=pad, decoder_start_id=start,
                            is_encoder_decoder=loaded.is_encoder_decoder, ids=["0", "1"])
    assert batch.ids == ["0", "1", "0", "1"] and batch.labels.shape[0] == 4
    labels = [row[row != IGNORE].tolist() for row in batch.labels]
    assert labels == encoded.chosen + encoded.rejected
    inputs = batch.inputs["input_ids"]
    width = inputs.shape[1] - (batch.keep or 0) + 1 if not loaded.is_encoder_decoder else inputs.shape[1]
    assert inputs[:2, :width].tolist() == inputs[2:, :width].tolist()  # rows i and B+i read the same prompt


# -- the bundled synth-sum-pref ----------------------------------------------------------------------------

def pref_digest() -> str:
    rows = {split: synth.rows("synth-sum-pref", split) for split in synth.SPLITS}
    return hashlib.sha256(json.dumps(rows, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def test_synth_sum_pref_is_registered_and_listed():
    assert "synth-sum-pref" in TASKS.names() and "synth-sum-pref" in TASK_HELP
    assert all(name in TASK_HELP for name in TASKS.names())
    assert "synth-sum-pref" in synth.ALL_TASK_NAMES and "synth-sum-pref" not in synth.TASK_NAMES  # not tokenizer text


def test_synth_sum_pref_is_deterministic_in_a_fresh_process():
    rows = synth.rows("synth-sum-pref", "test")
    rows[0]["chosen"] = "mutated"
    assert synth.rows("synth-sum-pref", "test")[0]["chosen"] != "mutated"  # fresh copies
    code = "import sys; sys.path[:0] = sys.argv[1:]; from test_preference import pref_digest; print(pref_digest())"
    env = dict(os.environ, PYTHONHASHSEED="4321")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(ROOT)], env=env, capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.strip()
    assert out == pref_digest()


def test_synth_sum_pref_first_rows_are_pinned():
    first = synth.rows("synth-sum-pref", "validation")[:3]
    assert [(r["damage"], r["rejected"]) for r in first] == [
        ("wrong-entity", "Eight people have been treated in hospital after a blaze at a school in Dundee."),
        ("repeated-clause", "A warehouse in Bangor was badly damaged by fire, leaving eight people needing treatment, "
                            "leaving eight people needing treatment."),
        ("dropped-fact", "630 teachers will strike for 5 days over pay."),
    ]


def _one_word_swapped(chosen: str, rejected: str, document: str) -> bool:
    """One word differs, and what came in (a name, a number) is nowhere in the document."""
    a, b = chosen.split(), rejected.split()
    changed = [(x, y) for x, y in zip(a, b) if x != y]
    if len(a) != len(b) or len(changed) != 1:
        return False
    old, new = changed[0]
    if any(c.isdigit() for c in new):
        added = set(re.findall(r"\d+", new)) - set(re.findall(r"\d+", old))
        return len(added) == 1 and added.pop() not in re.findall(r"\d+", document)
    return not re.search(rf"\b{re.sub(r'[^A-Za-z]', '', new)}\b", document, re.IGNORECASE)


def _repeated(chosen: str, rejected: str) -> bool:
    k = len(rejected) - len(chosen)
    return k > 0 and any(rejected[i:i + k] == rejected[i + k:i + 2 * k] and rejected[:i] + rejected[i + k:] == chosen
                         for i in range(len(chosen)))


def _dropped(chosen: str, rejected: str) -> bool:
    k = len(chosen) - len(rejected)
    spans = [chosen[i:i + k] for i in range(len(rejected) + 1)
             if (chosen[:i] + chosen[i + k:]).lower() == rejected.lower()]
    fact = r"[A-Z\d]|\b(two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b"  # a name or a number
    return k > 0 and any(re.search(fact, span) for span in spans)


@pytest.mark.parametrize("split", synth.SPLITS)
def test_synth_sum_pref_rows_are_synth_sum_with_a_damaged_rejected_summary(split):
    rows, sums = synth.rows("synth-sum-pref", split), synth.rows("synth-sum", split)
    assert [(r["id"], r["prompt"], r["chosen"]) for r in rows] == [(r["id"], r["document"], r["summary"]) for r in sums]
    counts = Counter(r["damage"] for r in rows)
    assert set(counts) == set(DAMAGES) and max(counts.values()) - min(counts.values()) <= 1  # each kind, taking turns
    check = {"wrong-entity": lambda r: _one_word_swapped(r["chosen"], r["rejected"], r["prompt"]),
             "repeated-clause": lambda r: _repeated(r["chosen"], r["rejected"]),
             "dropped-fact": lambda r: _dropped(r["chosen"], r["rejected"])}
    for r in rows:
        assert r["chosen"] != r["rejected"] and r["rejected"].endswith("."), r
        assert check[r["damage"]](r), r


def test_synth_sum_pref_through_the_task():
    task = get_task("synth-sum-pref")
    pairs = task.load_pairs("validation", limit=6)
    assert [p.meta["damage"] for p in pairs] == list(DAMAGES) * 2
    sums = get_task("synth-sum").load("validation", limit=6)
    assert [p.example for p in pairs] == sums == task.load("validation", limit=6)  # eval scores the chosen summary
    assert task.score([p.chosen for p in pairs], [p.chosen for p in pairs])["rouge2"] == pytest.approx(100.0)
    assert task.score([p.rejected for p in pairs], [p.chosen for p in pairs])["rouge2"] < 100.0


def test_synth_sum_pref_reads_a_data_path_in_trl_format(tmp_path):
    data = write(tmp_path / "validation.jsonl", [{"prompt": "A long text.", "chosen": "Short.", "rejected": "Long.",
                                                  "id": "x1", "damage": "hand-made"}])
    (pair,) = get_task("synth-sum-pref").load_pairs("validation", data=tmp_path)
    assert (pair.id, pair.example.prompt, pair.example.source, pair.chosen, pair.rejected, pair.meta) == \
        ("x1", "summarize: A long text.", "A long text.", "Short.", "Long.", {"id": "x1", "damage": "hand-made"})


def test_damage_never_returns_the_summary_and_refuses_unknown_kinds():
    summary = "Eight people have been treated in hospital after a blaze at a school in Cardiff."
    for kind in DAMAGES:
        assert damage(summary, "A document about Cardiff.", kind, random.Random(0)) not in (None, summary)
    assert damage("No facts here.", "", "dropped-fact", random.Random(0)) is None
    with pytest.raises(ValueError, match="unknown damage 'typo'"):
        damage(summary, "", "typo", random.Random(0))


def test_eval_runs_on_synth_sum_pref(xkd, runs):
    result = xkd("eval", "--task", "synth-sum-pref", "--model", "tiny-t5-small", "--limit", "2",
                 "--max-new-tokens", "4", "--json")
    assert result.code == 0, result.err
    assert result.json()["headline"] == "rouge2"
