"""What a number may be: one :class:`Range` type for the recipe's keys and the commands' flags.

Imports no library, so a command checks its flags before the seconds of importing torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

MAX_SEED = 2**32 - 1  # numpy's and torch's seeds
# The longest block (and position table) a recipe may ask for: 1M positions, far past any model
# trained with this package, where a larger number is a typo that would allocate gigabytes.
MAX_CONTEXT = 1 << 20


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


class Range(NamedTuple):
    """A value's allowed range: ``accepts`` tells, ``allowed`` says it in words."""

    accepts: Callable[[Any], bool]
    allowed: str

    def problem(self, name: str, value: Any) -> str | None:
        """``None`` for an unset or accepted value, else one line naming the value and what is allowed."""
        if value is None or self.accepts(value):
            return None
        return f"{name} must be {self.allowed}, not {value!r}"


def at_least(lowest: int, words: str | None = None) -> Range:
    return Range(lambda v: v >= lowest, words or f"at least {lowest:,}")


def between(lowest: float, highest: float, words: str) -> Range:
    return Range(lambda v: lowest <= v <= highest, words)


SEED = between(0, MAX_SEED, f"an integer from 0 to {MAX_SEED:,}")


def range_problems(ranges: dict[str, Range], values: dict[str, Any], prefix: str = "") -> list[str]:
    """Each value outside its range, one line each; ``prefix`` spells a flag (``--``)."""
    return [problem for key, allowed in ranges.items()
            if (problem := allowed.problem(prefix + key, values.get(key))) is not None]
