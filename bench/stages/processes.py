"""Stage ``processes``: several processes on this host (torchrun, CPU, gloo): ``hf-clm perplexity``
with 2 processes against 1, as whole processes on the same model and text (the figures must agree),
and the per-step cost of ``max_train_seconds``' one clock, rank 0's reading broadcast to every
process (``bench/processes.py``)."""

from __future__ import annotations

from pathlib import Path

from bench.rows import Ceiling, FiguresAtMost, Row
from bench.stages import SHAKESPEARE, TOKENIZER

# The two launches' bits per byte agree to 1e-9, relative.
AGREEMENT = FiguresAtMost((Ceiling("relative_difference", 1e-9, "relative difference of bits/byte"),))


def rows(quick: bool, folder: Path) -> list[Row]:
    """Two: perplexity over 2 processes vs 1 (speed-up, figures equal); the clock's broadcast per step."""
    from bench.prepare_scale import repeated
    from bench.processes import broadcast_microseconds, perplexity_processes

    corpus = repeated(SHAKESPEARE, folder, megabytes=0.05 if quick else 1)
    run = perplexity_processes(quick, corpus, TOKENIZER, folder)
    one, two = run["one"], run["two"]
    difference = abs(two["bits_per_byte"] - one["bits_per_byte"]) / abs(one["bits_per_byte"])
    calls = 200 if quick else 5000
    micros = broadcast_microseconds(calls, folder)
    return [
        Row("perplexity, 2 CPU processes", "1 process vs 2 (torchrun, whole process, one thread each)",
            run["one_seconds"] / run["two_seconds"], AGREEMENT,
            f"{run['two_seconds']:.1f} s vs {run['one_seconds']:.1f} s for {one['tokens']:,} tokens; bits/byte "
            f"{two['bits_per_byte']:.6f} vs {one['bits_per_byte']:.6f}",
            figures={"relative_difference": difference}),
        Row("max_train_seconds, 2 CPU processes", "rank 0's clock reading, broadcast once per step", None, None,
            f"{micros:,.0f} µs per optimizer step (median of {calls:,} broadcasts of 2 float64, gloo)"),
    ]
