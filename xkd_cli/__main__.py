"""``python -m xkd_cli`` and the ``xkd`` console script. The CLI is imported here, inside ``run``, so that a
Ctrl-C during its imports (a second or more on a slow machine) says so instead of printing a traceback.
Before that, xkd arranges to choose how torch's OpenMP threads wait, from how busy the CPU is, when torch is
first imported (``xkd_cli.core.threads``): the setting counts only if it is there when torch loads OpenMP."""

import sys

from xkd_cli.core.threads import share_cpu_fairly


def run() -> None:
    share_cpu_fairly()  # before any import of torch, measuring the CPU from here
    try:
        from xkd_cli.cli.app import main  # here, not at the top: a Ctrl-C while the CLI loads is caught

        main()  # inside the try too: a Ctrl-C between the import and main's own handler is caught as well
    except KeyboardInterrupt:
        sys.stderr.write("Ctrl-C: stopped while starting; nothing was done.\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
