"""What the benchmark scripts share: one measurement per fresh worker process, resetting its resident-memory
peak, command-line options for a script's settings dataclass, and the package versions a report records.

Each script re-runs itself with ``--worker SPEC_JSON`` and reads the worker's result from the last JSON
line it prints: a fresh process gives a clean ``ru_maxrss`` / ``VmHWM``, and the parent never imports
torch (Linux carries a parent's peak into its children's ``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_worker(script: str, spec: dict, *, env: dict[str, str | None], timeout: int, what: str) -> dict:
    """Run ``script --worker SPEC`` in a fresh process and return its result. ``env`` adds variables to
    this process's environment (``None`` removes one); xkd is importable from the checkout either way."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def reset_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def add_settings_options(parser: argparse.ArgumentParser, settings: type) -> None:
    """One ``--name`` option per field of the ``settings`` dataclass, typed like its default; not given: None."""
    for field in fields(settings):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None,
                            help=f"default {field.default}")


def settings_from(args: argparse.Namespace, settings: type, quick: dict[str, Any] | None) -> Any:
    """``settings`` from its defaults, then ``quick``'s values (``--quick``), then the options given."""
    given = {f.name: getattr(args, f.name) for f in fields(settings) if getattr(args, f.name) is not None}
    return settings(**{**(quick or {}), **given})


def versions(*packages: str) -> dict[str, str]:
    """The installed versions of ``packages``, for a report's record (one that is not installed is left out)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found
