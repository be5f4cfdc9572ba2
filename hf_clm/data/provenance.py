"""Provenance of a prepared folder: what its blocks were made from, and checks on reading them.

A prepared folder's description (``prepared.json``, or each shard's ``shard-I-of-N.json``) records

* the corpus it was made from: the recipe's corpus keys (``corpus``), the corpus's digest
  (``corpus_digest``, :func:`hf_clm.data.parts.corpus_digest`: its files by name and size, how they
  are cut into documents and held out), and for a shard a SHA-256 of its own training documents'
  texts (``shard_digest``);
* the tokenizer: in words and by content (a digest of its ``tokenizer.json``);
* per split (per shard): the block count and the fingerprint ``datasets`` gave the saved blocks.

On reading, ``train`` refuses a recipe naming another corpus, shards of different corpora, blocks
that are not those their description names (another count, another fingerprint: a folder copied
over another), and token ids outside the tokenizer's vocabulary (flipped bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from hf_clm.data.blocks import INPUT_IDS, TokenCounts
from hf_clm.data.corpus import TEXT
from hf_clm.data.prepared import tokenizer_digest, tokenizer_source
from hf_clm.errors import HfClmError
from hf_clm.recipe.schema import SOURCE_KEYS, DataArguments, Recipe

# The recipe keys that say which documents a folder's blocks come from. A mixture's sources are
# compared by name and corpus where a prepared mixture is read (its weights may change between
# preparing and training): not here.
CORPUS_KEYS = (*(key for key in SOURCE_KEYS if key != "mixture"), "dataset_config_name", "validation_files",
               "max_train_samples")
DIGEST_BATCH_ROWS = 1 << 14
DATASET_STATE = "state.json"  # datasets' save_to_disk: the fingerprint and the arrow files of a split


def corpus_source(data: DataArguments) -> dict[str, Any]:
    """The recipe's corpus keys that are set, as the description records them."""
    return {key: getattr(data, key) for key in CORPUS_KEYS if getattr(data, key, None) not in (None, [], "")}


def names_corpus(data: DataArguments) -> bool:
    return any(getattr(data, key, None) for key in CORPUS_KEYS if key in SOURCE_KEYS)


def documents_digest(documents: Dataset) -> str:
    """SHA-256 of the documents' texts, in order (each with its length): equal for the same documents."""
    digest = hashlib.sha256()
    for batch in documents.with_format("arrow").iter(DIGEST_BATCH_ROWS):
        for text in batch[TEXT].to_pylist():
            data = (text or "").encode()
            digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:32]


def blocks_description(tokenizer: PreTrainedTokenizerBase, counts: dict[str, TokenCounts], recipe: Recipe,
                       blocks: dict[str, Dataset], **extra: Any) -> dict[str, Any]:
    return {"block_size": recipe.data_args.block_size,
            "tokenizer": tokenizer_source(recipe.model_args, recipe.data_args),
            "tokenizer_digest": tokenizer_digest(tokenizer),
            "corpus": corpus_source(recipe.data_args),
            "counts": {name: count.as_dict() for name, count in counts.items()},
            "fingerprints": {name: split._fingerprint for name, split in blocks.items() if split is not None},
            **extra}


def check_corpus_matches(description: dict[str, Any], data: DataArguments, path: Path) -> None:
    """A recipe that names a corpus beside its prepared_dataset names the one the folder was made from."""
    made_from = description.get("corpus")
    if made_from is None or not names_corpus(data):
        return
    named = corpus_source(data)
    if named != made_from:
        raise HfClmError(f"prepared_dataset {path} was made from {describe_corpus(made_from)}, but the recipe names "
                         f"{describe_corpus(named)}; training reads the folder's blocks: drop the corpus keys (or "
                         f"set them to the folder's), or prepare the folder again from this corpus")


def describe_corpus(source: dict[str, Any]) -> str:
    return ", ".join(f"{key} {', '.join(map(str, value)) if isinstance(value, list) else value}"
                     for key, value in source.items()) or "no corpus"


def saved_fingerprint(folder: Path) -> str | None:
    """The fingerprint ``save_to_disk`` recorded in ``folder``'s state.json (``load_from_disk`` makes a new one)."""
    try:
        return json.loads((folder / DATASET_STATE).read_text(encoding="utf-8")).get("_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def check_blocks_match(blocks: Dataset, folder: Path, description: dict[str, Any], split: str) -> None:
    """The blocks read from ``folder`` are those the description names: its block count and the
    fingerprint they were saved with."""
    expected = description["counts"][split]["blocks"]
    fingerprint = description.get("fingerprints", {}).get(split)
    if len(blocks) != expected or fingerprint is not None and saved_fingerprint(folder) != fingerprint:
        what = f"{len(blocks):,} blocks where its description says {expected:,}" if len(blocks) != expected \
            else "blocks other than those its description names (another fingerprint)"
        raise HfClmError(f"prepared_dataset {folder} holds {what}: it was replaced or copied from another "
                         f"preparation; run 'hf-clm prepare RECIPE' for it again")


def check_token_ids(blocks: Dataset, vocabulary: int, where: str) -> None:
    """Every token id of ``blocks`` is one of the tokenizer's (flipped bytes in an Arrow file make ids
    the embedding cannot look up)."""
    ids = pc.list_flatten(blocks.data.column(INPUT_IDS))
    if len(ids) == 0:
        return
    low, high = pc.min_max(ids).values()
    if low.as_py() < 0 or high.as_py() >= vocabulary:
        bad = high.as_py() if high.as_py() >= vocabulary else low.as_py()
        raise HfClmError(f"{where} holds token id {bad}, outside the tokenizer's {vocabulary:,} ids: its Arrow "
                         f"files are damaged; run 'hf-clm prepare RECIPE' for it again")
