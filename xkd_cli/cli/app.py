"""The ``xkd`` command: one Typer app whose subcommands are thin layers over the engine (``xkd_cli.cli.training``,
``.teacher``, ``.evaluation``, ``.reward``, ``.experiments``); their options are generated from the job configs."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Annotated

import typer

from xkd_cli import __version__
from xkd_cli.cli import evaluation, experiments, reward, teacher, training
from xkd_cli.cli.options import SWITCH
from xkd_cli.core.errors import Interrupted, StopRequested, XKDError, debug_enabled
from xkd_cli.core.threads import share_cpu_fairly
from xkd_cli.core.workspace import stop_note

class _HelpFlag:
    """-h/--help is an on/off flag like the others: no metavar (Typer's own help option would show <bool>)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = SWITCH
        return option


class Command(_HelpFlag, typer.core.TyperCommand):
    pass


class Group(_HelpFlag, typer.core.TyperGroup):
    pass


app = typer.Typer(
    name="xkd", cls=Group,
    help="Experiential knowledge distillation (X-KD) for language models: fine-tune, distil, evaluate.\n\n"
         "Every command takes --json; those that run a job also take --recipe FILE.yaml (values merge as defaults → "
         "recipe → flags).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"xkd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar=SWITCH,
                                                help="Print the version and exit.")] = False) -> None:
    pass


app.command(cls=Command, epilog=training.SFT_EPILOG)(training.sft)
app.command(cls=Command, epilog=training.DISTILL_EPILOG)(training.distill)
app.command(cls=Command, name="reward-model", epilog=training.REWARD_MODEL_EPILOG)(training.reward_model)
app.command(cls=Command, epilog=training.ALIGN_EPILOG)(training.align)
app.command(cls=Command, name="eval", epilog=evaluation.EVAL_EPILOG)(evaluation.eval_)
app.command(cls=Command, epilog=experiments.PIPELINE_EPILOG)(experiments.pipeline)
app.command(cls=Command, name="gen-teacher", epilog=teacher.EPILOG)(teacher.gen_teacher)
app.command(cls=Command, epilog=evaluation.DIVERSITY_EPILOG)(evaluation.diversity)
app.command(cls=Command, epilog=evaluation.JUDGE_EPILOG)(evaluation.judge)
app.command(cls=Command, name="best-of-n", epilog=evaluation.BEST_OF_N_EPILOG)(evaluation.best_of_n)
app.command(cls=Command, epilog=reward.EPILOG)(reward.reward)
app.command(cls=Command, name="report", epilog=experiments.REPORT_EPILOG)(experiments.report)


def _quiet_libraries() -> None:
    """transformers' and the hub's own load/save progress bars and notices would drown ours. Set through the
    environment, which they read when first imported, so that starting the CLI imports neither; where they are
    loaded already, through their own switches."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (xkd called in-process): the environment came too late
        from transformers.utils import logging as hf_logging  # loaded already, so this costs nothing

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def _stop(signum, frame) -> None:
    raise StopRequested


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2 (traceback with XKD_DEBUG=1); a
    Ctrl-C, one line saying what was kept and how to go on, and exit code 130."""
    try:
        previous = signal.signal(signal.SIGINT, _stop)
    except ValueError:  # not the main thread: Ctrl-C stays as it is
        previous = None
    try:
        share_cpu_fairly()  # the console script did this already; here for main() called in-process
        _quiet_libraries()
        app(args=argv, standalone_mode=True)
    except Interrupted as exc:  # training stopped at a checkpoint: its message says where
        sys.stderr.write(f"{exc}\n")
        sys.exit(exc.exit_code)
    except (StopRequested, KeyboardInterrupt):
        sys.stderr.write(stop_note() + "\n")
        sys.exit(130)
    except XKDError as exc:
        if debug_enabled():
            traceback.print_exc()
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
