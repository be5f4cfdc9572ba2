"""What every command's parser is built from: one factory, the recipe's key check before any
import, the model and device flags, output folders, and flag ranges through :mod:`hf_clm.recipe.ranges`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from hf_clm.errors import HfClmError
from hf_clm.recipe.ranges import Range, range_problems
from hf_clm.run.artifacts import output_folder_problem
from hf_clm.run.files import PERPLEXITY_FILENAME


class CommandArgumentParser(argparse.ArgumentParser):
    """Every command's parser (and the top one): a usage error is one line ``hf-clm: error: ...``
    saying what is wrong and where the flags are listed, not argparse's usage block."""

    def error(self, message: str):
        raise HfClmError(flag_error_line(message, self.prog))


def flag_error_line(message: str, prog: str) -> str:
    """argparse's complaint as one line: ``--limit must be an integer, not '1.5'; see 'hf-clm perplexity --help'``."""
    see = f"see '{prog} --help'"
    bad = re.match(r"argument ([^/:\s]+)[^:]*: invalid (int|float) value: (.*)$", message)
    if bad:
        return f"{bad[1]} must be {'an integer' if bad[2] == 'int' else 'a number'}, not {bad[3]}; {see}"
    choice = re.match(r"argument ([^/:\s]+)[^:]*: invalid choice: (.*?) \(choose from (.*)\)$", message)
    if choice:
        return f"{choice[1]} must be one of {choice[3].replace(chr(39), '')}, not {choice[2]}; {see}"
    required = re.match(r"the following arguments are required: (.*)$", message)
    if required:
        return f"{prog} needs {required[1]}; {see}"
    return f"{prog}: {message}; {see}"


def command_parser(name: str, description: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of ``hf-clm NAME``: every command builds its own with this."""
    return CommandArgumentParser(prog=f"hf-clm {name}", description=description, **kwargs)


def check_recipe_keys(argv: list[str], own_flags: tuple[str, ...] = ()) -> None:
    """Misspelt keys (not the command's ``own_flags``), before the seconds of importing torch and transformers."""
    from hf_clm.recipe.keys import unknown_key_problems

    if problems := unknown_key_problems(argv, own_flags):
        raise HfClmError("; ".join(problems))


def check_flag_ranges(args: argparse.Namespace, ranges: dict[str, Range]) -> None:
    """Numeric flags outside what the command (and the libraries under it) accept, in one line."""
    if problems := range_problems(ranges, vars(args), prefix="--"):
        raise HfClmError("; ".join(problems))


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL",
                        help="a run directory, a LoRA adapter directory, or any model from_pretrained loads (e.g. gpt2)")
    add_device_arguments(parser)


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: the accelerator when there is one, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                        help="weights and compute dtype (default auto: the checkpoint's own)")


def check_output_folder(folder: str, refuse_run: bool = False) -> None:
    """Refuse an --output folder files cannot be written into (or, with ``refuse_run``, a run
    directory, whose own report.md and report.json would be replaced), before any work."""
    problem = output_folder_problem(Path(folder))
    if problem is None and refuse_run and (Path(folder) / PERPLEXITY_FILENAME).is_file():
        problem = "is a run directory (its report.md and report.json would be replaced)"
    if problem:
        raise HfClmError(f"--output {folder} {problem}; choose another folder")
