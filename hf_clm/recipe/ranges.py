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


# Range of each numeric key the recipe checks: (accepts the value, what is allowed, in words).
# Checked on the parsed values before any dataclass is built, so before any data work.
RANGES: dict[str, Range] = {
    **{key: Range(lambda v: v >= 1, "an integer >= 1") for key in (
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "n_layer",
        "n_head", "n_embd", "tokenize_batch_size", "shuffle_buffer_size", "max_train_samples", "max_eval_samples",
        "preprocessing_num_workers", "lora_r", "save_total_limit")},
    "block_size": between(2, MAX_CONTEXT, f"an integer from 2 (one input and one target) to {MAX_CONTEXT:,}"),
    "n_positions": between(2, MAX_CONTEXT, f"an integer from 2 to {MAX_CONTEXT:,}"),
    "seed": SEED,
    "data_seed": SEED,
    "vocab_size": Range(lambda v: v >= 1, "an integer >= 1"),
    "validation_split_percentage": Range(lambda v: 1 <= v <= 99, "an integer from 1 to 99 (perplexity needs held-out "
                                                            "text; to train on every document give validation_files)"),
    "max_steps": Range(lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 to train num_train_epochs"),
    "num_train_epochs": Range(lambda v: finite(v) and v > 0, "a number > 0"),
    "learning_rate": Range(lambda v: finite(v) and v > 0, "a number > 0"),
    "weight_decay": Range(lambda v: finite(v) and v >= 0, "a number >= 0"),
    "max_grad_norm": Range(lambda v: finite(v) and v >= 0, "a number >= 0 (0 = no clipping)"),
    "warmup_steps": Range(lambda v: finite(v) and v >= 0, "a number >= 0"),
    "adam_beta1": Range(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_beta2": Range(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_epsilon": Range(lambda v: finite(v) and v > 0, "a number > 0"),
    "dropout": Range(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lora_dropout": Range(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lora_alpha": Range(lambda v: v > 0, "an integer > 0"),
    "logging_steps": Range(lambda v: finite(v) and v > 0, "a number > 0 (below 1: a fraction of the training steps)"),
    "eval_steps": Range(lambda v: finite(v) and v > 0, "a number > 0 (below 1: a fraction of the training steps)"),
    "save_steps": Range(lambda v: finite(v) and v > 0, "a number > 0 (below 1: a fraction of the training steps)"),
    "dataloader_num_workers": Range(lambda v: v >= 0, "an integer >= 0"),
    "peak_tflops": Range(lambda v: finite(v) and v > 0, "a number > 0"),
    "max_tokens": Range(lambda v: v >= 1, "an integer >= 1"),
    "max_train_seconds": Range(lambda v: finite(v) and v > 0, "a number of seconds > 0"),
    "tuned_for_tokens_per_second": Range(lambda v: finite(v) and v > 0, "a number of tokens/s > 0"),
    "muon_learning_rate": Range(lambda v: finite(v) and v > 0, "a number > 0"),
    "muon_momentum": Range(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "rehearse": Range(lambda v: v >= 1, "an integer >= 1 (the optimizer steps to rehearse)"),
}


def range_problems(ranges: dict[str, Range], values: dict[str, Any], prefix: str = "") -> list[str]:
    """Each value outside its range, one line each; ``prefix`` spells a flag (``--``)."""
    return [problem for key, allowed in ranges.items()
            if (problem := allowed.problem(prefix + key, values.get(key))) is not None]
