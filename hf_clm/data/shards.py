"""Sharded preparation: ``hf-clm prepare RECIPE --shard I --num_shards N``.

Shard I of N holds the blocks of the I-th of N consecutive runs of the training documents (after
the held-out split, which every shard computes alike). Shard 0 also writes the validation blocks
and the tokenizer; a BPE trained on the corpus is trained once, by shard 0 or by ``prepare
--tokenizer_only`` beforehand, and the other shards refuse to start until it is there. Each shard
writes its description last, with the digest of the whole training split and of its own
documents; ``train`` reads the folder only when all N are there, agree on the corpus, and each
shard's blocks are those its description names.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from hf_clm.data.blocks import TokenCounts, build_blocks
from hf_clm.data.corpus import load_corpus
from hf_clm.data.provenance import (
    TOKENIZER_DIRNAME,
    TOKENIZER_SOURCE,
    VALIDATION_DIRNAME,
    blocks_description,
    documents_digest,
    load_prepared_tokenizer,
    tokenizer_digest,
    tokenizer_source,
)
from hf_clm.data.tokenizer import train_or_load_tokenizer
from hf_clm.errors import HfClmError
from hf_clm.recipe.schema import Recipe
from hf_clm.run.artifacts import read_json, with_umask_modes, write_json
from hf_clm.run.files import PREPARED_FILENAME

logger = logging.getLogger(__name__)

SHARD_DESCRIPTION = re.compile(r"shard-(\d{5})-of-(\d{5})\.json")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def blocks_dir(self, root: Path) -> Path:
        return root / f"train-{self.name}"

    def description_path(self, root: Path) -> Path:
        return root / f"shard-{self.name}.json"

    def documents(self, total: int) -> range:
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)

    def command(self, root: Path) -> str:
        return f"hf-clm prepare RECIPE --prepared_dataset {root} --shard {self.index} --num_shards {self.count}"


@dataclass
class PreparedShard:
    tokenizer: PreTrainedTokenizerBase
    blocks: DatasetDict
    counts: dict[str, TokenCounts]
    training_documents: int
    corpus_digest: str
    shard_digest: str


def shard_descriptions(path: Path) -> dict[Shard, Path]:
    found = {}
    for file in sorted(path.glob("shard-*-of-*.json")) if path.is_dir() else []:
        if match := SHARD_DESCRIPTION.fullmatch(file.name):
            found[Shard(int(match[1]), int(match[2]))] = file
    return found


def remove_shards(path: Path) -> None:
    """The shards of an earlier sharded preparation of ``path``, descriptions first (a whole
    preparation holds the folder's lock exclusively: no shard is being written meanwhile)."""
    for shard, file in shard_descriptions(path).items():
        file.unlink(missing_ok=True)
        shutil.rmtree(shard.blocks_dir(path), ignore_errors=True)
    for stale in path.glob("train-*-of-*"):
        shutil.rmtree(stale, ignore_errors=True)
    (path / TOKENIZER_SOURCE).unlink(missing_ok=True)


def sharded_description(path: Path) -> dict[str, Any]:
    """One description for a complete, consistent set of shards: their train counts summed, and
    each shard's own description under ``shards``."""
    found = shard_descriptions(path)
    counts = {shard.count for shard in found}
    if len(counts) > 1:
        raise HfClmError(f"prepared_dataset {path} mixes shards of {' and '.join(map(str, sorted(counts)))} parts; "
                         f"prepare every shard with one --num_shards, into a fresh folder")
    (n,) = counts
    missing = [i for i in range(n) if Shard(i, n) not in found]
    if missing:
        listed = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        each = "" if len(missing) == 1 else f" (and likewise for shard {', '.join(map(str, missing[1:8]))})"
        raise HfClmError(f"prepared_dataset {path} holds {n - len(missing)} of its {n} shards; missing shard "
                         f"{listed}: run '{Shard(missing[0], n).command(path)}'{each} (a shard still being "
                         f"written has no shard-*.json yet)")
    descriptions = [read_json(found[Shard(i, n)], f"run '{Shard(i, n).command(path)}' again") for i in range(n)]
    first = descriptions[0]
    for i, description in enumerate(descriptions[1:], start=1):
        for key in ("block_size", "tokenizer_digest", "training_documents", "corpus_digest"):
            if description.get(key) != first.get(key):
                what = "corpus (another digest of its documents)" if key == "corpus_digest" else \
                    f"{key.replace('_', ' ')} ({description.get(key)} vs {first.get(key)})"
                raise HfClmError(f"prepared_dataset {path}: shard {i} has another {what} than shard 0; run "
                                 f"'{Shard(i, n).command(path)}' again with shard 0's recipe")
    train = [TokenCounts.from_dict(d["counts"]["train"]) for d in descriptions]
    total = TokenCounts(sum(c.documents for c in train), sum(c.tokens for c in train), sum(c.blocks for c in train),
                        first["block_size"])
    return {**first, "num_shards": n, "shards": descriptions,
            "counts": {"train": total.as_dict(), "validation": first["counts"]["validation"]}}


def shared_tokenizer(recipe: Recipe, root: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer a sharded preparation of ``root`` already saved (None when there is none); an
    error when the recipe trains a BPE and it was trained for another one (a pretrained tokenizer
    is compared by content, by the caller)."""
    source_file = root / TOKENIZER_SOURCE
    if not source_file.is_file():
        return None
    saved = read_json(source_file, f"delete {root / TOKENIZER_DIRNAME} and prepare again")
    wanted = tokenizer_source(recipe.model_args, recipe.data_args)
    if recipe.model_args.train_tokenizer and saved["tokenizer"] != wanted:
        raise HfClmError(f"prepared_dataset {root} holds shards made with '{saved['tokenizer']}' but the recipe's "
                         f"tokenizer is '{wanted}'; prepare every shard with one recipe, or use a fresh folder")
    return load_prepared_tokenizer(root)


def check_no_other_blocks(root: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """``--tokenizer_only`` leaves alone a folder whose blocks were made with another tokenizer."""
    descriptions = [root / PREPARED_FILENAME] if (root / PREPARED_FILENAME).is_file() else \
        list(shard_descriptions(root).values())
    for file in descriptions:
        if read_json(file, "delete it and prepare again").get("tokenizer_digest") != tokenizer_digest(tokenizer):
            raise HfClmError(f"prepared_dataset {root} holds blocks made with another tokenizer ({file.name}); "
                             f"--tokenizer_only would leave them unreadable: use a fresh folder")


def save_shared_tokenizer(tokenizer: PreTrainedTokenizerBase, recipe: Recipe, root: Path) -> None:
    """Save into a temporary folder, rename it into place, then describe it: a reader sees the
    tokenizer whole or not at all (a failed save leaves no temporary folder)."""
    temporary = root / f".{TOKENIZER_DIRNAME}.{os.getpid()}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        tokenizer.save_pretrained(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    with_umask_modes(temporary)
    (root / TOKENIZER_SOURCE).unlink(missing_ok=True)
    shutil.rmtree(root / TOKENIZER_DIRNAME, ignore_errors=True)
    temporary.rename(root / TOKENIZER_DIRNAME)
    write_json({"tokenizer": tokenizer_source(recipe.model_args, recipe.data_args),
                "tokenizer_digest": tokenizer_digest(tokenizer)}, root / TOKENIZER_SOURCE)


def shard_tokenizer(recipe: Recipe, shard: Shard, root: Path, train: Dataset) -> PreTrainedTokenizerBase:
    """Shard 0 decides the tokenizer (trains a BPE once, or loads the pretrained one) and saves it;
    the others use the saved one when the recipe trains a BPE, and refuse to start before it exists."""
    saved = shared_tokenizer(recipe, root)
    if saved is not None and recipe.model_args.train_tokenizer:
        return saved
    if recipe.model_args.train_tokenizer and shard.index > 0:
        raise HfClmError(f"shard {shard.index} needs the tokenizer this recipe trains, and {root} holds none made "
                         f"for shards yet: run 'hf-clm prepare RECIPE --prepared_dataset {root} --tokenizer_only' "
                         f"once first (or wait for shard 0), then the shards")
    tokenizer = train_or_load_tokenizer(recipe.model_args, train)
    if saved is not None and tokenizer_digest(saved) != tokenizer_digest(tokenizer):
        raise HfClmError(f"prepared_dataset {root} holds a tokenizer other than the recipe's "
                         f"'{tokenizer_source(recipe.model_args, recipe.data_args)}' (compared by content); prepare "
                         f"every shard with one recipe, or use a fresh folder")
    if shard.index == 0 and saved is None:
        save_shared_tokenizer(tokenizer, recipe, root)
    return tokenizer


def check_shard_fits(root: Path, shard: Shard, block_size: int) -> None:
    """The other shards already in ``root`` split the documents the same way and cut the same blocks."""
    for other, file in shard_descriptions(root).items():
        if other == shard:
            continue
        if other.count != shard.count:
            raise HfClmError(f"prepared_dataset {root} holds shard {other.index} of {other.count} parts; prepare "
                             f"every shard with --num_shards {other.count}, or use a fresh folder")
        description = read_json(file, f"run '{other.command(root)}' again")
        if description["block_size"] != block_size:
            raise HfClmError(f"prepared_dataset {root} holds shard {other.index} with blocks of "
                             f"{description['block_size']} tokens, not {block_size}; prepare every shard with one "
                             f"recipe, or use a fresh folder")


def prepared_shard(recipe: Recipe, shard: Shard, root: Path) -> PreparedShard:
    """This shard's training blocks (and the validation blocks, for shard 0)."""
    check_shard_fits(root, shard, recipe.data_args.block_size)
    raw = load_corpus(recipe.data_args)
    total = len(raw["train"])
    if len(shard.documents(total)) == 0:  # before anything (the tokenizer) is written
        raise HfClmError(f"the corpus has {total} training documents, fewer than --num_shards "
                         f"{shard.count}; use fewer shards")
    corpus_digest = documents_digest(raw["train"])
    check_same_documents(root, shard, total, corpus_digest)
    tokenizer = shard_tokenizer(recipe, shard, root, raw["train"])
    documents = raw["train"].select(shard.documents(total))
    splits = DatasetDict(train=documents, validation=raw["validation"]) if shard.index == 0 else \
        DatasetDict(train=documents)
    blocks, counts = build_blocks(splits, tokenizer, recipe.data_args)
    return PreparedShard(tokenizer, blocks, counts, total, corpus_digest, documents_digest(documents))


def check_same_documents(root: Path, shard: Shard, documents: int, corpus_digest: str) -> None:
    """The shards already in ``root`` split the same training split as this one: as many documents,
    the same texts (a different corpus, max_train_samples or held-out share gives another split)."""
    for other, file in shard_descriptions(root).items():
        if other == shard:
            continue
        description = read_json(file, f"run '{other.command(root)}' again")
        theirs = description.get("training_documents")
        if theirs != documents:
            raise HfClmError(f"prepared_dataset {root} holds shard {other.index} of a training split of {theirs} "
                             f"documents, and this recipe's has {documents}; prepare every shard with one recipe "
                             f"and corpus, or use a fresh folder")
        if description.get("corpus_digest") != corpus_digest:
            raise HfClmError(f"prepared_dataset {root} holds shard {other.index} of another corpus (the same "
                             f"{documents} documents in number, other texts); prepare every shard from one corpus, "
                             f"or use a fresh folder")


def save_shard(data: PreparedShard, recipe: Recipe, shard: Shard, root: Path) -> Path:
    """Blocks first, the description last: a shard without its description is unfinished. The
    caller holds the folder's lock shared: no whole preparation is writing meanwhile."""
    shard.description_path(root).unlink(missing_ok=True)
    if (root / PREPARED_FILENAME).exists() or (root / "dataset_dict.json").exists():
        logger.warning("Replacing the one-machine preparation in %s with shards", root)
    (root / PREPARED_FILENAME).unlink(missing_ok=True)  # the folder no longer holds one whole preparation
    (root / "dataset_dict.json").unlink(missing_ok=True)
    shutil.rmtree(root / "train", ignore_errors=True)
    written = [shard.blocks_dir(root)] + ([root / VALIDATION_DIRNAME] if shard.index == 0 else [])
    try:
        for folder, split in zip(written, ("train", "validation")):
            shutil.rmtree(folder, ignore_errors=True)
            data.blocks[split].save_to_disk(str(folder))
            with_umask_modes(folder)
    except BaseException:  # a full disk, a kill: no half-written blocks are left
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    write_json(blocks_description(data.tokenizer, data.counts, recipe, dict(data.blocks), shard=shard.index,
                                  num_shards=shard.count, training_documents=data.training_documents,
                                  corpus_digest=data.corpus_digest, shard_digest=data.shard_digest),
               shard.description_path(root))
    return root
