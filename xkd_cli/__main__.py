"""``python -m xkd_cli`` and the ``xkd`` console script. The CLI is imported here, inside ``run``, so that a
Ctrl-C during its imports (a second or more on a slow machine) says so instead of printing a traceback.
Before that, torch's OpenMP threads are told to spin only briefly, then yield their core, while they wait
(``xkd_cli.core.threads``): the setting counts only if it is there when torch is imported."""

import sys

from xkd_cli.core.threads import yield_when_waiting


def run() -> None:
    yield_when_waiting()  # before any import of torch, here or in a process this one starts
    try:
        from xkd_cli.cli.app import main  # here, not at the top: a Ctrl-C while the CLI loads is caught

        main()  # inside the try too: a Ctrl-C between the import and main's own handler is caught as well
    except KeyboardInterrupt:
        sys.stderr.write("Ctrl-C: stopped while starting; nothing was done.\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
