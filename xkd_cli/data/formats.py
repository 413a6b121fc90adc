"""Rows of one's own data as (prompt turns, completion): TRL's standard dataset formats and field templates.

- ``prompt-completion``: ``prompt`` and ``completion`` columns, each a string or a list of
  ``{"role", "content"}`` messages (the completion's assistant turn is the target).
- ``messages``: a ``messages`` list; the last assistant turn is the target, every turn before it the prompt.
- ``fields``: ``prompt``/``target`` templates over the row's columns, e.g. ``"Summarise: {document}"``.
- ``auto``: ``messages`` when the row has that column, ``prompt-completion`` when it has those two.

A parsed row is a :class:`Turns`: the prompt as chat messages (a system message first when the task
has one), plus ``text``, the same prompt as plain text for models used without a chat template and for
judges (which must never see a template's special tokens).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

from xkd_cli.core.errors import XKDError

FORMATS = ("auto", "prompt-completion", "messages", "fields")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Turns:
    messages: tuple[tuple[str, str], ...]  # (role, content) of every prompt turn, system first
    text: str                              # the prompt as plain text (no system message)
    target: str


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
    found = ", ".join(map(str, row)) or "none"
    raise XKDError(f"{where}: neither a 'messages' column nor 'prompt' and 'completion' columns "
                   f"(columns found: {found}); write rows like {{\"prompt\": ..., \"completion\": ...}} or "
                   "{\"messages\": [...]}, or give the task file 'format: fields' with 'prompt:' and 'target:' "
                   "templates over your columns")


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
