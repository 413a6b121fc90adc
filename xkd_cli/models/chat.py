"""Chat templates: how a decoder-only chat model sees a prompt, where its answer ends, and the ids that stop it.

``--chat-template auto`` (the default) renders a decoder-only model's prompts with its tokenizer's own
template (``add_generation_prompt=True``) when it has one; ``none`` keeps the raw ``prompt + "\\n"`` of
the paper's setup; a ``.jinja`` file replaces the tokenizer's template. Encoder-decoder models (T5) never
use one. A rendered prompt is truncated from the left, so the generation prompt that ends it survives.

With a template, targets end with the template's end-of-turn token (SmolLM2's ``<|im_end|>``) instead of
eos, so the loss teaches the model to close its turn; generation stops at that token or at eos. The
model's ``LoadedModel.chat`` holds the choice, so every command encodes through the functions here.

A preference pair encodes as one prompt and two targets (:func:`encode_example_pairs`): the chosen and the
rejected response each end like any target, and both follow the same prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from xkd_cli.core.errors import XKDError
from xkd_cli.data.batches import encode_prompts, encode_targets
from xkd_cli.data.tasks import Example, PreferencePair
from xkd_cli.models.loaded_model import LoadedModel

_MARKER = "XKD-END-OF-ANSWER"


@dataclass(frozen=True)
class ChatFormat:
    template: str            # the Jinja chat template
    end_of_turn: int         # the token that closes an assistant turn: targets end with it
    stop_ids: tuple[int, ...]  # generation stops at any of these (end of turn, eos)
    origin: str              # "tokenizer" or the template file, for messages


def read_template(option: str) -> str:
    path = Path(option).expanduser()
    if not path.is_file():
        raise XKDError(f"--chat-template {option!r}: no such file; pass auto, none or the path of a .jinja template")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise XKDError(f"--chat-template {option!r}: cannot read it ({exc}); save it as UTF-8 text") from None


def _render(tokenizer, template: str, messages: Sequence[tuple[str, str]], *, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], chat_template=template,
                                             tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # noqa: BLE001 - Jinja's errors have many types; all mean "fix the template"
        raise XKDError(f"the chat template cannot render a conversation ({type(exc).__name__}: {exc}); "
                       "fix the template or pass --chat-template none") from None


def _end_of_turn(tokenizer, template: str) -> int:
    """The first token after an assistant's answer in a rendered conversation (eos when there is none)."""
    text = _render(tokenizer, template, [("user", "hi"), ("assistant", _MARKER)], generation_prompt=False)
    tail = text.split(_MARKER, 1)[1].strip() if _MARKER in text else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return ids[0] if ids else tokenizer.eos_token_id


def chat_format(tokenizer, option: str, *, is_encoder_decoder: bool) -> ChatFormat | None:
    """The prompt format ``--chat-template option`` gives this model (None: raw prompts)."""
    if option == "none" or is_encoder_decoder:
        return None
    if option == "auto":
        template = getattr(tokenizer, "chat_template", None)
        if not template or not isinstance(template, str):
            return None
        origin = "tokenizer"
    else:
        template, origin = read_template(option), option
    eot = _end_of_turn(tokenizer, template)
    stops = tuple(dict.fromkeys(i for i in (eot, tokenizer.eos_token_id) if i is not None))
    return ChatFormat(template, eot, stops, origin)


def use_chat_template(loaded: LoadedModel, option: str) -> LoadedModel:
    """Set ``loaded.chat`` from ``--chat-template`` (see the module docstring); returns ``loaded``."""
    loaded.chat = chat_format(loaded.tokenizer, option, is_encoder_decoder=loaded.is_encoder_decoder)
    return loaded


def prompt_turns(example: Example) -> tuple[tuple[str, str], ...]:
    return example.messages if example.messages is not None else (("user", example.prompt),)


def render_prompts(loaded: LoadedModel, examples: Sequence[Example]) -> list[str]:
    """The text each prompt becomes for this model (chat-rendered, or the raw prompt)."""
    if loaded.chat is None:
        return [e.prompt for e in examples]
    return [_render(loaded.tokenizer, loaded.chat.template, prompt_turns(e), generation_prompt=True)
            for e in examples]


def encode_example_prompts(loaded: LoadedModel, examples: Sequence[Example], *, max_len: int,
                           keep_end: bool = False) -> list[list[int]]:
    """Prompt ids of ``examples`` for this model: raw prompts exactly as before, or chat-rendered ones."""
    if loaded.chat is None:
        return encode_prompts(loaded.tokenizer, [e.prompt for e in examples],
                              is_encoder_decoder=loaded.is_encoder_decoder, max_len=max_len, keep_end=keep_end)
    encoded = loaded.tokenizer(render_prompts(loaded, examples), add_special_tokens=False)["input_ids"]
    return [ids[-max_len:] for ids in encoded]


def encode_example_targets(loaded: LoadedModel, references: Sequence[str], *, max_len: int) -> list[list[int]]:
    """Target ids: the completion, then eos (raw prompts) or the end-of-turn token (chat)."""
    end = loaded.chat.end_of_turn if loaded.chat is not None else None
    return encode_targets(loaded.tokenizer, references, max_len=max_len, end=end)


@dataclass(frozen=True)
class EncodedPairs:
    """Token ids of preference pairs: one prompt per pair, shared by its two targets."""
    prompts: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]


def encode_example_pairs(loaded: LoadedModel, pairs: Sequence[PreferencePair], *, max_input_len: int,
                         max_output_len: int, keep_end: bool = False) -> EncodedPairs:
    """Prompt ids (as :func:`encode_example_prompts`) and the chosen and rejected target ids (as
    :func:`encode_example_targets`) of ``pairs``: prompt + chosen and prompt + rejected are the two sequences."""
    prompts = encode_example_prompts(loaded, [p.example for p in pairs], max_len=max_input_len, keep_end=keep_end)
    chosen = encode_example_targets(loaded, [p.chosen for p in pairs], max_len=max_output_len)
    rejected = encode_example_targets(loaded, [p.rejected for p in pairs], max_len=max_output_len)
    return EncodedPairs(prompts, chosen, rejected)


def stop_ids(loaded: LoadedModel) -> tuple[int, ...]:
    """Extra token ids that end a generation besides eos."""
    return loaded.chat.stop_ids if loaded.chat is not None else ()


def check_same_prompts(teacher: LoadedModel, student: LoadedModel, example: Example, *, teacher_ref: str,
                       student_ref: str, max_len: int) -> None:
    """Refuse a teacher and student that turn the same prompt into different tokens (before any compute)."""
    ids_t = encode_example_prompts(teacher, [example], max_len=max_len)[0]
    ids_s = encode_example_prompts(student, [example], max_len=max_len)[0]
    if ids_t == ids_s:
        return
    where = next((i for i, (a, b) in enumerate(zip(ids_t, ids_s)) if a != b), min(len(ids_t), len(ids_s)))
    def how(m: LoadedModel) -> str:
        return "no chat template" if m.chat is None else f"the chat template of {m.chat.origin}"
    t_tok = teacher.tokenizer.decode(ids_t[where:where + 3]) if where < len(ids_t) else "(end)"
    s_tok = student.tokenizer.decode(ids_s[where:where + 3]) if where < len(ids_s) else "(end)"
    raise XKDError(f"teacher {teacher_ref!r} ({how(teacher)}) and student {student_ref!r} ({how(student)}) render "
                   f"prompt {example.id!r} to different tokens from token {where} (teacher {t_tok!r}, student "
                   f"{s_tok!r}); give both the same template with --chat-template FILE.jinja, or --chat-template none")
