"""``hf-clm prepare RECIPE [--shard I --num_shards N | --tokenizer_only | --executor E --tasks N]``: a
recipe's corpus tokenized and cut into blocks once, into its prepared_dataset folder; in N parts as a
datatrove pipeline (:mod:`hf_clm.data.pipeline`). Reads only the recipe's corpus and tokenizer keys:
imports neither torch nor Trainer."""

from __future__ import annotations

import argparse

from hf_clm.commands.arguments import check_recipe_keys, command_parser
from hf_clm.errors import HfClmError
from hf_clm.run.verbosity import quiet_libraries

HELP = "tokenize and cut a recipe's corpus into blocks once, into its prepared_dataset folder"


def parser() -> argparse.ArgumentParser:
    """prepare's own flags; the rest of its command line is the recipe and its keys."""
    parser = command_parser("prepare", HELP, add_help=False, exit_on_error=False)
    parser.add_argument("--shard", type=int, default=None)
    parser.add_argument("--num_shards", type=int, default=None)
    parser.add_argument("--tokenizer_only", action="store_true")
    return parser


def shard_problem(shard: int | None, num_shards: int | None, tokenizer_only: bool) -> str | None:
    if (shard is None) != (num_shards is None):
        return "--shard and --num_shards go together: --shard I --num_shards N prepares the I-th of N parts"
    if shard is not None and tokenizer_only:
        return "--tokenizer_only prepares no blocks, so it takes no --shard; run it once, then the shards"
    if num_shards is not None and num_shards < 1:
        return f"--num_shards must be at least 1, not {num_shards}"
    if shard is not None and not 0 <= shard < num_shards:
        return f"--shard must be from 0 to {num_shards - 1} (--num_shards {num_shards}), not {shard}"
    return None


def pipeline_problem(recipe, shard: int | None, tokenizer_only: bool) -> str | None:
    """A hand-run shard (or tokenizer) is one task of the pipeline: not with the pipeline's own settings."""
    settings = recipe.prepare_args
    if (shard is not None or tokenizer_only) and (settings.tasks > 1 or settings.executor != "local"):
        given = "--shard" if shard is not None else "--tokenizer_only"
        return (f"{given} runs one part here, by hand; executor {settings.executor} with tasks {settings.tasks} "
                f"runs them all: give one or the other (--tasks 1 for the hand-run part)")
    return None


def main(argv: list[str], verbose: bool = False) -> int:
    try:
        args, recipe_argv = parser().parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise HfClmError(f"{err}: --shard and --num_shards take whole numbers") from None
    if problem := shard_problem(args.shard, args.num_shards, args.tokenizer_only):
        raise HfClmError(problem)
    from hf_clm.recipe.keys import prepare_key_names

    check_recipe_keys(recipe_argv, prepare_key_names())
    quiet_libraries(verbose)
    from hf_clm.recipe.data_recipe import parse_data_recipe

    recipe = parse_data_recipe(recipe_argv)
    if problem := pipeline_problem(recipe, args.shard, args.tokenizer_only):
        raise HfClmError(problem)
    if recipe.data_args.mixture is not None and (args.shard is not None or args.tokenizer_only
                                                 or recipe.prepare_args.tasks > 1 or recipe.prepare_args.executor != "local"):
        raise HfClmError("a mixture is prepared whole, by one process: drop --shard, --tokenizer_only, --executor and "
                         "--tasks (prepare a large source on its own, in parts, and name its folder as the source's "
                         "prepared_dataset)")
    if recipe.prepare_args.tasks > 1 or recipe.prepare_args.executor != "local":
        from hf_clm.data.pipeline import run_pipeline

        run_pipeline(recipe)
        return 0
    from hf_clm.data.prepare import prepare
    from hf_clm.data.shards import Shard

    prepare(recipe, Shard(args.shard, args.num_shards) if args.shard is not None else None, args.tokenizer_only)
    return 0
