"""Local data files: paths, globs and directories expanded, their format, their encoding checked,
and datasets' bars kept quiet while it reads them."""

from __future__ import annotations

import codecs
import contextlib
import glob
import os
from pathlib import Path

import datasets

from hf_clm.errors import HfClmError
from hf_clm.run.artifacts import DISK_FULL_ERRNOS

# Builders that read text files (parquet is binary, its strings are UTF-8 by format).
TEXT_BUILDERS = ("text", "json", "csv")
BUILDER_BY_SUFFIX = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json",
                     ".csv": "csv", ".parquet": "parquet"}


def is_visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def expand_files(patterns: list[str], key: str) -> list[str]:
    """Paths, globs and directories -> sorted list of data files (a directory gives every visible
    file); an error for anything matching nothing."""
    files: list[str] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_visible(p, path))
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            found = [str(path)] if path.is_file() else []
        if not found:
            what = "directory holds no visible file" if path.is_dir() else \
                "matches no file" if glob.has_magic(pattern) else \
                "is not a regular file (a pipe, socket or device); give a file" if path.exists() else "does not exist"
            raise HfClmError(f"{key}: '{pattern}' {what}")
        files.extend(found)
    return files


def builder_for(files: list[str], key: str) -> str:
    """The ``datasets`` builder of the files' format: json/csv/parquet by suffix, any other file text."""
    builders = {BUILDER_BY_SUFFIX.get(Path(f).suffix.lower(), "text") for f in files}
    if len(builders) > 1:
        raise HfClmError(f"{key}: files mix formats ({', '.join(sorted(builders))}); use one format per split")
    return builders.pop()


def local_data_files(data) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The recipe's train (and validation) files, expanded, and each split's ``datasets`` builder:
    one format for both."""
    data_files = {"train": expand_files(data.train_files, "train_files")}
    if data.validation_files:
        data_files["validation"] = expand_files(data.validation_files, "validation_files")
    builders = {split: builder_for(files, f"{split}_files") for split, files in data_files.items()}
    if len(set(builders.values())) > 1:
        raise HfClmError(f"train_files and validation_files have different formats ({builders}); use one")
    return data_files, builders


def check_utf8(path: str) -> None:
    """Raise naming the file and byte offset of the first byte that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise HfClmError(f"{path}: byte {offset + err.start} (0x{chunk[err.start]:02x}) is not valid "
                                 f"UTF-8; re-encode the file, e.g. iconv -f latin1 -t utf-8") from None
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise HfClmError(f"{path}: the file ends inside a UTF-8 character (byte {offset - 1})") from None


@contextlib.contextmanager
def local_reading_bars_off():
    """datasets' "Downloading data" and "Generating train split" bars while it reads local files: it
    copies them into its cache in a moment, and the bars measure nothing a user waits for. Shown
    again under ``--verbose`` (datasets' verbosity below errors)."""
    quiet = datasets.logging.get_verbosity() >= datasets.logging.ERROR and datasets.is_progress_bar_enabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            datasets.enable_progress_bars()


def raise_disk_full(err: Exception) -> None:
    """A full disk while ``datasets`` writes a corpus's cache is no unreadable file: raised as the
    disk-full error it is (one line naming it, from the command line)."""
    cause = err.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and (cause.errno in DISK_FULL_ERRNOS or
                                           any(os.strerror(e) in str(cause) for e in DISK_FULL_ERRNOS)):
            raise cause from None
        cause = cause.__cause__ or cause.__context__
