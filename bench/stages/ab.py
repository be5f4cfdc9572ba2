"""Stage ``ab`` (about an hour, run only when named): the A/B of the training switches on
``shakespeare-baby`` (nanoGPT's split) and the default demo: every switch off, each switch alone and
the switches that beat the baseline together, scored in bits per character of the held-out text, at
equal wall time or, with ``--ab_steps N``, at equal steps (``bench/ab.py``)."""

from __future__ import annotations

from pathlib import Path

from bench.ab import Outcome, ab_outcomes, baby_recipe, default_recipe
from bench.rows import Basis, Row
from bench.stages import SHAKESPEARE

RECIPES = ("baby", "default")
# --quick: models and corpora small enough to check the A/B runs, in seconds per variant.
QUICK_AB_FLAGS = {
    "baby": ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--vocab_size", "300", "--warmup_steps", "5"],
    "default": ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--vocab_size", "300", "--warmup_steps", "5",
                "--max_train_samples", "30", "--max_eval_samples", "5"],
}


def rows(quick: bool, folder: Path, recipes: list[str], steps: int | None) -> list[Row]:
    """Per recipe: the baseline, each switch alone and the best combination, each with its bits per
    character, steps and wall seconds; the ratio is the baseline's bits/char over the variant's."""
    rows = []
    for name in recipes:
        recipe = baby_recipe(folder, SHAKESPEARE) if name == "baby" else default_recipe()
        equal_steps = steps if steps is not None else (30 if quick else None)
        baseline, outcomes = ab_outcomes(recipe, folder, equal_steps, QUICK_AB_FLAGS[name] if quick else [])
        basis = Basis(f"equal steps ({equal_steps})" if equal_steps is not None
                      else f"equal wall time ({baseline.wall:.0f} s)")
        rows += [variant_row(recipe.name, what, outcome, baseline, basis)
                 for what, outcome in {"baseline (every switch off)": baseline, **outcomes}.items()]
    return rows


def variant_row(recipe: str, what: str, outcome: Outcome, baseline: Outcome, basis: Basis) -> Row:
    return Row(f"A/B {recipe}", what, baseline.bits_per_char / outcome.bits_per_char, basis,
               f"{outcome.bits_per_char:.3f} bits/char, {outcome.steps} steps, {outcome.wall:.0f} s wall",
               extra={"bits_per_char": outcome.bits_per_char, "steps": outcome.steps, "wall_s": outcome.wall})
