"""``hf-clm push RUN_DIR --repo-id OWNER/NAME``: a finished run uploaded to a Hugging Face Hub repository."""

from __future__ import annotations

import argparse

from hf_clm.commands.arguments import command_parser
from hf_clm.run.verbosity import quiet_libraries

HELP = "upload a finished run (model, tokenizer, recipe, report, model card) to a Hugging Face Hub repository"


def parser() -> argparse.ArgumentParser:
    p = command_parser("push", HELP + ". The token comes from HF_TOKEN or the stored login ('hf auth login').")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory, or a LoRA run's RUN_DIR/merged")
    p.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="OWNER/NAME of the model repository")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--revision", default=None, help="branch to push to (created when missing; default main)")
    p.add_argument("--commit-message", "--commit_message", dest="commit_message", default=None,
                   help="commit message (default: the run name and its perplexity)")
    p.add_argument("--merged", action="store_true",
                   help="a LoRA run: push its merged model (RUN_DIR/merged, see 'hf-clm merge') instead of the adapter")
    p.add_argument("--base_model", "--base-model", dest="base_model", default=None, metavar="OWNER/NAME",
                   help="the Hub id of the base model the run was fine-tuned from (required to push the adapter "
                        "of a LoRA run on a local base model): named in adapter_config.json and the model card")
    p.add_argument("--license", default=None, metavar="SPDX-ID",
                   help="the model's license, e.g. apache-2.0 or mit (default: the recipe's license key; one of "
                        "the two is required), or 'none' to publish it without one")
    p.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                   help="write the model card and list the files that would be uploaded, with their sizes; send "
                        "nothing")
    return p


def main(argv: list[str], verbose: bool = False) -> int:
    args = parser().parse_args(argv)
    quiet_libraries(verbose)
    from hf_clm.hub.publish import PublishOptions
    from hf_clm.hub.push import PushTarget, push_run

    target = PushTarget(args.repo_id, args.private, args.revision, args.commit_message)
    options = PublishOptions(args.merged, args.base_model, args.license)
    print(push_run(args.run_dir, target, options=options, dry_run=args.dry_run))
    return 0
