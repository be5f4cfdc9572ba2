"""The interleaved order of a mixture's blocks: stride scheduling over the sources.

Source ``i`` (share ``w_i``) owns the times ``(k + phase_i) / w_i`` for its k-th block, ``phase_i``
in [0, 1) drawn from the seed; the order is every source's blocks sorted by time (ties by source).
Up to any time T, source ``i`` has ``T * w_i + d_i`` blocks with ``-1 < d_i <= 1``, so the first ``n``
positions hold ``n * w_i`` of its blocks to within 2, and any ``n`` consecutive positions to within
4 (0.4% of a window of 1,000): not in expectation, as sampling each block by its probability would
give, but in every window. Within a source, blocks come in an order shuffled by the seed, a new shuffle
each time a repeated source starts over. The order is a function of the block counts, the shares,
the length and the seed only: the same on every machine and at every resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def source_phases(sources: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, sources]).random(sources)


def block_times(weight: float, phase: float, count: int) -> np.ndarray:
    return (np.arange(count, dtype=np.float64) + phase) / weight


def exhaustion_length(blocks: list[int], weights: list[float], seed: int) -> int:
    """Positions of the order before the first source runs out of blocks (each one used once)."""
    phases = source_phases(len(blocks), seed)
    live = [i for i, w in enumerate(weights) if w > 0]
    first_missing = min((blocks[i] + phases[i]) / weights[i] for i in live)
    return sum(int(np.searchsorted(block_times(weights[i], phases[i], blocks[i]), first_missing, side="left"))
               for i in live)


def source_rows(count: int, used: int, seed: int, source: int) -> np.ndarray:
    """Rows of a source of ``count`` blocks in the order it gives its first ``used`` blocks: one
    shuffle per pass over it."""
    passes = math.ceil(used / count)
    return np.concatenate([np.random.default_rng([seed, source, epoch]).permutation(count)
                           for epoch in range(passes)])[:used] if used else np.empty(0, dtype=np.int64)


@dataclass
class Interleaving:
    sources: np.ndarray  # the source of each position
    rows: np.ndarray  # its row in that source

    def used(self, source: int) -> int:
        return int(np.count_nonzero(self.sources == source))


def interleaved_order(blocks: list[int], weights: list[float], length: int, seed: int) -> Interleaving:
    """The first ``length`` positions of the mixture of sources of ``blocks`` blocks with shares
    ``weights`` (summing to 1; a share of 0 gives no block), sources repeated where they run out."""
    phases = source_phases(len(blocks), seed)
    times, owners = [], []
    for i, (count, weight) in enumerate(zip(blocks, weights)):
        if weight > 0:
            wanted = math.ceil(length * weight) + 2  # more than the source can have among `length` positions
            times.append(block_times(weight, phases[i], wanted))
            owners.append(np.full(wanted, i, dtype=np.int32))
    time, owner = np.concatenate(times), np.concatenate(owners)
    order = np.lexsort((owner, time))[:length]
    sources = owner[order]
    rows = np.empty(length, dtype=np.int64)
    for i, count in enumerate(blocks):
        at = np.flatnonzero(sources == i)
        rows[at] = source_rows(count, len(at), seed, i)
    return Interleaving(sources, rows)


def window_shares(sources: np.ndarray, n_sources: int, window: int = 1000) -> np.ndarray:
    """Each source's share of every window of ``window`` consecutive positions (rows: windows)."""
    onehot = np.zeros((len(sources) + 1, n_sources), dtype=np.int64)
    onehot[np.arange(1, len(sources) + 1), sources] = 1
    running = np.cumsum(onehot, axis=0)
    return (running[window:] - running[:-window]) / window
