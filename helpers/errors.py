"""One exception type for mistakes a user can fix.

Every user-facing error in the workbook is a `WorkbookError` whose message is one line:
what was wrong (naming the file or value), what was expected, and how to fix it.
The command line prints that line and exits with code 2 instead of a traceback. While it runs, the
warnings libraries raise are held (`held_warnings`) and printed afterwards one line each, except after
an error line, which stays the only line.
"""
import sys
import warnings
from contextlib import contextmanager


class WorkbookError(Exception):
    """A user mistake (bad file, bad option, wrong checkpoint) with a one-line fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always a single line


@contextmanager
def held_warnings():
    """Record the warnings raised in the block (each once) instead of printing them; yields the list."""
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("default")
        yield held


def print_warnings(held) -> None:
    """Each held warning as one line on stderr: `warning: UserWarning: the first line of its message`."""
    for item in held:
        text = str(item.message).strip().splitlines() or [""]
        print(f"warning: {item.category.__name__}: {text[0]}", file=sys.stderr)
