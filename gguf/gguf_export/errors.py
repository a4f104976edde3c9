"""The export's user errors: UserErrors (chat_runtime.errors), shown by the entry scripts as one
line that says what went wrong and what to do. Anything else is a bug and keeps its traceback."""

from chat_runtime.errors import UserError


class ExportError(UserError):
    """A problem the user can fix; the message names the fix."""


class DiskFullError(ExportError):
    """The disk filled up (or would); nothing was left at the final path."""
