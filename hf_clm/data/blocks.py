"""Blocks: documents -> token ids (BOS first where the tokenizer adds one, EOS after each) -> one
stream -> fixed ``block_size`` rows.

run_clm.py's ``group_texts`` concatenates inside each ``datasets.map`` batch and throws away that
batch's remainder, so it loses up to ``block_size - 1`` tokens per 1,000 documents (and per
worker). Here the remainder of every batch is carried into the next, so a whole split loses at
most its final tail of fewer than ``block_size`` tokens.

Both stages are ``datasets.map`` calls on Arrow batches (ids go from the Rust tokenizer to NumPy to
Arrow, never one Python object per token), cached by fingerprints that hash the input split, the
tokenizer and the block size, so a second identical run reads Arrow files instead of tokenizing
again. Only ``input_ids`` is stored: the collator makes ``labels``, and full blocks need no mask.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from itertools import chain
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, Features, IterableDataset, List, NamedSplit, Value
from datasets.distributed import split_dataset_by_node
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase

from hf_clm.data.tokenizer import document_prefix
from hf_clm.errors import first_line
from hf_clm.recipe.schema import DataArguments
from hf_clm.run.artifacts import write_json
from hf_clm.run.files import TOKEN_COUNTS_FILENAME

logger = logging.getLogger(__name__)

INPUT_IDS = "input_ids"
TOKENIZED_FEATURES = Features({INPUT_IDS: List(Value("int32"))})
GROUP_FORMAT = 1  # bump when CarryOverBlocks changes, to invalidate cached blocks
TOKENIZE_FORMAT = 3  # bump when DocumentTokenizer's output changes, to invalidate cached maps
READ_BATCH_ROWS = 4096


def group_into_blocks(batch: Mapping[str, Sequence[Sequence[int]]], block_size: int
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Concatenate each column's sequences and cut the result into rows of ``block_size``.

    Returns ``(blocks, tail)``: ``blocks[col]`` has shape ``[n, block_size]``; ``tail[col]`` holds
    the last ``total % block_size`` tokens. Carry the tail into the next batch by passing it as
    that batch's first sequence, and nothing is lost at batch boundaries.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    blocks, tail = {}, {}
    for column, sequences in batch.items():
        # token ids stay integers: an empty document's [] would make numpy concatenate as float64
        parts = [np.asarray(s, dtype=np.int64) for s in sequences]
        stream = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        cut = len(stream) - len(stream) % block_size
        blocks[column] = stream[:cut].reshape(-1, block_size)
        tail[column] = stream[cut:]
    return blocks, tail


# Characters per piece of a long document, and per encode call.
PIECE_CHARS = 1 << 18
ENCODE_GROUP_CHARS = 1 << 21


def text_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of about ``size`` characters, each cut just before a space that
    starts a word: byte-level BPE pre-tokenizers (GPT-2's and its kind) begin a token there, so
    the pieces tokenize to the same ids as the whole. Text without such a space for a whole
    piece (no spaces at all) is cut where the piece ends."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while len(text) - start > size:
        end = cut = start + size
        while (cut := text.rfind(" ", start + size // 2, cut)) > 0 and text[cut + 1:cut + 2].isspace():
            pass
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def group_bounds(sizes: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive runs of items holding about ``limit`` characters together
    (at most ``limit`` plus one item)."""
    group = np.cumsum(sizes) // limit
    cuts = np.flatnonzero(np.diff(group)) + 1
    edges = [0, *cuts.tolist(), len(sizes)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


class DocumentTokenizer:
    """``datasets.map`` function: ``text`` -> ``input_ids`` of every non-empty document: its
    :func:`~hf_clm.data.tokenizer.document_prefix` (a Llama-style BOS, or nothing), its ids, then EOS.

    Given an Arrow batch (``with_format("arrow")``) it answers with an Arrow table built from one
    flat int32 array and offsets, so ids never pass through per-token Python objects on the way
    to disk; given a dict batch (streaming) it answers with lists.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.backend = tokenizer.backend_tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.prefix = document_prefix(tokenizer)

    def ids_and_offsets(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        texts = [text or "" for text in texts]
        # Long documents go in pieces, and pieces in groups of bounded size: the Rust tokenizer
        # keeps tens of bytes per token while encoding, so one 50 MB document encoded whole
        # would need gigabytes where the same text as short lines needs a fraction of that.
        if texts and max(map(len, texts)) > PIECE_CHARS:
            split = [text_pieces(text) for text in texts]
            pieces = list(chain.from_iterable(split))
            piece_doc = np.repeat(np.arange(len(texts)), [len(p) for p in split])
        else:  # the usual case, one piece per document, without a Python step per document
            pieces, piece_doc = texts, None
        counts, parts = [], []
        sizes = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        for start, stop in group_bounds(sizes, ENCODE_GROUP_CHARS):
            encodings = self.backend.encode_batch_fast(pieces[start:stop], add_special_tokens=False)
            id_lists = [encoding.ids for encoding in encodings]  # each .ids builds a new list: once
            del encodings
            group_counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
            counts.append(group_counts)
            parts.append(np.fromiter(chain.from_iterable(id_lists), dtype=np.int32, count=int(group_counts.sum())))
        raw = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
        counts = np.concatenate(counts) if counts else np.empty(0, dtype=np.int64)
        lengths = counts if piece_doc is None else np.bincount(piece_doc, weights=counts, minlength=len(texts)
                                                               ).astype(np.int64)
        return self.framed(raw, lengths, np.fromiter(map(bool, texts), dtype=bool, count=len(texts)))

    def framed(self, raw: np.ndarray, lengths: np.ndarray, non_empty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each non-empty document's ids (``lengths`` of them in turn in ``raw``) between its prefix
        and EOS, as one flat array and its row offsets; an empty document is an empty row."""
        k = len(self.prefix)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(np.where(non_empty, lengths + k + 1, 0), out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.int32)
        starts = offsets[:-1][non_empty]
        raw_starts = np.cumsum(lengths) - lengths
        ids[np.arange(len(raw)) + np.repeat(offsets[:-1] + k - raw_starts, lengths)] = raw
        for j, token in enumerate(self.prefix):
            ids[starts + j] = token
        ids[offsets[1:][non_empty] - 1] = self.eos_token_id
        return ids, offsets.astype(np.int32)

    def __call__(self, batch):
        if isinstance(batch, pa.Table):
            ids, offsets = self.ids_and_offsets(batch.column("text").to_pylist())
            return pa.table({INPUT_IDS: pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))})
        ids, offsets = self.ids_and_offsets(batch["text"])
        return {INPUT_IDS: [ids[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]}


def cached_map(dataset: Dataset, function, **kwargs) -> Dataset:
    """``dataset.map`` through datasets' cache; a damaged cache entry (a truncated or corrupted
    Arrow file, e.g. from a full disk) is rebuilt instead of failing every later run."""
    try:
        return dataset.map(function, **kwargs)
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, OSError) and (type(err) is not OSError or err.errno is not None):
            raise  # a network, missing-file or disk failure: pyarrow reports a torn file as a bare OSError
        logger.warning("Rebuilding a damaged datasets cache entry for %s (%s)", kwargs.get("desc", "map"),
                       first_line(err))
        return dataset.map(function, load_from_cache_file=False, **kwargs)


def tokenize_split(split: Dataset, tokenizer: PreTrainedTokenizerBase, data: DataArguments, name: str) -> Dataset:
    fingerprint = Hasher.hash((split._fingerprint, tokenizer.backend_tokenizer.to_str(),
                               tokenizer.eos_token_id, document_prefix(tokenizer), TOKENIZE_FORMAT))
    tokenized = cached_map(
        split.with_format("arrow"), DocumentTokenizer(tokenizer), batched=True, batch_size=data.tokenize_batch_size,
        num_proc=data.preprocessing_num_workers, remove_columns=split.column_names, features=TOKENIZED_FEATURES,
        new_fingerprint=fingerprint, desc=f"Tokenizing {name}")
    return tokenized.with_format(None)


def block_features(block_size: int) -> Features:
    return Features({INPUT_IDS: List(Value("int32"), length=block_size)})


def group_split(tokenized: Dataset, n_tokens: int, block_size: int, name: str) -> Dataset:
    if n_tokens < block_size:  # nothing to write: one short tail
        return Dataset.from_dict({INPUT_IDS: []}, features=block_features(block_size), split=NamedSplit(name))
    fingerprint = Hasher.hash((tokenized._fingerprint, block_size, GROUP_FORMAT))
    # One process, in order: the carried remainder makes each batch depend on the one before.
    blocks = cached_map(
        tokenized.with_format("arrow"), CarryOverBlocks(block_size), batched=True, batch_size=READ_BATCH_ROWS, remove_columns=[INPUT_IDS],
        features=block_features(block_size), new_fingerprint=fingerprint, desc=f"Grouping {name} into blocks")
    blocks = blocks.with_format(None)
    blocks._split = NamedSplit(name)
    return blocks


@dataclass
class TokenCounts:
    """How much of a split reached training: documents, tokens, and what fell off the end."""

    documents: int
    tokens: int
    blocks: int
    block_size: int

    @property
    def kept(self) -> int:
        return self.blocks * self.block_size

    @property
    def dropped(self) -> int:
        return self.tokens - self.kept

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "kept": self.kept, "dropped": self.dropped}

    @classmethod
    def from_dict(cls, values: dict[str, int]) -> TokenCounts:
        """The counts :meth:`as_dict` wrote (its derived ``kept`` and ``dropped`` left out)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})


def scored_text(source: str, count: TokenCounts, cap: int | None) -> str:
    """What a run evaluated on, in words, from the blocks it scored: their source, the documents they
    hold (and ``max_eval_samples``'s cap, where one was given), the blocks and the tokens scored (every
    token of a block but its first is a target)."""
    capped = "" if cap is None else (f", the first {cap:,} (max_eval_samples)" if count.documents >= cap else
                                     f", all there are (max_eval_samples {cap:,} is more)")
    return (f"{source}: {count.documents:,} documents{capped} -> {count.blocks:,} blocks of {count.block_size:,} "
            f"tokens, {count.blocks * (count.block_size - 1):,} tokens scored")


def first_documents(blocks: Dataset, count: TokenCounts, documents: int, eos_token_id: int
                    ) -> tuple[Dataset, TokenCounts]:
    """The blocks the split's first ``documents`` non-empty documents fill, and their counts: the
    blocks cut from those documents alone (the same prefix of the one stream, each document ended by
    EOS), as ``max_eval_samples`` gives when the corpus is tokenized."""
    if documents >= count.documents or len(blocks) == 0:
        return blocks, count
    stream = pc.list_flatten(blocks.with_format("arrow")[:][INPUT_IDS]).to_numpy()
    ends = np.flatnonzero(stream == eos_token_id)
    if len(ends) < documents:  # the later documents end in the dropped tail
        return blocks, count
    tokens = int(ends[documents - 1]) + 1
    kept = tokens // count.block_size
    return blocks.select(range(kept)), TokenCounts(documents, tokens, kept, count.block_size)


def count_tokens(tokenized: Dataset) -> int:
    lengths = pc.list_value_length(tokenized.with_format("arrow")[:][INPUT_IDS])
    return int(pc.sum(lengths).as_py() or 0)


def build_blocks(raw: DatasetDict, tokenizer: PreTrainedTokenizerBase, data: DataArguments
                 ) -> tuple[DatasetDict, dict[str, TokenCounts]]:
    """Tokenized, concatenated and blocked splits, and the token counts of each."""
    blocks, counts = DatasetDict(), {}
    for name, split in raw.items():
        tokenized = tokenize_split(split, tokenizer, data, name)
        n_tokens = count_tokens(tokenized)
        blocks[name] = group_split(tokenized, n_tokens, data.block_size, name)
        counts[name] = TokenCounts(len(split), n_tokens, len(blocks[name]), data.block_size)
        logger.info("%s: %d documents, %d tokens -> %d blocks of %d (%d tokens kept, %d dropped)",
                    name, counts[name].documents, counts[name].tokens, counts[name].blocks,
                    data.block_size, counts[name].kept, counts[name].dropped)
    return blocks, counts


def save_token_counts(counts: Mapping[str, TokenCounts], output_dir: str | Path) -> Path:
    return write_json({name: c.as_dict() for name, c in counts.items()}, Path(output_dir) / TOKEN_COUNTS_FILENAME)


def token_stream(split: Dataset, tokenizer: PreTrainedTokenizerBase, data: DataArguments) -> np.ndarray:
    """The split as one 1-D array of ids, EOS after each document, nothing dropped."""
    tokenized = tokenize_split(split, tokenizer, data, "evaluation")
    return pc.list_flatten(tokenized.with_format("arrow")[:][INPUT_IDS]).to_numpy()


class CarryOverBlocks:
    """``map`` function: token lists -> full blocks; each batch's remainder opens the next.

    Arrow batches (``with_format("arrow")``) come back as a fixed-size-list table cut from one
    flat array; dict batches (streaming) as lists of arrays.
    """

    def __init__(self, block_size: int):
        self.block_size = block_size
        self.tail = np.empty(0, dtype=np.int32)

    def __call__(self, batch):
        if isinstance(batch, pa.Table):
            ids = pc.list_flatten(batch.column(INPUT_IDS)).to_numpy(zero_copy_only=False)
            blocks, rest = group_into_blocks({INPUT_IDS: [self.tail, ids]}, self.block_size)
            self.tail = rest[INPUT_IDS]
            values = pa.array(blocks[INPUT_IDS].reshape(-1).astype(np.int32, copy=False))
            return pa.table({INPUT_IDS: pa.FixedSizeListArray.from_arrays(values, self.block_size)})
        blocks, rest = group_into_blocks({INPUT_IDS: [self.tail, *batch[INPUT_IDS]]}, self.block_size)
        self.tail = rest[INPUT_IDS]
        return {INPUT_IDS: list(blocks[INPUT_IDS])}


def stream_blocks(train: IterableDataset, tokenizer: PreTrainedTokenizerBase, data: DataArguments, seed: int,
                  rank: int = 0, world_size: int = 1) -> IterableDataset:
    """Training blocks made on the fly: this rank's part of the stream (``split_dataset_by_node``:
    whole shards when they divide evenly, else every world_size-th document), tokenized, cut into
    blocks and shuffled in a buffer of ``shuffle_buffer_size`` blocks."""
    if world_size > 1:
        train = split_dataset_by_node(train, rank=rank, world_size=world_size)
    tokenized = train.map(DocumentTokenizer(tokenizer), batched=True, batch_size=data.tokenize_batch_size,
                          remove_columns=["text"])
    blocks = tokenized.map(CarryOverBlocks(data.block_size), batched=True, batch_size=data.tokenize_batch_size)
    return blocks.shuffle(seed=seed, buffer_size=data.shuffle_buffer_size)
