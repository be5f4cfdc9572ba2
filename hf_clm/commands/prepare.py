"""``hf-clm prepare RECIPE [--shard I --num_shards N | --tokenizer_only]``: a recipe's corpus
tokenized and cut into blocks once, into its prepared_dataset folder."""

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


def main(argv: list[str], verbose: bool = False) -> int:
    try:
        args, recipe_argv = parser().parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise HfClmError(f"{err}: --shard and --num_shards take whole numbers") from None
    if problem := shard_problem(args.shard, args.num_shards, args.tokenizer_only):
        raise HfClmError(problem)
    check_recipe_keys(recipe_argv)
    quiet_libraries(verbose)
    from hf_clm.data.prepare import Shard, prepare
    from hf_clm.recipe.parser import parse_recipe

    shard = Shard(args.shard, args.num_shards) if args.shard is not None else None
    prepare(parse_recipe(recipe_argv, command="prepare"), shard, args.tokenizer_only)
    return 0
