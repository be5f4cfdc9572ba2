"""Sharded preparation: the recipe's training documents prepared in N parts, side by side, into
one prepared_dataset folder (``train-0000I-of-0000N/`` + ``shard-0000I-of-0000N.json`` each), by
``hf-clm prepare --shard I --num_shards N`` or as task I of N of the pipeline
(:mod:`hf_clm.data.pipeline`); ``train`` reads the folder only when all N are there and agree."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from hf_clm.data.blocks import TokenCounts, build_blocks
from hf_clm.data.corpus import has_text, load_corpus
from hf_clm.data.heldout import too_few_documents
from hf_clm.data.parts import corpus_digest, load_corpus_part
from hf_clm.data.prepared import (
    SHARD_DESCRIPTION,
    TOKENIZER_DIRNAME,
    TOKENIZER_SOURCE,
    TrainingData,
    load_prepared_tokenizer,
    tokenizer_digest,
    tokenizer_source,
)
from hf_clm.data.provenance import blocks_description, documents_digest
from hf_clm.data.tokenizer import train_or_load_tokenizer
from hf_clm.errors import HfClmError
from hf_clm.recipe.schema import Recipe
from hf_clm.run.artifacts import read_json, with_umask_modes, write_json
from hf_clm.run.files import PREPARED_FILENAME
from hf_clm.run.locks import folder_lock

logger = logging.getLogger(__name__)


def decide_tokenizer(recipe: Recipe, root: Path) -> None:
    """The tokenizer every shard of ``root`` uses, decided once and saved beside them: a BPE is
    trained on the whole training split (``--tokenizer_only``, or the pipeline's first stage)."""
    with folder_lock(root, "prepared_dataset", part="tokenizer"):
        # only a BPE to be trained reads the corpus; a pretrained tokenizer is loaded as it is
        train = load_corpus(recipe.data_args)["train"] if recipe.model_args.train_tokenizer else None
        tokenizer = train_or_load_tokenizer(recipe.model_args, train)
        check_no_other_blocks(root, tokenizer)
        save_shared_tokenizer(tokenizer, recipe, root)


def prepare_shard(recipe: Recipe, shard: Shard) -> TrainingData:
    """One shard of the recipe's prepared_dataset, written: ``--shard I --num_shards N`` and task I
    of N of the pipeline (:mod:`hf_clm.data.pipeline`) alike."""
    root = Path(recipe.data_args.prepared_dataset)
    with folder_lock(root, f"shard {shard.index} of prepared_dataset", part=shard.name):
        data = prepared_shard(recipe, shard, root)
        save_shard(data, recipe, shard, root)
    return data


# Sharded preparation. Shard I of N reads part I of the corpus only (hf_clm.data.parts: runs of
# files or byte ranges) and writes the blocks of its training documents and of its validation
# documents (its part of the validation split, or the documents of its part that the per-document
# rule holds out). Shard 0 also saves the tokenizer; a BPE trained on the corpus is trained once,
# by shard 0 or by ``prepare --tokenizer_only`` beforehand, and the other shards refuse to start
# until it is there. Each shard writes its description last; ``train`` reads the folder only when
# all N are there and agree.


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def blocks_dir(self, root: Path) -> Path:
        return root / f"train-{self.name}"

    def validation_dir(self, root: Path) -> Path:
        return root / f"validation-{self.name}"

    def description_path(self, root: Path) -> Path:
        return root / f"shard-{self.name}.json"

    def command(self, root: Path) -> str:
        return f"hf-clm prepare RECIPE --prepared_dataset {root} --shard {self.index} --num_shards {self.count}"


def shard_descriptions(path: Path) -> dict[Shard, Path]:
    found = {}
    for file in sorted(path.glob("shard-*-of-*.json")) if path.is_dir() else []:
        if match := SHARD_DESCRIPTION.fullmatch(file.name):
            found[Shard(int(match[1]), int(match[2]))] = file
    return found


def remove_shards(path: Path) -> None:
    """The shards of an earlier sharded preparation of ``path``, descriptions first. Called by a
    whole preparation, which holds the folder's lock exclusively: no shard, tokenizer or pipeline
    writer is live meanwhile, so nothing removed here is another writer's work in progress."""
    for shard, file in shard_descriptions(path).items():
        file.unlink(missing_ok=True)
        shutil.rmtree(shard.blocks_dir(path), ignore_errors=True)
    for stale in [*path.glob("train-*-of-*"), *path.glob("validation-*-of-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    (path / TOKENIZER_SOURCE).unlink(missing_ok=True)


def sharded_description(path: Path) -> dict[str, Any]:
    """One description for a complete, consistent set of shards: their counts summed, and each
    shard's own description under ``shards`` (its blocks are checked against it when read)."""
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
        for key in ("block_size", "tokenizer_digest", "corpus_digest"):
            if description.get(key) != first.get(key):
                raise HfClmError(f"prepared_dataset {path}: shard {i} has another {key.replace('_', ' ')} than "
                                 f"shard 0 ({description.get(key)} vs {first.get(key)}); run "
                                 f"'{Shard(i, n).command(path)}' again with shard 0's recipe")
    totals = {split: summed_counts([TokenCounts.from_dict(d["counts"][split]) for d in descriptions])
              for split in ("train", "validation")}
    if totals["validation"].blocks == 0:
        raise no_validation_blocks(path, totals, first)
    return {**first, "num_shards": n, "shards": descriptions,
            "counts": {split: count.as_dict() for split, count in totals.items()}}


def summed_counts(counts: list[TokenCounts]) -> TokenCounts:
    return TokenCounts(sum(c.documents for c in counts), sum(c.tokens for c in counts), sum(c.blocks for c in counts),
                       counts[0].block_size)


def no_validation_blocks(path: Path, totals: dict[str, TokenCounts], first: dict[str, Any]) -> HfClmError:
    """The shards' validation parts hold no block: no document held out, or each part's too short."""
    if totals["validation"].documents == 0 and first.get("held_out_percentage"):
        return too_few_documents(totals["train"].documents, first["held_out_percentage"])
    return HfClmError(f"prepared_dataset {path}: its {first.get('num_shards') or 'shards'}' validation parts hold "
                      f"{totals['validation'].tokens} tokens, no block of {first['block_size']} (each part's tail "
                      f"is dropped); prepare in fewer shards, or give more validation text")


def shared_tokenizer(recipe: Recipe, root: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer a sharded preparation of ``root`` already saved (None when there is none); an
    error when the recipe trains a BPE and it was trained for another one (a pretrained tokenizer
    is compared by content, by the caller: the same one at another path is the same tokenizer)."""
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
    tokenizer whole or not at all (a failed save, a full disk, leaves no temporary folder)."""
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


def shard_tokenizer(recipe: Recipe, shard: Shard, root: Path) -> PreTrainedTokenizerBase:
    """Shard 0 decides the tokenizer (trains a BPE once, on the whole training split, or loads the
    pretrained one) and saves it; the others use the saved one when the recipe trains a BPE, and
    refuse to start before it exists."""
    saved = shared_tokenizer(recipe, root)
    if saved is not None and recipe.model_args.train_tokenizer:
        return saved
    if recipe.model_args.train_tokenizer and shard.index > 0:
        raise HfClmError(f"shard {shard.index} needs the tokenizer this recipe trains, and {root} holds none made "
                         f"for shards yet: run 'hf-clm prepare RECIPE --prepared_dataset {root} --tokenizer_only' "
                         f"once first (or wait for shard 0), then the shards")
    train = load_corpus(recipe.data_args)["train"] if recipe.model_args.train_tokenizer else None
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


def prepared_shard(recipe: Recipe, shard: Shard, root: Path) -> TrainingData:
    """This shard's training and validation blocks, from its part of the corpus alone."""
    data_args = recipe.data_args
    check_shard_fits(root, shard, data_args.block_size)
    digest = corpus_digest(data_args)
    check_same_corpus(root, shard, digest)
    part = load_corpus_part(data_args, shard.index, shard.count)
    if not has_text(part.splits["train"]):  # before anything (shard 0's tokenizer) is written
        raise HfClmError(f"part {shard.index} of {shard.count} of the corpus holds no training document "
                         f"({'; '.join(part.read)}); use fewer shards (tasks)")
    tokenizer = shard_tokenizer(recipe, shard, root)
    blocks, counts = build_blocks(part.splits, tokenizer, data_args)
    return TrainingData(tokenizer, blocks["train"], blocks["validation"], counts,
                        part={"corpus_digest": digest, "shard_digest": documents_digest(part.splits["train"]),
                              "bytes_read": part.bytes_read, "read": part.read,
                              "held_out_percentage": part.held_out_percentage})


def check_same_corpus(root: Path, shard: Shard, digest: str) -> None:
    """The shards already in ``root`` were cut from the same corpus, cut into documents and held
    out alike (:func:`~hf_clm.data.parts.corpus_digest`)."""
    for other, file in shard_descriptions(root).items():
        if other == shard:
            continue
        if read_json(file, f"run '{other.command(root)}' again").get("corpus_digest") != digest:
            raise HfClmError(f"prepared_dataset {root} holds shard {other.index} of another corpus (other files, "
                             f"sizes, sample_by, text_column or held-out share); prepare every shard with one recipe "
                             f"and corpus, or use a fresh folder")


def save_shard(data: TrainingData, recipe: Recipe, shard: Shard, root: Path) -> Path:
    """Blocks first, the description last: a shard without its description is unfinished. The
    caller holds the folder's lock shared and this shard's lock exclusively: no whole preparation
    is live (the one-machine files removed here are no live writer's), and what is removed on a
    failure (a full disk, a kill) is this shard's own folders alone."""
    shard.description_path(root).unlink(missing_ok=True)
    if (root / PREPARED_FILENAME).exists() or (root / "dataset_dict.json").exists():
        logger.warning("Replacing the one-machine preparation in %s with shards", root)
    (root / PREPARED_FILENAME).unlink(missing_ok=True)  # the folder no longer holds one whole preparation
    (root / "dataset_dict.json").unlink(missing_ok=True)
    shutil.rmtree(root / "train", ignore_errors=True)
    splits = {"train": data.train, "validation": data.validation}
    folders = {"train": shard.blocks_dir(root), "validation": shard.validation_dir(root)}
    try:
        for split, folder in folders.items():
            shutil.rmtree(folder, ignore_errors=True)
            splits[split].save_to_disk(str(folder))
            with_umask_modes(folder)
    except BaseException:  # no half-written blocks are left
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        raise
    write_json(blocks_description(data.tokenizer, data.counts, recipe, splits, shard=shard.index,
                                  num_shards=shard.count, **data.part), shard.description_path(root))
    return root
