"""Stage ``checkpoint``: checkpoint saves under two-process FSDP2 on CPU (gloo), SHARDED_STATE_DICT
against FULL_STATE_DICT, GPT-2 124M's shape from scratch with a checkpoint after every step, the two
forms alternating: the wall time training stands still per save and rank 0's peak resident memory
during a save (``bench/checkpoint_save.py``, ``bench/checkpoint_probe.py``)."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.rows import AtLeast, Row
from bench.stages import SHAKESPEARE, TOKENIZER

STAGE = "checkpoint save, 2-process FSDP2 (CPU, gloo)"


def rows(quick: bool, folder: Path) -> list[Row]:
    """Sharded vs full: the median seconds of a save, and rank 0's peak RSS during one (2 rounds; 1
    with --quick, on a 1-layer model)."""
    from bench.checkpoint_save import FORMS, form_saves
    from bench.prepare_scale import repeated

    corpus = repeated(SHAKESPEARE, folder, megabytes=0.2 if quick else 1)
    rounds = 1 if quick else 2
    saves: dict[str, list[dict]] = {form: [] for form in FORMS}
    for run in range(rounds):
        for form in FORMS:
            saves[form] += form_saves(corpus, TOKENIZER, folder, form, run, quick)
    seconds = {form: statistics.median(s["seconds"] for s in saves[form]) for form in FORMS}
    peak = {form: max(s["peak_rss_mib"] for s in saves[form]) for form in FORMS}
    added = {form: max(s["peak_rss_mib"] - s["rss_before_mib"] for s in saves[form]) for form in FORMS}
    rank1 = {form: max(s["rank1_peak_rss_mib"] for s in saves[form]) for form in FORMS}
    size = {form: saves[form][-1]["bytes"] / 2**20 for form in FORMS}
    full, sharded = FORMS
    shape = "GPT-2 1×64" if quick else "GPT-2 124M (12×768, vocab 50,257)"
    return [
        Row(STAGE, "SHARDED_STATE_DICT vs FULL_STATE_DICT: wall time of a save", seconds[full] / seconds[sharded],
            AtLeast(1), f"median {seconds[sharded]:.1f} s vs {seconds[full]:.1f} s over {len(saves[full])} saves "
                        f"each (all ranks waiting); checkpoint {size[sharded]:,.0f} MiB vs {size[full]:,.0f} MiB; "
                        f"{shape}"),
        Row(STAGE, "SHARDED_STATE_DICT vs FULL_STATE_DICT: rank 0's peak RSS during a save",
            peak[full] / peak[sharded], AtLeast(1),
            f"{peak[sharded]:,.0f} MiB vs {peak[full]:,.0f} MiB, of which the save added {added[sharded]:,.0f} "
            f"vs {added[full]:,.0f} MiB (rank 1's peak {rank1[sharded]:,.0f} vs {rank1[full]:,.0f} MiB); {shape}"),
    ]
