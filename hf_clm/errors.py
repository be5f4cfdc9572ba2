"""The one exception type for mistakes a user can fix (bad recipe, missing file, wrong column).

The CLI prints these as a single ``hf-clm: error: ...`` line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class HfClmError(Exception):
    """A problem with the user's input, with a message that says how to fix it."""

    exit_status = 2


def first_line(err: BaseException) -> str:
    """An exception's message as one line: its first, or all of them joined when the first ends in a
    colon (a list follows that the first line alone would cut off); its type's name when it has none."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return " ".join(lines) if lines[0].endswith(":") else lines[0]
