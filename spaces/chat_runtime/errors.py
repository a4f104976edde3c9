"""The one error type for a problem the person running a command can fix, and the one way entry
scripts show it: `error: <what went wrong and what to do>` on stderr, exit status 2, no traceback.
Anything else is a bug and keeps its traceback. Library code raises; only entry scripts exit, so
the same functions can be called from a notebook."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR_EXIT = 2  # as argparse exits for a bad command line


class UserError(Exception):
    """A problem the user can fix; the message names the fix."""


def run_main(main: Callable[[], object]) -> None:
    """Run an entry script's `main`, turning a UserError into its message and exit status 2, and
    main's return value (an int, or None for success) into the exit status."""
    try:
        status = main()
    except UserError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(USER_ERROR_EXIT)
    sys.exit(status or 0)
