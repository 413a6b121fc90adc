"""Command-line options generated from the config fields (each option is declared once, in ``xkd_cli.config``),
plus the few options that steer a command rather than configure its job, declared here once."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from xkd_cli.config.core import other_spellings
from xkd_cli.config.defaults import per_task_options
from xkd_cli.config.fields import TASK_HELP

SWITCH = ""  # the metavar of an on/off flag: it takes no value, so the help shows none (Typer would say <bool>)

# Options that steer the command itself rather than the job's config: (annotation, default).
STEERING: dict[str, tuple[Any, Any]] = {
    "recipe": (Annotated[Optional[Path], typer.Option(help="YAML file of option values (flags override it).")], None),
    "resume": (Annotated[bool, typer.Option(
        "--resume", metavar=SWITCH, help="Continue the run from its latest complete checkpoint (re-running the same command does "
                         "too; --resume fails if there is none).")], False),
    "processes": (Annotated[Optional[int], typer.Option(
        help="Train data-parallel on N processes (one per GPU, or gloo on CPU): runs this command under "
             "`accelerate launch`. --batch-size is per process.")], None),
    "runs_dir": (Annotated[Optional[Path], typer.Option(help="Runs directory (env XKD_RUNS_DIR, default ./runs).")],
                 None),
    "overwrite": (Annotated[bool, typer.Option("--overwrite", metavar=SWITCH,
                                               help="Replace an existing run / results of the same name.")], False),
    "json": (Annotated[bool, typer.Option("--json", metavar=SWITCH, help="Print the result as JSON on stdout.")], False),
}


def _format_default(value: Any) -> str | None:
    if value is None or value == "" or value is False or value == ():
        return None
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cli_type(field: dataclasses.Field, hint: Any) -> Any:
    if field.metadata.get("cli_type") is not None:
        return field.metadata["cli_type"]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    return hint


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """One Typer option per command-line field of ``cls`` (an argument for a field marked so), defaulting to
    ``None`` ("not given"), with the field's help and its default (or "per task" where a task preset sets it). An
    on/off field is ``--x/--no-x``, so either way overrides the recipe, and neither typed keeps it."""
    hints = typing.get_type_hints(cls)
    per_task = per_task_options(cls)
    params = []
    for field in dataclasses.fields(cls):
        if not field.metadata.get("cli", False):
            continue
        help_text = field.metadata["help"]
        default = _format_default(field.default)
        if field.name in per_task:
            help_text += " (default: per task)"
        elif default is not None:
            help_text += f" (default: {default})"
        cli_type = _cli_type(field, hints[field.name])
        if field.metadata.get("argument"):
            argument = typer.Argument(help=help_text, metavar=field.name.upper(), show_default=False)
            params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[cli_type], argument]))
            continue
        flags = (*(field.metadata["flags"] or (f"--{field.name.replace('_', '-')}",)),
                 *(f"--{other.replace('_', '-')}" for other in other_spellings(field.name)))
        switch = {}
        if cli_type is bool:  # --x/--no-x: a recipe's `x: true` can be turned off from the command line
            switch = {"metavar": SWITCH}
            if "/" not in flags[0]:
                flags = (f"{flags[0]}/--no-{flags[0].removeprefix('--')}", *flags[1:])
        annotation = Annotated[Optional[cli_type], typer.Option(*flags, help=help_text, **switch)]
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=annotation))
    return params


def _declared_order(cls: type) -> list[str]:
    """The names ``cls`` and its bases declare, grouped by the class that declares them: the config's own, then
    each base's, nearest first (a command's own options before the groups it shares)."""
    names: dict[str, None] = {}
    for klass in cls.__mro__:
        for name in klass.__dict__.get("__annotations__", {}):
            names.setdefault(name)
    return list(names)


def config_command(cls: type, *steering: str, first: tuple[str, ...] = ("task", "name", "data")
                   ) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Turn ``run(flags, **steering)`` into a Typer command whose options are ``cls``'s fields and the ``steering``
    options named: those in ``first`` (``--recipe`` after them unless placed there), then the config's own fields,
    then those of each base it inherits from, nearest first, then the other steering options."""
    def decorate(run: Callable[..., None]) -> Callable[..., None]:
        fields = config_parameters(cls)
        steer = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=STEERING[name][1],
                                   annotation=STEERING[name][0]) for name in steering]
        order = first if "recipe" in first else (*first, "recipe")
        by_name = {p.name: p for p in fields + steer}
        lead = [by_name[name] for name in order if name in by_name]
        rest = [by_name[name] for name in _declared_order(cls) if name in by_name and name not in order]
        params = lead + rest + [p for p in steer if p.name not in order]
        names = {p.name for p in fields}

        @functools.wraps(run)
        def command(**kwargs: Any) -> None:
            flags = {k: v for k, v in kwargs.items() if k in names}
            run(flags, **{k: v for k, v in kwargs.items() if k not in names})

        command.__signature__ = inspect.Signature(params)  # what Typer reads the options from
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # so inspect.signature reads __signature__, not run's own parameters
        return command
    return decorate


# Options of commands without a job config.
Task = Annotated[Optional[str], typer.Option("--task", "-t", help=TASK_HELP)]
RunsDir = STEERING["runs_dir"][0]
Overwrite = STEERING["overwrite"][0]
Json = STEERING["json"][0]
