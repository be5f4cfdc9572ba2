"""``hf-clm perplexity MODEL [MODEL ...] (--data FILE ... | --dataset_name NAME | --recipe RECIPE)``:
corpus perplexity, bits per byte and bits per character of one or several models on the same text.

Under a launcher (``torchrun``, ``accelerate launch``) the processes score the text together, each
its share of the windows on its own device, and rank 0 alone prints and writes the figures one
process would have (:mod:`hf_clm.evaluation.processes`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hf_clm.commands.arguments import add_device_arguments, check_flag_ranges, check_output_folder, command_parser
from hf_clm.errors import HfClmError
from hf_clm.recipe.ranges import at_least
from hf_clm.run.artifacts import json_text
from hf_clm.run.verbosity import quiet_libraries

HELP = "corpus perplexity, bits per byte and bits per character of a trained model"
DEFAULT_SPLIT = "test"  # of --dataset_name
RANGES = {"window": at_least(2), "stride": at_least(1), "batch_size": at_least(1), "limit": at_least(1),
          "ddp_timeout": at_least(1)}


def parser() -> argparse.ArgumentParser:
    p = command_parser("perplexity", HELP)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="run directories, LoRA adapter directories, or models from_pretrained loads (e.g. gpt2); "
                        "several are scored on the same text")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", nargs="+", metavar="FILE",
                        help="text files of any kind (one UTF-8 document per file; paths, globs, directories) "
                             "or json/jsonl/csv/parquet tables")
    source.add_argument("--dataset_name", help="a Hub dataset id or local datasets folder (load_dataset)")
    source.add_argument("--recipe", help="the documents this recipe's training validates on")
    p.add_argument("--dataset_config_name", default=None, help="configuration of --dataset_name")
    p.add_argument("--split", default=None, help=f"split of --dataset_name (default {DEFAULT_SPLIT})")
    p.add_argument("--text_column", default=None,
                   help="column holding the text, of --dataset_name or of --data tables (default text)")
    p.add_argument("--sample_by", choices=("document", "paragraph", "line"), default=None,
                   help="--data text files: one document per file (default), per paragraph (the text cut at "
                        "every two consecutive newlines, as text.split('\\n\\n'), empty pieces dropped) or per line")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N documents (as lm-evaluation-harness's --limit)")
    p.add_argument("--convention", choices=("strided", "rolling"), default="strided",
                   help="strided: documents + EOS as one stream in windows moved by --stride (the Hugging Face "
                        "guide); rolling: each document alone, every token scored once (lm-evaluation-harness)")
    p.add_argument("--window", type=int, default=None,
                   help="tokens per window (default: the model's context length)")
    p.add_argument("--stride", type=int, default=None,
                   help="strided: tokens between window starts (default: --window, i.e. no overlap)")
    p.add_argument("--batch_size", type=int, default=8, help="windows per forward pass")
    add_device_arguments(p)
    p.add_argument("--output", default=None,
                   help="folder for report.md, report.json and a bar chart comparing the models")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (one object per model)")
    p.add_argument("--ddp_timeout", type=int, default=1800,
                   help="under a launcher: seconds to wait for the other processes (to reach the rendezvous, and "
                        "at each gather), as train's recipe key")
    return p


def source_flag_problem(args: argparse.Namespace) -> str | None:
    """A flag that does not apply to the chosen text source, which would be ignored."""
    if args.sample_by is not None and not args.data:
        own = "the recipe names its own sample_by" if args.recipe else "each row of a dataset is one document"
        return (f"--sample_by applies to --data text files, not to {'--recipe' if args.recipe else '--dataset_name'} "
                f"({own}); drop it")
    if args.dataset_name:
        return None
    given = [flag for flag, value in (("--split", args.split), ("--dataset_config_name", args.dataset_config_name))
             if value is not None]
    if given:
        return (f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to --dataset_name only, not to "
                f"{'--recipe' if args.recipe else '--data'}; drop {'them' if len(given) > 1 else 'it'}")
    if args.recipe and args.text_column is not None:
        return ("--text_column applies to --dataset_name and --data tables, not to --recipe (the recipe names its "
                "own text_column); drop it")
    return None


def evaluation_text(args: argparse.Namespace) -> tuple[list[str], dict]:
    """The documents to score (the first ``--limit`` of them) and the row's account of them:
    ``evaluated_on`` in words, ``sample_by`` (of --data text files) and ``limit``."""
    from hf_clm.data.corpus import (
        TEXT,
        builder_for,
        dataset_split,
        evaluation_documents,
        expand_files,
        file_names,
        validation_split,
        validation_text,
    )
    from hf_clm.recipe.parser import parse_recipe

    sample_by = None
    if args.recipe:
        data = parse_recipe([args.recipe], command="perplexity").data_args
        split, source = validation_split(data), validation_text(vars(data))
    elif args.dataset_name:
        split = dataset_split(args.dataset_name, args.dataset_config_name, args.split or DEFAULT_SPLIT,
                              args.text_column or TEXT)
        name = Path(args.dataset_name).name if Path(args.dataset_name).is_dir() else args.dataset_name
        source = f"{' '.join(filter(None, (name, args.dataset_config_name)))}, {args.split or DEFAULT_SPLIT} split"
    else:
        split = evaluation_documents(args.data, column=args.text_column, sample_by=args.sample_by)
        files = expand_files(args.data, "--data")
        text_files = builder_for(files, "--data") == "text"
        sample_by = (args.sample_by or "document") if text_files else None
        source = file_names(args.data) + (f", one document per {sample_by}" if sample_by not in (None, "document")
                                          else "")
    if args.text_column:
        source += f", column {args.text_column}"
    texts = [t for t in split["text"] if t][:args.limit]
    if not texts:
        raise HfClmError("the evaluation text is empty: no document holds any text")
    # the documents actually scored: --limit may name more than there are
    first = f", the first {len(texts):,} documents" if args.limit and args.limit < len(split) else \
        (f", all {len(texts):,} documents (--limit {args.limit:,})" if args.limit else "")
    return texts, {"evaluated_on": source + first, "sample_by": sample_by, "limit": args.limit}


def main(argv: list[str], verbose: bool = False) -> int:
    args = parser().parse_args(argv)
    check_flag_ranges(args, RANGES)
    quiet_libraries(verbose)
    from accelerate import PartialState

    from hf_clm.evaluation.perplexity import perplexity_row
    from hf_clm.evaluation.processes import launched_processes
    from hf_clm.evaluation.report import write_comparison
    from hf_clm.model.build import load_for_inference
    from hf_clm.training.distributed import end_with_the_launcher, use_cpu_collectives_without_gpu

    if problem := source_flag_problem(args):
        raise HfClmError(problem)
    if args.output:
        check_output_folder(args.output, refuse_run=True)
    texts, text_fields = evaluation_text(args)
    end_with_the_launcher()
    use_cpu_collectives_without_gpu()
    processes = launched_processes(args.ddp_timeout)
    # under a launcher each process scores on its own device (cuda:LOCAL_RANK), unless --device says otherwise
    device = args.device or (str(PartialState().device) if processes.count > 1 else None)
    rows = []
    for name in args.models:
        model, tokenizer = load_for_inference(name, device, args.dtype)
        row = {"model": name, **perplexity_row(model, tokenizer, texts, args.convention, args.window, args.stride,
                                               args.batch_size, progress=not args.json and processes.leads,
                                               processes=processes), **text_fields}
        rows.append(row)
        if processes.leads:
            print(json_text(row, indent=None) if args.json else format_perplexity(row))
        del model
    if args.output and processes.leads:
        for path in write_comparison(rows, args.output):
            print(path, file=sys.stderr if args.json else sys.stdout)
    return 0


def format_perplexity(row: dict) -> str:
    from hf_clm.run.figures import fmt

    extra = (f"stride {row['stride']}" if row["convention"] == "strided" else
             f"word perplexity {fmt(row.get('word_perplexity'), '.3f')}")
    line = (f"{row['model']}: perplexity {fmt(row['perplexity'], '.3f')} | {fmt(row['bits_per_byte'], '.4f')} "
            f"bits/byte | {fmt(row['bits_per_char'], '.4f')} bits/char | {row['tokens']:,} tokens | "
            f"{row['convention']}, window {row['window']}, {extra} | {row['device']}, {row['dtype']}")
    if row["bits_per_byte"] is None:
        line += " (no bits/byte or bits/char: every scored token is a special token such as EOS, which stands " \
                "for no text)"
    return line
