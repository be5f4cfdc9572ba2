"""One part of a corpus: what task (shard) I of N reads, and nothing more.

* Local files, at least N of them: contiguous runs of the sorted file list, part I the files
  ``[I*F//N, (I+1)*F//N)``, read by the ``datasets`` builder of their format.
* Local text files (``sample_by: line`` or ``paragraph``), fewer than N: byte ranges of the files
  taken as one stream of S bytes; part I owns the documents that start in bytes ``[I*S//N, (I+1)*S//N)``,
  each end moved forward to the next document boundary (the end of a line, of a blank-line run's
  first pair), so a document is read by exactly one part. The range is read through a text reader
  that splits documents as ``datasets``' text builder does, into the datasets cache under a
  fingerprint of the range and the file's size and modification time.
* ``sample_by: document`` (a file is one document), json/csv/parquet files fewer than N, and the
  built-in corpus: by files as above (parts past the file count read none).
* A Hub or local ``datasets`` corpus (``dataset_name``): loaded whole, then ``Dataset.shard(N, I,
  contiguous=True)`` of each split: the tokenizing is divided, the reading is not.

Without a validation split, each part holds out its own documents by the per-document rule of
:mod:`hf_clm.data.heldout`; the union over the parts is the one-machine validation split.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetGenerationError
from datasets.fingerprint import Hasher

from hf_clm.data.corpus import TEXT, load_raw, select_text, stdlib_documents, stdlib_files
from hf_clm.data.files import (
    TEXT_BUILDERS,
    builder_for,
    check_utf8,
    expand_files,
    local_data_files,
    local_reading_bars_off,
    raise_disk_full,
)
from hf_clm.data.heldout import is_stdlib_validation_file, split_held_out
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.schema import DataArguments

PARTS_FORMAT = 1  # bump when the documents a byte range gives change, to invalidate cached parts
CHUNK = 1 << 20
SCAN_BYTES = 4096  # read first when looking for a document boundary
NEWLINE_RUN = re.compile(rb"(?:\r\n|\r|\n)+")
NEWLINE = re.compile(rb"\r\n|\r|\n")
TEXT_FEATURES = datasets.Features({TEXT: datasets.Value("string")})
# Bytes of the corpus's files read by this process, per part fingerprint (the generator runs here).
BYTES_READ: dict[str, int] = {}


@dataclass
class CorpusPart:
    """Part ``index`` of ``count``: its documents (train, validation), the bytes of the corpus's files
    read for it, and what it read, in words."""

    splits: DatasetDict
    bytes_read: int
    read: list[str]
    held_out_percentage: int | None  # set when validation is the part's held-out documents


class ByteRange(io.RawIOBase):
    """Bytes ``[start, end)`` of a file, counting what is read."""

    def __init__(self, path: str, start: int, end: int, counter: str):
        self.file = open(path, "rb")  # noqa: SIM115 (closed with this stream)
        self.file.seek(start)
        self.left, self.counter = end - start, counter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.file.readinto(memoryview(buffer)[:min(len(buffer), self.left)]) if self.left > 0 else 0
        self.left -= n
        BYTES_READ[self.counter] = BYTES_READ.get(self.counter, 0) + n
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def range_documents(path: str, start: int, end: int, sample_by: str, counter: str):
    """The documents of bytes ``[start, end)``, split as ``datasets``' text builder splits a file
    (universal newlines; ``line``: each line without its newline, blank lines as empty documents;
    ``paragraph``: the text between blank lines, empty pieces dropped)."""
    encoding = "utf-8-sig" if start == 0 else "utf-8"  # a byte-order mark opens a file, not a range
    with io.TextIOWrapper(io.BufferedReader(ByteRange(path, start, end, counter)), encoding=encoding) as text:
        carry = ""
        while chunk := text.read(CHUNK):
            chunk = carry + chunk + text.readline()
            if sample_by == "line":
                yield from (line.rstrip("\n") for line in io.StringIO(chunk).readlines())
                continue
            pieces = chunk.split("\n\n")
            yield from (piece for piece in pieces[:-1] if piece)
            carry = pieces[-1]
        if carry:
            yield carry


def part_documents(pieces: list[tuple[str, int, int]], sample_by: str, counter: str):
    for path, start, end in pieces:
        for document in range_documents(path, start, end, sample_by, counter):
            yield {TEXT: document}


def read_bytes(path: str, start: int, length: int, counter: str) -> bytes:
    with open(path, "rb") as stream:
        stream.seek(start)
        data = stream.read(length)
    BYTES_READ[counter] = BYTES_READ.get(counter, 0) + len(data)
    return data


def run_start(path: str, x: int, counter: str) -> int:
    """Where the run of newline bytes that ends at ``x`` starts (``x`` when byte ``x - 1`` is none)."""
    while x > 0:
        low = max(0, x - 256)
        kept = len(read_bytes(path, low, x - low, counter).rstrip(b"\r\n"))
        x = low + kept
        if kept:
            break
    return x


def document_boundary(path: str, x: int, size: int, sample_by: str, counter: str) -> int:
    """The first document start at or after byte ``x``: after a line's newline (``line``), or after
    the second newline of a run from its start (``paragraph``: ``str.split("\\n\\n")`` restarts
    there), with ``\\r\\n`` and ``\\r`` one newline each as universal newlines read them."""
    base = run_start(path, x, counter)
    buffer, position = b"", 0
    while True:
        match = NEWLINE_RUN.search(buffer, position)
        at_end = base + len(buffer) >= size
        if (match is None or match.end() == len(buffer)) and not at_end:
            # the run may go on: read on, 4 KiB first, doubling
            buffer += read_bytes(path, base + len(buffer), max(SCAN_BYTES, len(buffer)), counter)
            continue
        if match is None:
            return size
        ends = [base + match.start() + unit.end() for unit in NEWLINE.finditer(match.group())]
        for cut in (ends if sample_by == "line" else ends[1::2]):
            if cut >= x:
                return cut
        position = match.end()


def byte_range_pieces(files: list[str], index: int, count: int, sample_by: str, counter: str
                      ) -> list[tuple[str, int, int]]:
    """Part ``index``'s (file, start, end) ranges of the files taken as one byte stream."""
    sizes = [os.path.getsize(f) for f in files]
    total, offset, pieces = sum(sizes), 0, []
    low, high = index * total // count, (index + 1) * total // count
    for path, size in zip(files, sizes):
        a, b = max(low - offset, 0), min(high - offset, size)
        if a < b:
            start = 0 if a == 0 else document_boundary(path, a, size, sample_by, counter)
            end = size if b == size else document_boundary(path, b, size, sample_by, counter)
            if start < end:
                pieces.append((path, start, end))
        offset += size
    return pieces


def file_run(files: list[str], index: int, count: int) -> list[str]:
    return files[index * len(files) // count:(index + 1) * len(files) // count]


def empty_split() -> Dataset:
    return Dataset.from_dict({TEXT: []}, features=TEXT_FEATURES)


def text_kwargs(builder: str, sample_by: str) -> dict:
    kwargs = {"encoding": "utf-8-sig"} if builder in TEXT_BUILDERS else {}
    if builder == "text":
        kwargs.update(sample_by=sample_by, keep_linebreaks=sample_by != "line")
    return kwargs


def read_files(builder: str, files: list[str], data: DataArguments, split: str) -> Dataset:
    if not files:
        return empty_split()
    if builder in TEXT_BUILDERS:
        for path in files:
            check_utf8(path)
    try:
        with local_reading_bars_off():
            raw = datasets.load_dataset(builder, data_files={split: files}, split=split,
                                        **text_kwargs(builder, data.sample_by))
    except DatasetGenerationError as err:
        raise_disk_full(err)
        raise HfClmError(f"cannot read the {builder} files: {first_line(err.__cause__ or err)}") from None
    return select_text(raw, data.text_column, split)


def read_byte_ranges(pieces: list[tuple[str, int, int]], data: DataArguments, counter: str) -> Dataset:
    if not pieces:
        return empty_split()
    stats = [(path, start, end, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path, start, end in pieces]
    try:
        with local_reading_bars_off():
            return Dataset.from_generator(part_documents, features=TEXT_FEATURES,
                                          gen_kwargs={"pieces": pieces, "sample_by": data.sample_by, "counter": counter},
                                          fingerprint=Hasher.hash((PARTS_FORMAT, stats, data.sample_by)))
    except DatasetGenerationError as err:
        raise_disk_full(err)
        cause = err.__cause__ or err
        where = ", ".join(f"{Path(p).name} bytes {s}-{e}" for p, s, e in pieces)
        raise HfClmError(f"cannot read {where}: {first_line(cause)}; check the file (e.g. iconv -f utf-8 -t utf-8 "
                         f"FILE >/dev/null names a bad byte)") from None


def local_split_part(files: list[str], builder: str, data: DataArguments, split: str, index: int, count: int,
                     counter: str) -> tuple[Dataset, str]:
    """Part ``index`` of one split's local files, and what was read, in words."""
    if len(files) >= count or builder != "text" or data.sample_by == "document":
        run = file_run(files, index, count)
        BYTES_READ[counter] = BYTES_READ.get(counter, 0) + sum(os.path.getsize(f) for f in run)
        return read_files(builder, run, data, split), f"{split}: files {', '.join(Path(f).name for f in run) or 'none'}"
    pieces = byte_range_pieces(files, index, count, data.sample_by, counter)
    where = "; ".join(f"{Path(p).name} bytes [{s:,}, {e:,})" for p, s, e in pieces) or "no bytes"
    return read_byte_ranges(pieces, data, counter), f"{split}: {where}"


def local_part(data: DataArguments, index: int, count: int, counter: str) -> tuple[dict[str, Dataset], list[str]]:
    data_files, builders = local_data_files(data)
    splits, read = {}, []
    for split, files in data_files.items():
        if all(Path(f).stat().st_size == 0 for f in files):
            raise HfClmError(f"the {split} split of the corpus is empty: {', '.join(files)} hold no text")
        splits[split], what = local_split_part(files, builders[split], data, split, index, count, counter)
        read.append(what)
    return splits, read


def stdlib_part(data: DataArguments, index: int, count: int, counter: str) -> tuple[dict[str, Dataset], list[str]]:
    root, files = stdlib_files()
    run = file_run(files, index, count)
    BYTES_READ[counter] = BYTES_READ.get(counter, 0) + sum((root / f).stat().st_size for f in run)
    held = [f for f in run if is_stdlib_validation_file(f, data.validation_split_percentage)]
    splits = {}
    for split, names in (("train", [f for f in run if f not in set(held)]), ("validation", held)):
        splits[split] = Dataset.from_generator(stdlib_documents, gen_kwargs={"root": str(root), "files": names},
                                               features=TEXT_FEATURES, split=datasets.NamedSplit(split)) \
            if names else empty_split()
    first, last = index * len(files) // count, (index + 1) * len(files) // count - 1
    return splits, [f"{data.builtin_corpus}: files {first} to {last} of {len(files)}"]


def dataset_part(data: DataArguments, index: int, count: int, counter: str) -> tuple[dict[str, Dataset], list[str]]:
    raw = load_raw(data)
    if "train" not in raw:
        raise HfClmError(f"the corpus has no 'train' split; it has: {', '.join(raw)}")
    splits = {}
    for split in ("train", "validation"):
        if split in raw:
            whole = select_text(raw[split], data.text_column, split)
            BYTES_READ[counter] = BYTES_READ.get(counter, 0) + whole.data.nbytes
            splits[split] = whole.shard(num_shards=count, index=index, contiguous=True)
    return splits, [f"{data.dataset_name}: every split whole, then rows {index} of {count} (contiguous)"]


def part_counter(data: DataArguments, index: int, count: int) -> str:
    return Hasher.hash((data.dataset_name, data.builtin_corpus, data.train_files, data.validation_files, index, count))


def load_corpus_part(data: DataArguments, index: int, count: int) -> CorpusPart:
    """Part ``index`` of ``count`` of the recipe's corpus as train and validation documents, reading
    only that part where the source allows (see the module's description)."""
    for key in ("max_train_samples", "max_eval_samples"):
        if getattr(data, key) is not None:
            raise HfClmError(f"{key} takes the first documents of the whole corpus, which one part of {count} "
                             f"does not read; drop {key} to prepare in parts (or prepare in one piece)")
    counter = part_counter(data, index, count)
    BYTES_READ[counter] = 0
    if data.builtin_corpus:
        splits, read = stdlib_part(data, index, count, counter)
    elif data.train_files:
        splits, read = local_part(data, index, count, counter)
    else:
        splits, read = dataset_part(data, index, count, counter)
    held_out = None if "validation" in splits else data.validation_split_percentage
    if held_out is not None:
        splits["train"], splits["validation"] = split_held_out(splits["train"], held_out, data.preprocessing_num_workers)
    return CorpusPart(DatasetDict(train=splits["train"], validation=splits["validation"]), BYTES_READ[counter], read,
                      held_out)


def parts_without_documents(data: DataArguments, count: int) -> list[int]:
    """The parts of local training files that would read no byte (a file of one document, or ranges
    with no document start), found before any task runs: boundary searches only."""
    if not data.train_files:
        return []
    files = expand_files(data.train_files, "train_files")
    if len(files) >= count:
        return []
    if builder_for(files, "train_files") != "text" or data.sample_by == "document":
        return list(range(len(files), count))
    return [i for i in range(count) if not byte_range_pieces(files, i, count, data.sample_by, "plan")]


def corpus_digest(data: DataArguments) -> str:
    """What every part of one sharded preparation must agree on: the corpus's sources (files by name
    and size) and how they are cut into documents and split."""
    files = [(Path(f).name, os.path.getsize(f)) for key in ("train_files", "validation_files")
             for f in (expand_files(getattr(data, key), key) if getattr(data, key) else [])]
    return Hasher.hash((files, data.dataset_name, data.dataset_config_name, data.builtin_corpus, data.text_column,
                        data.sample_by, None if data.validation_files else data.validation_split_percentage))
