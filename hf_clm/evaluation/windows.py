"""The windows a text is scored in: strided windows over one stream (the Hugging Face guide), rolling
windows over each document (lm-evaluation-harness), and their batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Rows of ``sequence[begin:end]`` scoring the targets ``sequence[i + 1]`` for i in [first, end)."""

    sequence: int
    begin: int
    end: int
    first: int


def strided_windows(n_tokens: int, window: int, stride: int) -> Iterator[Window]:
    """The Hugging Face guide's windows over one stream, each target counted once: a window of
    ``window`` tokens predicts its last ``window - 1``; the part already scored is context."""
    scored_until = 1  # the stream's first token has no context
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if end - begin >= 2 and end > scored_until:
            yield Window(0, begin, end - 1, max(scored_until - 1, begin))
            scored_until = end
        if end == n_tokens:
            return


def rolling_windows(sequence: int, n_tokens: int, window: int) -> Iterator[Window]:
    """lm-evaluation-harness's rolling windows over ``prefix + document`` (``n_tokens`` document
    tokens): each window predicts up to ``window`` new tokens, with as much left context as fits."""
    predicted = 0
    while predicted < n_tokens:
        end = predicted + min(window, n_tokens - predicted)  # input positions [begin, end) predict tokens
        yield Window(sequence, max(0, end - window), end, predicted)
        predicted = end


def batched(windows: Sequence[Window], batch_size: int) -> Iterator[list[Window]]:
    """Batches of windows of similar length (longest first), so little padding is computed."""
    order = sorted(windows, key=lambda w: w.end - w.begin, reverse=True)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]
