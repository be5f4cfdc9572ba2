"""Stage ``ddp``: two-process DDP on CPU (gloo), training tokens/s with ``ddp_find_unused_parameters``
false (the package default) against true (Trainer's choice for a transformers model), in alternating
pairs of ``accelerate launch`` runs on 1 MB of Tiny Shakespeare (``bench/ddp.py``)."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.rows import AtLeast, Row
from bench.stages import SHAKESPEARE


def rows(quick: bool, folder: Path) -> list[Row]:
    """ddp_find_unused_parameters false vs true: the median of the pairs' ratios (3 pairs; 1 with --quick)."""
    from bench.ddp import MODEL_FLAGS, QUICK_MODEL_FLAGS, ddp_tokens_per_second
    from bench.prepare_scale import repeated

    corpus = repeated(SHAKESPEARE, folder, megabytes=0.2 if quick else 1)
    steps, repeats = (4, 1) if quick else (60, 3)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for run in range(repeats):
        for find_unused in (True, False):
            rates[find_unused].append(ddp_tokens_per_second(corpus, folder, find_unused, steps, run,
                                                            QUICK_MODEL_FLAGS if quick else MODEL_FLAGS))
    # each pair ran back to back, so its ratio is what drift on a shared machine disturbs least
    pairs = [after / before for after, before in zip(rates[False], rates[True])]
    return [Row("train 2-process DDP (CPU, gloo)",
                "ddp_find_unused_parameters false (package default) vs true (Trainer's choice)",
                statistics.median(pairs), AtLeast(1),
                f"median of {repeats} alternating pairs (ratios {' / '.join(f'{r:.2f}' for r in pairs)}); "
                f"median {statistics.median(rates[False]):,.0f} vs {statistics.median(rates[True]):,.0f} "
                f"tokens/s; GPT-2 4×256, block 128, 2×8 blocks per step, {steps} steps")]
