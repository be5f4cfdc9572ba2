"""``hf-clm train [RECIPE] [--key value ...]``: a recipe's run (or, with ``--rehearse K``, its rehearsal)."""

from __future__ import annotations

import logging
from pathlib import Path

from hf_clm.commands.arguments import check_recipe_keys
from hf_clm.errors import HfClmError
from hf_clm.run.verbosity import quiet_libraries

logger = logging.getLogger("hf_clm")

HELP = "train a causal LM from a recipe (default: the embedded python-stdlib demo)"


def default_recipe_path() -> Path:
    """recipes/default.yaml: inside the installed package, or beside it in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "recipes" / "default.yaml", package.parent / "recipes" / "default.yaml"):
        if candidate.is_file():
            return candidate
    raise HfClmError("recipes/default.yaml is missing from this installation; pass a recipe file")


def main(argv: list[str], verbose: bool = False) -> int:
    check_recipe_keys(argv)
    quiet_libraries(verbose)
    from hf_clm.planning.rehearsal import rehearsal_values, rehearse
    from hf_clm.recipe.parser import flag_names, parse_recipe, split_recipe_argv
    from hf_clm.recipe.schema import SOURCE_KEYS
    from hf_clm.training.distributed import end_with_the_launcher, use_cpu_collectives_without_gpu
    from hf_clm.training.train import run

    end_with_the_launcher()
    use_cpu_collectives_without_gpu()
    wants_help = any(a in ("-h", "--help") for a in argv)
    path, flags = (None, argv) if wants_help else split_recipe_argv(argv)
    # A corpus flag without a recipe describes a run of its own: the embedded default is not used.
    names_corpus = bool(flag_names(flags) & set(SOURCE_KEYS))
    default = None if path or wants_help or names_corpus else default_recipe_path()
    if default is not None:
        logger.info("No recipe given: running %s", default)
    recipe = parse_recipe([path, *flags] if path else flags, default_recipe=default, rehearsal=rehearsal_values)
    (rehearse if recipe.run_args.rehearse else run)(recipe)
    return 0
