"""The one error type for a problem the person running a command can fix, and the one way entry
scripts show it: `error: <what went wrong and what to do>` on stderr, exit status 2, no traceback.
Anything else is a bug and keeps its traceback. Library code raises; only entry scripts exit, so
the same functions can be called from a notebook. ServerError, an inference server's failure as the
apps show it, lives here too, so code that talks to a server through the runtime (the judge) needs no
engine module."""

from __future__ import annotations

import sys
from collections.abc import Callable

USER_ERROR_EXIT = 2  # as argparse exits for a bad command line


class UserError(Exception):
    """A problem the user can fix; the message names the fix."""


class ServerError(ValueError):
    """The inference server failed; the text says so for the person chatting. A ValueError because
    that is what the apps show as a notice (a bad input and a down server both mean: try again)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status, None when the server did not answer


def run_main(main: Callable[[], object]) -> None:
    """Run an entry script's `main`, turning a UserError into its message and exit status 2, and
    main's return value (an int, or None for success) into the exit status."""
    try:
        status = main()
    except UserError as err:
        sys.stderr.write(f"error: {err}\n")
        sys.exit(USER_ERROR_EXIT)
    sys.exit(status or 0)
