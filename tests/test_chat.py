"""Chat templates on a tiny ChatML model: rendered prompts, completion-only labels ending at the end-of-turn
token, generation that stops there with no special token in the text, a teacher/student template mismatch
refused before any compute, and every command end to end on a messages file (judge on the loopback server)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor

from openai_server import FakeOpenAI
from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import IGNORE
from xkd_cli.data.tasks import Example
from xkd_cli.evaluation.evaluate import predict
from xkd_cli.data.taskfile import get_task
from xkd_cli.models.chat import check_same_prompts, encode_example_prompts, use_chat_template
from xkd_cli.models.generate import Sampling
from xkd_cli.models.zoo import CHATML_TEMPLATE, build_tiny_model
from xkd_cli.training.sources import EncodedSet

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "own-data"
CHAT = (("system", "Be brief."), ("user", "Plural of cat?"))
EXAMPLE = Example("0", "Plural of cat?", "cats", "Plural of cat?", CHAT)


@pytest.fixture(scope="module")
def chat_model():
    return use_chat_template(build_tiny_model("tiny-chat-small"), "auto")


def test_prompts_are_rendered_and_labels_cover_the_completion_only(chat_model):
    tok = chat_model.tokenizer
    (ids,) = encode_example_prompts(chat_model, [EXAMPLE], max_len=256)
    assert tok.decode(ids) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nPlural of cat?<|im_end|>\n"
                               "<|im_start|>assistant\n")
    data = EncodedSet([EXAMPLE], chat_model, max_input_len=256, max_output_len=16)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert data.targets == [tok("cats", add_special_tokens=False)["input_ids"] + [end]]
    batch = data.batch([0])
    labels = batch.labels[0][batch.labels[0] != IGNORE].tolist()
    assert labels == data.targets[0]  # no prompt token is ever a label
    assert batch.inputs["input_ids"].shape[1] == len(ids) + len(data.targets[0]) - 1
    assert use_chat_template(build_tiny_model("tiny-chat-small"), "none").chat is None
    assert use_chat_template(build_tiny_model("tiny-t5-small"), "auto").chat is None  # T5 never


class Script(LogitsProcessor):
    """Forces the generated tokens to follow ``tokens`` (then repeats the last one)."""

    def __init__(self, start: int, tokens: list[int]):
        self.start, self.tokens = start, tokens

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, -1e9)
        forced[:, self.tokens[min(step, len(self.tokens) - 1)]] = 0
        return forced


def test_generation_stops_at_end_of_turn_and_shows_no_special_token(chat_model, monkeypatch):
    tok = chat_model.tokenizer
    word = tok("cats", add_special_tokens=False)["input_ids"]
    start_tok, end_tok = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    (ids,) = encode_example_prompts(chat_model, [EXAMPLE], max_len=256)
    script = word + [start_tok] + [end_tok] + word * 5
    generate = chat_model.model.generate

    def scripted(*args, **kw):
        kw.setdefault("logits_processor", []).append(Script(len(ids), script))
        return generate(*args, **kw)

    monkeypatch.setattr(chat_model.model, "generate", scripted)
    (texts,) = predict(chat_model, get_task("synth-sum"), [EXAMPLE], Sampling(max_new_tokens=12),
                       max_input_len=256, batch_size=1)
    assert texts == ["cats"]  # stopped at <|im_end|>; the stray <|im_start|> is not in the text


def test_a_template_mismatch_is_refused_before_any_compute(chat_model, tmp_path):
    other = tmp_path / "other.jinja"
    other.write_text(CHATML_TEMPLATE.replace("'<|im_start|>' + message['role']", "'<|im_start|>' + message['role'] + ':'"))
    teacher = use_chat_template(build_tiny_model("tiny-chat-large"), "auto")
    check_same_prompts(teacher, chat_model, EXAMPLE, teacher_ref="T", student_ref="S", max_len=256)
    student = use_chat_template(build_tiny_model("tiny-chat-small"), str(other))
    with pytest.raises(XKDError, match=r"teacher 'T' \(the chat template of tokenizer\) and student 'S' \(the chat "
                                       r"template of .*other.jinja\) render prompt '0' to different tokens"):
        check_same_prompts(teacher, student, EXAMPLE, teacher_ref="T", student_ref="S", max_len=256)
    raw = use_chat_template(build_tiny_model("tiny-chat-small"), "none")
    with pytest.raises(XKDError, match=r"student 'S' \(no chat template\)"):
        check_same_prompts(teacher, raw, EXAMPLE, teacher_ref="T", student_ref="S", max_len=256)


def test_every_command_on_a_messages_file(xkd, runs, key):
    task = EXAMPLES / "plurals.yaml"
    small = ("--max-steps", "2", "--batch-size", "4", "--json")
    for model, role in (("tiny-chat-large", "teacher"), ("tiny-chat-small", "student")):
        result = xkd("sft", "--task", task, "--model", model, "--role", role, *small)
        assert result.code == 0, result.err
    record = json.loads((runs / "plurals" / "sft-tiny-chat-small" / "run.json").read_text())
    assert record["chat_template"] == "tokenizer"
    result = xkd("gen-teacher", "--task", task, "--limit", "3", "--num-samples", "1", "--max-new-tokens", "6",
                 "--json")
    assert result.code == 0, result.err
    samples = [json.loads(line) for line in Path(result.json()["samples"]).read_text().splitlines()]
    assert samples[0]["messages"][0] == ["system", "You are a concise English grammar assistant."]
    assert all("<|im" not in s["response"] for s in samples)
    for method in ("seqkd", "seqxkd", "skd", "sxkd", "gkd", "gxkd", "minillm"):
        on_policy = ("--alpha", "1") if method in ("gkd", "gxkd") else ()  # student samples on every step
        result = xkd("distill", "--task", task, "--method", method, *small, *on_policy)
        assert result.code == 0, result.err
    result = xkd("eval", "--task", task, "--model", "gxkd", "--limit", "4", "--max-new-tokens", "6", "--json")
    assert result.code == 0, result.err
    assert result.json()["headline"] == "exact_match"
    result = xkd("eval", "--task", task, "--model", "sft-tiny-chat-small", "--limit", "4", "--max-new-tokens", "6",
                 "--json")
    assert result.code == 0, result.err
    result = xkd("diversity", "--task", task, "--model", "gxkd", "--temperatures", "1.0", "--num-samples", "2",
                 "--limit", "2", "--max-new-tokens", "4", "--json")
    assert result.code == 0, result.err
    with FakeOpenAI(responder=lambda req: "Answer 1 is right. [[1]]") as server:
        result = xkd("judge", "--task", task, "--a", "gxkd", "--b", "sft-tiny-chat-small", "--base-url", server.url,
                     "--json")
    assert result.code == 0, result.err
    shown = server.requests[0]["json"]["messages"][0]["content"]
    assert "[The Start of Request]\nWhat is the plural of the English noun" in shown and "<|im" not in shown
    result = xkd("report", "--json")
    assert result.code == 0, result.err
