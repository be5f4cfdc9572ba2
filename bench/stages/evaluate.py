"""Stage ``eval``: the package's scoring engine (the batched windows of ``hf-clm perplexity``) against a
plain loop calling ``model(input_ids, labels=...)`` on the same windows, in tokens/s, and the peak
resident memory of scoring one batch of GPT-2-124M shapes with the LM head sliced over positions
(``bench/evaluation.py``)."""

from __future__ import annotations

from pathlib import Path

from bench.rows import AtLeast, AtMost, Row


def rows(quick: bool, folder: Path) -> list[Row]:
    """Non-overlapping windows and stride ½ window vs the plain loop; evaluate memory."""
    from bench.evaluation import compare
    from bench.training import config

    rows = []
    n_tokens = 4096 if quick else 65_536
    cfg = config(n_layer=4, n_embd=256, block=256)
    for stride, name in ((256, "non-overlapping"), (128, "stride ½ window")):
        plain, package = compare(cfg, n_tokens, window=256, stride=stride, batch=16)
        rows.append(Row("evaluate", f"{name} vs plain forward loop", package / plain, AtLeast(0.9),
                        f"{package:,.0f} vs {plain:,.0f} tokens/s"))
    return rows + [memory_row(quick)]


def memory_row(quick: bool) -> Row:
    """Peak resident memory of scoring one batch of GPT-2-124M shapes (window 1,024, batch 8), against
    the same process scoring a tiny model of the same vocabulary plus 2.5x the weights."""
    from bench.evaluation import memory

    sizes = {"window": 128, "batch": 2, "layers": 1} if quick else {"window": 1024, "batch": 8, "layers": 12}
    sliced, full = memory("sliced", **sizes), memory("full", **sizes)
    tiny = memory("sliced", **{**sizes, "layers": 0})
    bound = tiny["peak_mb"] + 2.5 * sliced["weights_mb"]
    return Row("evaluate memory", "peak RSS scoring GPT-2-124M shapes vs tiny-model process + 2.5× weights",
               sliced["peak_mb"] / bound, AtMost(1),
               f"{sliced['peak_mb']:,.0f} MB vs {bound:,.0f} MB ({tiny['peak_mb']:,.0f} + 2.5 × "
               f"{sliced['weights_mb']:,.0f} MB of weights), window {sizes['window']}, batch {sizes['batch']}; "
               f"added by one batch: head sliced {sliced['added_mb']:,.0f} MB, full float32 logits "
               f"{full['added_mb']:,.0f} MB")
