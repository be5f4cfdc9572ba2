"""``hf-clm``: the command line. Each subcommand parses its arguments and calls one station."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from hf_clm import __version__
from hf_clm.run.artifacts import json_text, output_folder_problem
from hf_clm.errors import HfClmError
from hf_clm.run.files import PERPLEXITY_FILENAME
from hf_clm.run.verbosity import VERBOSE_FLAG, configure_logging, quiet_libraries, split_verbose

logger = logging.getLogger("hf_clm")

DEFAULT_SPLIT = "test"  # of perplexity --dataset_name

COMMANDS = {
    "train": "train a causal LM from a recipe (default: the embedded python-stdlib demo)",
    "prepare": "tokenize and cut a recipe's corpus into blocks once, into its prepared_dataset folder",
    "perplexity": "corpus perplexity, bits per byte and bits per character of a trained model",
    "generate": "continue a prompt with a trained model",
    "report": "write report.md, report.json and learning-curve PNGs for one run or a comparison of several",
    "push": "upload a finished run (model, tokenizer, recipe, report, model card) to a Hugging Face Hub repository",
    "merge": "merge a LoRA run's adapter into its base model: one plain model AutoModelForCausalLM loads",
    "explain": "show, position by position, how a model scores a text: targets, probabilities, top-k, loss",
    "plan": "size a recipe's run without running it: parameters, memory per device, fit, checkpoint, time",
}


def default_recipe_path() -> Path:
    """recipes/default.yaml: inside the installed package, or beside it in a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "recipes" / "default.yaml", package.parent / "recipes" / "default.yaml"):
        if candidate.is_file():
            return candidate
    raise HfClmError("recipes/default.yaml is missing from this installation; pass a recipe file")


def check_recipe_keys(argv: list[str]) -> None:
    """Misspelt keys, before the seconds of importing torch and transformers."""
    from hf_clm.recipe.keys import unknown_key_problems

    if problems := unknown_key_problems(argv):
        raise HfClmError("; ".join(problems))


def train_command(argv: list[str]) -> int:
    from hf_clm.training.distributed import end_with_the_launcher, use_cpu_collectives_without_gpu
    from hf_clm.recipe.schema import SOURCE_KEYS
    from hf_clm.recipe.parser import flag_names, parse_recipe, split_recipe_argv
    from hf_clm.planning.rehearsal import rehearsal_values, rehearse
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


def prepare_parser() -> argparse.ArgumentParser:
    """prepare's own flags; the rest of its command line is the recipe and its keys."""
    parser = argparse.ArgumentParser(prog="hf-clm prepare", add_help=False, exit_on_error=False)
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


def prepare_command(argv: list[str], verbose: bool = False) -> int:
    try:
        args, recipe_argv = prepare_parser().parse_known_args(argv)
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


def model_dir_parser(sub, name: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])
    parser.add_argument("model_dir", metavar="MODEL",
                        help="a run directory, a LoRA adapter directory, or any model from_pretrained loads (e.g. gpt2)")
    add_device_arguments(parser)
    return parser


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: the accelerator when there is one, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="weights and compute dtype (default auto: the checkpoint's own)")


def perplexity_parser(sub) -> None:
    p = sub.add_parser("perplexity", help=COMMANDS["perplexity"], description=COMMANDS["perplexity"])
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
                   help="--data text files: one document per file (default), per paragraph (text between blank "
                        "lines) or per line")
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
    first = f", the first {args.limit:,} documents" if args.limit else ""
    return texts, {"evaluated_on": source + first, "sample_by": sample_by, "limit": args.limit}


def perplexity_command(args: argparse.Namespace) -> int:
    from hf_clm.evaluation.scoring import checked_window, evaluate_texts
    from hf_clm.model.build import context_length, device_description, load_for_inference
    from hf_clm.evaluation.report import write_comparison

    if problem := source_flag_problem(args):
        raise HfClmError(problem)
    if args.output:
        check_output_folder(args.output, refuse_run=True)
    texts, text_fields = evaluation_text(args)
    rows = []
    for name in args.models:
        model, tokenizer = load_for_inference(name, args.device, args.dtype)
        window, stride = checked_window(args.convention, args.window, args.stride, context_length(model.config))
        evaluation = evaluate_texts(model, tokenizer, texts, args.convention, window, stride, args.batch_size,
                                    progress=not args.json)
        row = {"model": name, **scored_figures(evaluation, tokenizer, texts), **text_fields,
               "device": device_description(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
        rows.append(row)
        print(json_text(row, indent=None) if args.json else format_perplexity(row))
        del model
    if args.output:
        for path in write_comparison(rows, args.output):
            print(path, file=sys.stderr if args.json else sys.stdout)
    return 0


def scored_figures(evaluation, tokenizer, texts: list[str]) -> dict:
    """The evaluation's figures; an error when not one token was scored."""
    from hf_clm.evaluation.scoring import document_ids

    if evaluation.scores.tokens == 0:
        tokens = sum(len(ids) for ids in document_ids(tokenizer, texts))
        raise HfClmError(f"the text is too short to score: {tokens} tokens; a model scores a token after at least "
                         f"one token of context, so give a longer text")
    return evaluation.figures()


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


def generate_parser(sub) -> None:
    p = model_dir_parser(sub, "generate")
    p.add_argument("prompt", help="text to continue")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens to generate (default %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature; 0 = greedy (default %(default)s)")
    p.add_argument("--top_k", type=int, default=50,
                   help="sample among the k likeliest tokens; 0 = off (default %(default)s)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass; 1 = off (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; the same seed repeats the same text (default %(default)s)")
    p.add_argument("--ignore_eos", action="store_true",
                   help="do not stop at end-of-text: the model's EOS is never sampled, so the text runs to "
                        "--max_new_tokens (default: stop where the model ends the text, and say so)")


def generate_command(args: argparse.Namespace) -> int:
    from hf_clm.model.generate import Sampling, generate
    from hf_clm.model.build import load_for_inference

    model, tokenizer = load_for_inference(args.model_dir, args.device, args.dtype)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed, args.ignore_eos)
    generate(model, tokenizer, args.prompt, sampling, stream=True)
    return 0


def explain_parser(sub) -> None:
    p = model_dir_parser(sub, "explain")
    p.add_argument("text", help="the text to explain, e.g. \"The cat sat on the mat\"")
    p.add_argument("--top_k", type=int, default=5, help="predictions shown per position")
    p.add_argument("--json", action="store_true", help="print the explanation as one JSON object")


def explain_command(args: argparse.Namespace) -> int:
    from hf_clm.evaluation.explain import explain, format_explanation
    from hf_clm.model.build import device_description, load_for_inference

    model, tokenizer = load_for_inference(args.model_dir, args.device, args.dtype)
    explanation = explain(model, tokenizer, args.text, args.top_k)
    where = {"device": device_description(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
    print(json_text({**explanation.as_dict(), **where}, indent=None) if args.json else
          format_explanation(explanation) + f" ({where['device']}, {where['dtype']})")
    return 0


def push_parser(sub) -> None:
    p = sub.add_parser("push", help=COMMANDS["push"], description=COMMANDS["push"] +
                       ". The token comes from HF_TOKEN or the stored login ('hf auth login').")
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


def push_command(args: argparse.Namespace) -> int:
    from hf_clm.hub.push import PushTarget, push_run
    from hf_clm.hub.publish import PublishOptions

    target = PushTarget(args.repo_id, args.private, args.revision, args.commit_message)
    options = PublishOptions(args.merged, args.base_model, args.license)
    print(push_run(args.run_dir, target, options=options, dry_run=args.dry_run))
    return 0


def merge_parser(sub) -> None:
    p = sub.add_parser("merge", help=COMMANDS["merge"], description=COMMANDS["merge"])
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished LoRA run directory")
    p.add_argument("--output", default=None, help="where to write the merged model (default: RUN_DIR/merged)")


def merge_command(args: argparse.Namespace) -> int:
    from hf_clm.model.build import merge_adapter

    print(merge_adapter(args.run_dir, args.output, flag="--output" if args.output else None))
    return 0


def report_parser(sub) -> None:
    p = sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run directories")
    p.add_argument("--output", default=None,
                   help="where to write the report (default: the run directory itself for one run, "
                        "./report for several)")


def report_command(args: argparse.Namespace) -> int:
    from hf_clm.evaluation.report import write_report

    if args.output:
        check_output_folder(args.output)
    output = args.output or (args.run_dirs[0] if len(args.run_dirs) == 1 else "report")
    for path in write_report(args.run_dirs, output):
        print(path)
    return 0


def check_output_folder(folder: str, refuse_run: bool = False) -> None:
    """Refuse an --output folder files cannot be written into (or, with ``refuse_run``, a run
    directory, whose own report.md and report.json would be replaced), before any work."""
    problem = output_folder_problem(Path(folder))
    if problem is None and refuse_run and (Path(folder) / PERPLEXITY_FILENAME).is_file():
        problem = "is a run directory (its report.md and report.json would be replaced)"
    if problem:
        raise HfClmError(f"--output {folder} {problem}; choose another folder")


# transformers.set_seed seeds numpy, which takes 32-bit seeds only
SEED_RANGE = (0, 2**32 - 1)
# Below this, logits / temperature overflow float32 and sampling fails; 0 means greedy.
SMALLEST_TEMPERATURE = 1e-6
# (flag, lowest, highest or None) of the integer flags of each command
INTEGER_FLAGS = {
    "generate": (("seed", *SEED_RANGE), ("max_new_tokens", 1, None), ("top_k", 0, None)),
    "perplexity": (("window", 2, None), ("stride", 1, None), ("batch_size", 1, None), ("limit", 1, None)),
    "explain": (("top_k", 1, None),),
}


def integer_problem(flag: str, value: int | None, lowest: int, highest: int | None) -> str | None:
    if value is None or (lowest <= value and (highest is None or value <= highest)):
        return None
    if highest is None:
        return f"{flag} must be at least {lowest:,}, not {value}"
    return f"{flag} must be an integer from {lowest:,} to {highest:,}, not {value}"


def sampling_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        problems.append(f"--temperature must be a finite number >= 0 (0 = greedy), not {args.temperature}")
    elif 0 < args.temperature < SMALLEST_TEMPERATURE:
        problems.append(f"--temperature must be 0 (greedy) or at least {SMALLEST_TEMPERATURE:g}, not "
                        f"{args.temperature:g}: smaller ones overflow the scores")
    if not 0 < args.top_p <= 1:
        problems.append(f"--top_p must be a number in (0, 1] (1 = off), not {args.top_p}")
    return problems


def flag_problems(args: argparse.Namespace) -> list[str]:
    """Numeric flags outside what the command (and the libraries under it) accept."""
    problems = [integer_problem(f"--{name}", getattr(args, name), lowest, highest)
                for name, lowest, highest in INTEGER_FLAGS.get(args.command, ())]
    if args.command == "generate":
        problems += sampling_problems(args)
    return [p for p in problems if p]


def top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-clm", description="Causal language modeling on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hf-clm {__version__}")
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show the libraries' warnings, notices and loading bars (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("train", help=COMMANDS["train"] + "; 'hf-clm train --help' lists every recipe key",
                   add_help=False)
    sub.add_parser("prepare", help=COMMANDS["prepare"] + "; takes the same RECIPE and flags as train",
                   add_help=False)
    sub.add_parser("plan", help=COMMANDS["plan"], add_help=False)
    perplexity_parser(sub)
    generate_parser(sub)
    explain_parser(sub)
    report_parser(sub)
    push_parser(sub)
    merge_parser(sub)
    return parser


def dispatch(argv: list[str], verbose: bool = False) -> int:
    if argv and argv[0] == "prepare":
        return prepare_command(argv[1:], verbose)
    if argv and argv[0] == "train":
        check_recipe_keys(argv[1:])
        quiet_libraries(verbose)
        return train_command(argv[1:])
    if argv and argv[0] == "plan":
        from hf_clm.commands.plan import plan_command

        quiet_libraries(verbose)
        return plan_command(argv[1:])
    args = top_parser().parse_args(argv)
    if problems := flag_problems(args):
        raise HfClmError("; ".join(problems))
    quiet_libraries(verbose)
    commands = {"perplexity": perplexity_command, "generate": generate_command, "explain": explain_command,
                "report": report_command,
                "push": push_command, "merge": merge_command}
    return commands[args.command](args)


def unreadable_message(err: OSError) -> str | None:
    """One line for a file the command may not read (or write)."""
    import errno

    if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not err.filename:
        return None
    return f"{err.filename}: {err.strerror}; check its permissions (or the folder's) and run the command again"


def live_progress_bars() -> list:
    """The tqdm bars not yet closed, of tqdm and of its subclasses (tqdm.auto, the Hub's)."""
    if "tqdm" not in sys.modules:
        return []
    from tqdm import tqdm

    classes, bars = [tqdm], set()
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        bars.update(cls.__dict__.get("_instances", ()))
    return list(bars)


def print_error(message: str) -> None:
    """The error line, as the last line on stderr: an open progress bar would redraw itself after
    it (when it is collected, or at exit), so every bar is closed first."""
    for bar in live_progress_bars():
        bar.close()
    if os.environ.get("LOCAL_RANK", "0") == "0":  # under a launcher, once per machine, not once per process
        print(f"hf-clm: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv, verbose = split_verbose(sys.argv[1:] if argv is None else list(argv))
    configure_logging(verbose)
    try:
        return dispatch(argv, verbose)
    except HfClmError as err:
        print_error(str(err))
        return getattr(err, "exit_status", 2)
    except OSError as err:
        from hf_clm.run.artifacts import disk_full_message

        message = disk_full_message(err) or unreadable_message(err)
        if message is None:
            raise
        print_error(message)
        return 2
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else 1
