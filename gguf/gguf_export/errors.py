"""The one error type the entry scripts show as a single line (no traceback): it says what went
wrong and what to do. Anything else is a bug and keeps its traceback."""


class ExportError(Exception):
    """A problem the user can fix; the message names the fix."""


class DiskFullError(ExportError):
    """The disk filled up (or would); nothing was left at the final path."""
