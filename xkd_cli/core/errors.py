"""One exception type for everything a user can fix; the CLI turns it into one line and exit code 2."""

from __future__ import annotations

import os

DEBUG_ENV = "XKD_DEBUG"


class XKDError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""

    exit_code = 2


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
