"""One exception type for everything a user can fix (the CLI turns it into one line and exit code 2), and the
two kinds of deliberate stop (Ctrl-C, SIGTERM), which are not errors."""

from __future__ import annotations

import os

DEBUG_ENV = "XKD_DEBUG"


class XKDError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""

    exit_code = 2


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class Interrupted(XKDError):
    """A stop the user asked for, after which the message says what was kept and how to continue; exit code
    128 + the signal (130 for Ctrl-C, 143 for SIGTERM), the shell's convention for "ended by signal N"."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.exit_code = 128 + signum


class EvalCancelled(Exception):
    """An in-training evaluation given up between batches because a stop signal came: the step's checkpoint and
    the stop follow at once instead of after the whole evaluation."""


class StopRequested(BaseException):
    """Ctrl-C outside the training loop, raised by the CLI's SIGINT handler in place of KeyboardInterrupt,
    which Typer would turn into a silent exit 130 before the CLI could say what was kept."""
