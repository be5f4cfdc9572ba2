"""``hf-clm``: the command line. One module per command in this folder, each with its ``parser()``
and ``main(argv, verbose)``; this module lists them, dispatches, and turns errors into one line."""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType

from hf_clm import __version__
from hf_clm.commands import explain, generate, merge, perplexity, plan, prepare, push, report, train
from hf_clm.commands.arguments import CommandArgumentParser
from hf_clm.errors import HfClmError, first_line
from hf_clm.run.secrets import masked_text
from hf_clm.run.verbosity import VERBOSE_FLAG, configure_logging, split_verbose

COMMANDS: dict[str, ModuleType] = {
    "train": train, "prepare": prepare, "perplexity": perplexity, "generate": generate, "report": report,
    "push": push, "merge": merge, "explain": explain, "plan": plan,
}
# Commands that run in one process: under a launcher every process would repeat the work, print it
# again and write the same files (train and perplexity share the work out; see docs/several-processes.md).
ONE_PROCESS_COMMANDS = ("prepare", "generate", "explain", "merge", "push", "report", "plan")
# what the top-level help adds to a command's own line
HELP_NOTES = {"train": "; 'hf-clm train --help' lists every recipe key",
              "prepare": "; takes the same RECIPE and flags as train"}


def top_parser() -> argparse.ArgumentParser:
    parser = CommandArgumentParser(prog="hf-clm", description="Causal language modeling on the Hugging Face stack.")
    parser.add_argument("--version", action="version", version=f"hf-clm {__version__}")
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show the libraries' warnings, notices and loading bars (anywhere on the command line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.HELP + HELP_NOTES.get(name, ""), add_help=False)
    return parser


def launched_processes() -> int:
    """How many processes this launch started (torchrun and ``accelerate launch`` set WORLD_SIZE)."""
    size = os.environ.get("WORLD_SIZE", "1")
    return int(size) if size.isdigit() else 1


def dispatch(argv: list[str], verbose: bool = False) -> int:
    if argv and argv[0] in COMMANDS:
        if argv[0] in ONE_PROCESS_COMMANDS and (processes := launched_processes()) > 1:
            raise HfClmError(f"hf-clm {argv[0]} runs in one process, and this launch started {processes} (torchrun or "
                             f"accelerate launch): run 'hf-clm {argv[0]} ...' without a launcher")
        return COMMANDS[argv[0]].main(argv[1:], verbose)
    top_parser().parse_args(argv)  # --help, --version, or a usage error
    return 2


def unreadable_message(err: OSError) -> str | None:
    """One line for a file the command may not read (or write)."""
    import errno

    if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or not err.filename:
        return None
    return f"{err.filename}: {err.strerror}; check its permissions (or the folder's) and run the command again"


def rendezvous_message(err: RuntimeError) -> str | None:
    """One line for a process that could not reach its launch's rendezvous (the first node's
    MASTER_ADDR:MASTER_PORT) in time: torch's DistNetworkError, which names the timeout and address."""
    if type(err).__name__ not in ("DistNetworkError", "DistStoreError"):
        return None
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (f"this process (rank {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}) could not "
            f"reach the rendezvous at {where}: {str(err).strip().splitlines()[0].rstrip('.')}; check that the first node "
            f"(rank 0) is running and that this address and port are reachable from here (MASTER_ADDR, MASTER_PORT; "
            f"ddp_timeout sets how long to wait)")


def disk_full_in_chain(err: BaseException) -> str | None:
    """The full-disk line when ``err`` or an error it was raised from or during is a full disk
    (safetensors reports one in its own error's text)."""
    from hf_clm.run.artifacts import disk_full_message

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and (message := disk_full_message(err)):
            return message
        if any(words in str(err) for words in ("File too large", "No space left", "Disk quota exceeded")):
            return (f"no space left ({first_line(err)[:160]}); free some space and run the command again "
                    f"(finished files are written whole or not at all, so a rerun sees no partial result)")
        err = err.__cause__ or err.__context__
    return None


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
    it (when it is collected, or at exit), so every bar is closed first. Every error of every
    command passes here, argparse's included: token values are masked here, once."""
    for bar in live_progress_bars():
        bar.close()
    if os.environ.get("LOCAL_RANK", "0") == "0":  # under a launcher, once per machine, not once per process
        print(f"hf-clm: error: {masked_text(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv, verbose = split_verbose(sys.argv[1:] if argv is None else list(argv))
    configure_logging(verbose)
    try:
        return dispatch(argv, verbose)
    except HfClmError as err:
        print_error(str(err))
        return getattr(err, "exit_status", 2)
    except RuntimeError as err:
        if (message := rendezvous_message(err)) is None:
            raise
        print_error(message)
        return 2
    except OSError as err:
        from hf_clm.run.artifacts import disk_full_message

        message = disk_full_message(err) or unreadable_message(err)
        if message is None:
            raise
        print_error(message)
        return 2
    except Exception as err:  # a library's error over a full disk (datasets, safetensors): the cause, in one line
        if (message := disk_full_in_chain(err)) is None:
            raise
        print_error(message)
        return 2
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else 1
