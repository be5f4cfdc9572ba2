"""Stage ``nanogpt`` (run only when named, with ``--nanogpt CHECKOUT``): nanoGPT's CPU baby GPT from a
checkout of github.com/karpathy/nanoGPT beside ``recipes/shakespeare-baby.yaml`` with nanoGPT's wall
time as its budget, on the same text and machine, both scored in bits per character
(``bench/nanogpt.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.rows import Ceiling, FiguresAtMost, Row
from bench.stages import SHAKESPEARE

# The package's bits per character, and its wall time within nanoGPT's.
TARGET = FiguresAtMost((Ceiling("bits_per_char", 2.15, "bits/char"),
                        Ceiling("wall_s", "nanogpt_wall_s", "nanoGPT's wall")))


def rows(quick: bool, folder: Path, checkout: Path) -> list[Row]:
    """One: shakespeare-baby vs nanoGPT's baby GPT, bits/char; --quick changes nothing here."""
    from bench import nanogpt as nano

    work = nano.nanogpt_checkout(checkout, folder, SHAKESPEARE)
    nano_wall = nano.timed([sys.executable, "train.py", *nano.NANOGPT_CPU], cwd=work)
    nano_bits = nano.nanogpt_bits_per_char(work)
    train, val = nano.split_text(SHAKESPEARE, folder)
    fixed = nano.package_run(folder, train, val, nano.BUDGET_PROBE_SECONDS, "baby-probe") - nano.BUDGET_PROBE_SECONDS
    budget = nano_wall - fixed - nano.MARGIN_SECONDS
    wall = nano.package_run(folder, train, val, budget, "baby-budget")
    bits = nano.package_bits_per_char(folder / "baby-budget", val)
    return [Row("quality/time", "shakespeare-baby vs nanoGPT's CPU baby GPT, bits/char (same text, same machine)",
                nano_bits / bits, TARGET,
                f"{bits:.3f} bits/char in {wall:.1f} s (max_train_seconds {budget:.1f} = nanoGPT's "
                f"{nano_wall:.1f} s − {fixed:.1f} s fixed costs − {nano.MARGIN_SECONDS:g} s) vs nanoGPT "
                f"{nano_bits:.3f} bits/char in {nano_wall:.1f} s, start to exit",
                figures={"bits_per_char": bits, "wall_s": wall, "nanogpt_wall_s": nano_wall})]
