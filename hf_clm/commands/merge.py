"""``hf-clm merge RUN_DIR``: a LoRA run's adapter merged into its base model."""

from __future__ import annotations

import argparse

from hf_clm.commands.arguments import command_parser
from hf_clm.run.verbosity import quiet_libraries

HELP = "merge a LoRA run's adapter into its base model: one plain model AutoModelForCausalLM loads"


def parser() -> argparse.ArgumentParser:
    p = command_parser("merge", HELP)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished LoRA run directory")
    p.add_argument("--output", default=None, help="where to write the merged model (default: RUN_DIR/merged)")
    return p


def main(argv: list[str], verbose: bool = False) -> int:
    args = parser().parse_args(argv)
    quiet_libraries(verbose)
    from hf_clm.model.merge import merge_adapter
    from hf_clm.run.locks import folder_lock

    # shared on the run (a training into it holds it exclusively), exclusive among merges of it
    with folder_lock(args.run_dir, "the run", part="merge"):
        merged = merge_adapter(args.run_dir, args.output, flag="--output" if args.output else None)
    print(merged)
    return 0
