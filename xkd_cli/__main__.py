"""``python -m xkd_cli`` and the ``xkd`` console script. The CLI is imported here, inside ``run``, so that a
Ctrl-C during its imports (a second or more on a slow machine) says so instead of printing a traceback."""

import sys


def run() -> None:
    try:
        from xkd_cli.cli.app import main  # here, not at the top: a Ctrl-C while the CLI loads is caught

        main()  # inside the try too: a Ctrl-C between the import and main's own handler is caught as well
    except KeyboardInterrupt:
        sys.stderr.write("Ctrl-C: stopped while starting; nothing was done.\n")
        sys.exit(130)


if __name__ == "__main__":
    run()
