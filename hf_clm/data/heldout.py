"""The held-out split: which documents of a corpus without a validation split become validation.

One rule, decided per document from its text alone: a non-empty document is held out when
``crc32(text) / 2**32 < validation_split_percentage / 100``. It needs no other document, so a part
of the corpus (one task of a sharded preparation) holds out exactly the documents the whole corpus
would, and the union of the parts' held-out documents is the one-machine validation split. Identical
texts have one hash and land on the same side. The share held out is the percentage up to a
binomial spread (see docs/preparing-data-on-a-cluster.md for measured figures).
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from hf_clm.errors import HfClmError

TEXT = "text"
HASH_SPACE = 1 << 32
BATCH_ROWS = 1 << 16


def held_out_mask(texts: list[str | None], percentage: int) -> np.ndarray:
    """Which of ``texts`` are held out: a non-empty text whose CRC-32 is below ``percentage``% of 2**32
    (an empty one never is: it adds no token)."""
    hashes = np.fromiter((zlib.crc32(text.encode()) if text else HASH_SPACE for text in texts), dtype=np.int64,
                         count=len(texts))
    return hashes * 100 < percentage * HASH_SPACE


def is_held_out(text: str, percentage: int) -> bool:
    return bool(held_out_mask([text], percentage)[0])


def select_held(texts: list[str | None], percentage: int, held: bool) -> np.ndarray:
    """``filter`` function: the rows that are (``held``) or are not held out."""
    mask = held_out_mask(texts, percentage)
    return mask if held else ~mask


def split_held_out(documents: Dataset, percentage: int, num_proc: int | None = None) -> tuple[Dataset, Dataset]:
    """(kept, held out): both in the documents' order; a document's side depends on its text alone."""
    return tuple(documents.filter(select_held, batched=True, batch_size=BATCH_ROWS, input_columns=[TEXT],
                                  fn_kwargs={"percentage": percentage, "held": held}, num_proc=num_proc,
                                  desc="Holding out validation documents" if held else "Keeping training documents")
                 for held in (False, True))


def non_empty_documents(documents: Dataset) -> int:
    return sum(len(batch) - pc.sum(pc.equal(pc.utf8_length(batch[TEXT]), 0)).as_py()
               for batch in documents.with_format("arrow").iter(BATCH_ROWS))


def too_few_documents(documents: int, percentage: int, sample_by: str | None = None) -> HfClmError:
    split_files = ("; for .txt files, sample_by: paragraph (or line) makes each file several documents"
                   if sample_by == "document" else "")
    return HfClmError(f"the corpus has {documents} document{'s' if documents != 1 else ''}, too few to hold out "
                      f"{percentage}% for validation (no document's hash falls in the held-out share); give "
                      f"validation_files or more documents{split_files}")


def hold_out_by_hash(train: Dataset, percentage: int, sample_by: str | None = None,
                     num_proc: int | None = None) -> tuple[Dataset, Dataset]:
    """(training, validation): the documents :func:`held_out_mask` holds out become validation, in
    corpus order, whatever the order of the files and on every machine. Memory stays flat in the
    corpus size (two ``filter`` passes over Arrow batches). An error when none is held out."""
    kept, held = split_held_out(train, percentage, num_proc)
    if len(held) == 0:
        raise too_few_documents(non_empty_documents(train), percentage, sample_by)
    return kept, held


def is_stdlib_validation_file(name: str, percentage: int) -> bool:
    """A stable, file-level split: the same files are held out on every machine and run."""
    return zlib.crc32(name.encode()) % 100 < percentage
