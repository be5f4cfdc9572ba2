"""The one exception type for mistakes a user can fix (bad recipe, missing file, wrong column).

The CLI prints these as a single ``hf-clm: error: ...`` line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class HfClmError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""

    exit_status = 2


def first_line(err: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
