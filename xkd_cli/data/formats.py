"""Rows of one's own data as (prompt turns, completion): TRL's standard dataset formats and field templates.

- ``prompt-completion``: ``prompt`` and ``completion`` columns, each a string or a list of
  ``{"role", "content"}`` messages (the completion's assistant turn is the target).
- ``messages``: a ``messages`` list; the last assistant turn is the target, every turn before it the prompt.
- ``preference``: TRL's preference format, ``prompt``, ``chosen`` and ``rejected``: each a string or a list of
  messages (a response: one assistant message); or, with no ``prompt`` column, ``chosen`` and ``rejected``
  as whole conversations that share their opening turns (the implicit prompt) and end in one assistant turn each.
- ``fields``: ``prompt``/``target`` templates over the row's columns, e.g. ``"Summarise: {document}"``.
- ``auto``: ``messages`` when the row has that column, ``prompt-completion`` when it has those two,
  ``preference`` when it has ``chosen`` or ``rejected``.

A parsed row is a :class:`Turns`: the prompt as chat messages (a system message first when the task
has one), plus ``text``, the same prompt as plain text for models used without a chat template and for
judges (which must never see a template's special tokens). A preference row is a :class:`PreferenceTurns`
(the same prompt, the chosen and the rejected response); where one target is wanted (``parse_row``: sft,
distillation, evaluation), the chosen response is it.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from xkd_cli.core.errors import XKDError

FORMATS = ("auto", "prompt-completion", "messages", "preference", "fields")
ROLES = ("system", "user", "assistant")
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
_PAIR_ROW = "{\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}"


@dataclass(frozen=True)
class Turns:
    messages: tuple[tuple[str, str], ...]  # (role, content) of every prompt turn, system first
    text: str                              # the prompt as plain text (no system message)
    target: str


@dataclass(frozen=True)
class PreferenceTurns:
    messages: tuple[tuple[str, str], ...]  # (role, content) of every prompt turn, system first
    text: str                              # the prompt as plain text (no system message)
    chosen: str                            # the preferred response
    rejected: str                          # the dispreferred response (never the same text as chosen)


def template_columns(template: str, where: str) -> list[str]:
    """Column names a ``{column}`` template uses (``{{``/``}}`` are literal braces)."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise XKDError(f"{where}: template {template!r} is malformed ({exc}); write columns as {{name}} "
                       "and literal braces as {{{{ }}}}") from None
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise XKDError(f"{where}: template {template!r} names {bad[0]!r}; write a column name in braces, "
                       "e.g. {document}")
    return names


def detect_format(row: dict, where: str) -> str:
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    if "chosen" in row or "rejected" in row:
        return "preference"
    found = ", ".join(map(str, row)) or "none"
    raise XKDError(f"{where}: neither a 'messages' column nor 'prompt' and 'completion' columns nor 'chosen' and "
                   f"'rejected' columns (columns found: {found}); write rows like {{\"prompt\": ..., "
                   f"\"completion\": ...}}, {{\"messages\": [...]}} or {_PAIR_ROW}, or give the task file "
                   "'format: fields' with 'prompt:' and 'target:' templates over your columns")


def _messages(value: Any, column: str, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise XKDError(f"{where}: column {column!r} must be a non-empty list of {{\"role\": ..., \"content\": ...}} "
                       f"messages, got {type(value).__name__}; fix that row")
    turns = []
    for i, message in enumerate(value, 1):
        if not isinstance(message, dict) or message.get("role") not in ROLES \
                or not isinstance(message.get("content"), str):
            raise XKDError(f"{where}: message {i} of {column!r} must be {{\"role\": one of {', '.join(ROLES)}, "
                           f"\"content\": text}}, got {message!r:.80}; fix that message")
        turns.append((message["role"], message["content"]))
    return turns


def _nonempty(target: str, what: str, where: str) -> str:
    if not target.strip():
        raise XKDError(f"{where}: the {what} is empty; give every row a non-empty {what} (or drop the row)")
    return target


def _turns(prompt: list[tuple[str, str]], target: str, system: str | None) -> Turns:
    if system is not None and not any(role == "system" for role, _ in prompt):
        prompt = [("system", system)] + prompt
    text = "\n\n".join(content for role, content in prompt if role != "system")
    return Turns(tuple(prompt), text, target)


def parse_row(row: dict, fmt: str, where: str, *, prompt: str | None = None, target: str | None = None,
              system: str | None = None) -> Turns:
    """One row as prompt turns and the completion to learn; every bad row is one line naming it."""
    if fmt == "auto":
        fmt = detect_format(row, where)
    if fmt == "messages":
        if "messages" not in row:
            raise XKDError(f"{where}: no 'messages' column; write each row as {{\"messages\": [...]}}")
        turns = _messages(row["messages"], "messages", where)
        if turns[-1][0] != "assistant":
            raise XKDError(f"{where}: the last message is a {turns[-1][0]} turn, not an assistant turn; "
                           "end every conversation with the assistant reply to learn")
        if len(turns) < 2:
            raise XKDError(f"{where}: a conversation needs a prompt turn before the assistant reply; "
                           "add a user message")
        return _turns(turns[:-1], _nonempty(turns[-1][1], "final assistant turn", where), system)
    if fmt == "prompt-completion":
        for column in ("prompt", "completion"):
            if column not in row:
                raise XKDError(f"{where}: no {column!r} column; write each row as "
                               "{\"prompt\": ..., \"completion\": ...}")
        head, tail = row["prompt"], row["completion"]
        prompt_turns = [("user", head)] if isinstance(head, str) else _messages(head, "prompt", where)
        if isinstance(tail, str):
            completion = tail
        else:
            answer = _messages(tail, "completion", where)
            if answer[-1][0] != "assistant":
                raise XKDError(f"{where}: the completion's last message is not an assistant turn; "
                               "write the reply as [{\"role\": \"assistant\", \"content\": ...}]")
            completion = answer[-1][1]
        return _turns(prompt_turns, _nonempty(completion, "completion", where), system)
    if fmt == "preference":
        pair = parse_preference(row, where, system=system)
        return Turns(pair.messages, pair.text, pair.chosen)
    if fmt == "fields":
        values = {}
        for template in (prompt, target):
            for column in template_columns(template or "", where):
                if column not in row:
                    found = ", ".join(map(str, row)) or "none"
                    raise XKDError(f"{where}: the template {template!r} names column {column!r}, which this row "
                                   f"lacks (columns found: {found}); fix the template or the data")
                values[column] = str(row[column])
        return _turns([("user", (prompt or "").format(**values))],
                      _nonempty((target or "").format(**values), "target", where), system)
    raise XKDError(f"{where}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------
# Preference pairs
# ----------------------------------------------------------------------------------------

def _response(value: Any, column: str, where: str) -> str:
    """One side of an explicit-prompt pair: text, or a list holding the one assistant message."""
    if isinstance(value, str):
        return _nonempty(value, f"{column!r} response", where)
    if not isinstance(value, list):
        raise XKDError(f"{where}: column {column!r} must be text or a list of {{\"role\": ..., \"content\": ...}} "
                       f"messages, got {type(value).__name__}; fix that row")
    turns = _messages(value, column, where)
    if len(turns) > 1:
        raise XKDError(f"{where}: column {column!r} holds {len(turns)} messages; with a 'prompt' column each response "
                       "is one assistant message: move the earlier turns into 'prompt'")
    if turns[0][0] != "assistant":
        raise XKDError(f"{where}: the {column!r} message is a {turns[0][0]} turn, not an assistant turn; "
                       f"write the reply as [{{\"role\": \"assistant\", \"content\": ...}}]")
    return _nonempty(turns[0][1], f"{column!r} response", where)


def _same_responses(where: str) -> XKDError:
    return XKDError(f"{where}: 'chosen' and 'rejected' are the same response; a preference pair needs two different "
                    "responses: fix or drop that row")


def _implicit_prompt(row: dict, where: str) -> tuple[list[tuple[str, str]], str, str]:
    """(prompt turns, chosen, rejected) of two conversations that share their opening turns."""
    sides = {}
    for column in ("chosen", "rejected"):
        if isinstance(row[column], str):
            raise XKDError(f"{where}: no 'prompt' column and {column!r} is text; add a 'prompt' column, or write "
                           "'chosen' and 'rejected' as conversations (message lists) that share their opening turns")
        turns = _messages(row[column], column, where)
        if turns[-1][0] != "assistant":
            raise XKDError(f"{where}: the last message of {column!r} is a {turns[-1][0]} turn, not an assistant turn; "
                           "end both conversations with the assistant reply")
        sides[column] = turns
    chosen, rejected = sides["chosen"], sides["rejected"]
    if chosen == rejected:
        raise _same_responses(where)
    shared = next((i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r), min(len(chosen), len(rejected)))
    if shared == 0:
        raise XKDError(f"{where}: 'chosen' and 'rejected' share no opening turn, so they have no common prompt; "
                       "start both conversations with the same prompt turns, or add a 'prompt' column")
    if len(chosen) != shared + 1 or len(rejected) != shared + 1:
        raise XKDError(f"{where}: 'chosen' and 'rejected' differ before their last turn (they share {shared} "
                       "opening turns); after the shared prompt turns each must hold only its assistant reply")
    return (chosen[:shared], _nonempty(chosen[-1][1], "'chosen' response", where),
            _nonempty(rejected[-1][1], "'rejected' response", where))


def parse_preference(row: dict, where: str, *, system: str | None = None) -> PreferenceTurns:
    """One row of TRL's preference format (see the module docstring); every bad row is one line naming it."""
    for column in ("chosen", "rejected"):
        if column not in row:
            raise XKDError(f"{where}: no {column!r} column; write each preference row as {_PAIR_ROW}, or as "
                           "{\"chosen\": [...], \"rejected\": [...]} conversations that share their opening turns")
    if "prompt" in row:
        head = row["prompt"]
        prompt = [("user", head)] if isinstance(head, str) else _messages(head, "prompt", where)
        chosen, rejected = _response(row["chosen"], "chosen", where), _response(row["rejected"], "rejected", where)
    else:
        prompt, chosen, rejected = _implicit_prompt(row, where)
    if chosen.strip() == rejected.strip():
        raise _same_responses(where)
    turns = _turns(prompt, chosen, system)
    return PreferenceTurns(turns.messages, turns.text, chosen, rejected)


def extra_columns(row: dict) -> dict[str, Any]:
    """A preference row's columns besides prompt, chosen and rejected (synth-sum-pref: ``damage``, ``id``)."""
    return {key: value for key, value in row.items() if key not in PAIR_COLUMNS}
