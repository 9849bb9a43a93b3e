"""One exception type for mistakes a user can fix.

Every user-facing error in the workbook is a `WorkbookError` whose message is one line:
what was wrong (naming the file or value), what was expected, and how to fix it.
The command line prints that line and exits with code 2 instead of a traceback.
"""


class WorkbookError(Exception):
    """A user mistake (bad file, bad option, wrong checkpoint) with a one-line fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always a single line
