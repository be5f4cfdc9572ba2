"""Prepare: the recipe's corpus as training data — tokenizer, training blocks, validation blocks.

Three ways, one result (:class:`TrainingData`):

* in memory: tokenized and grouped with ``datasets`` (cached by fingerprint, reused by later runs);
* from disk: a folder written ahead of a launch by ``hf-clm prepare RECIPE`` (``save_to_disk``),
  named by the recipe's ``prepared_dataset``, refused when its tokenizer or block size differ;
  or written in N shards (``--shard I --num_shards N``, one machine or process each), read only
  when every shard is there;
* streamed: ``streaming: true`` keeps training data an ``IterableDataset``, tokenized on the fly.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk
from transformers import PreTrainedTokenizerBase

from hf_clm.data.blocks import TokenCounts, build_blocks, first_documents, stream_blocks
from hf_clm.data.corpus import load_corpus, load_eval_sets, load_streaming_corpus, materialize_head
from hf_clm.data.parts import corpus_digest
from hf_clm.data.prepared import (
    STREAMING_TOKENIZER_DOCUMENTS,
    TOKENIZER_DIRNAME,
    TrainingData,
    load_prepared_tokenizer,
    tokenizer_digest,
    tokenizer_source,
)
from hf_clm.data.provenance import blocks_description, check_blocks_match, check_corpus_matches, check_token_ids
from hf_clm.data.shards import (
    Shard,
    decide_tokenizer,
    prepare_shard,
    remove_shards,
    shard_descriptions,
    sharded_description,
)
from hf_clm.data.sources import check_hub_sources
from hf_clm.data.tokenizer import load_pretrained_tokenizer, train_or_load_tokenizer
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.schema import DataArguments, Recipe
from hf_clm.run.artifacts import read_json, with_umask_modes, write_json
from hf_clm.run.files import PREPARED_FILENAME
from hf_clm.run.locks import folder_lock

logger = logging.getLogger(__name__)


def in_memory_data(recipe: Recipe) -> TrainingData:
    raw = load_corpus(recipe.data_args)  # its validation split is corpus.validation_split's
    tokenizer = train_or_load_tokenizer(recipe.model_args, raw["train"])
    blocks, counts = build_blocks(raw, tokenizer, recipe.data_args)
    return TrainingData(tokenizer, blocks["train"], blocks["validation"], counts)


def streamed_data(recipe: Recipe) -> TrainingData:
    args, data = recipe.training_args, recipe.data_args
    train, validation = load_streaming_corpus(data)
    tokenizer_corpus = materialize_head(data, "train", STREAMING_TOKENIZER_DOCUMENTS) \
        if recipe.model_args.train_tokenizer else validation
    tokenizer = train_or_load_tokenizer(recipe.model_args, tokenizer_corpus)
    blocks, counts = build_blocks(DatasetDict(validation=validation), tokenizer, data)
    train_blocks = stream_blocks(train, tokenizer, data, args.seed, args.process_index, args.world_size)
    return TrainingData(tokenizer, train_blocks, blocks["validation"], counts)


def save_prepared(prepared: TrainingData, recipe: Recipe, path: str | Path, **extra: Any) -> Path:
    """Write blocks, tokenizer and a description of both; ``prepared.json`` last, so a folder
    without it is an interrupted preparation that ``train`` will not read. The caller holds the
    folder's lock exclusively: no shard is being written into it meanwhile."""
    path = Path(path)
    (path / PREPARED_FILENAME).unlink(missing_ok=True)
    for split in ("train", "validation"):  # blocks of an earlier preparation
        shutil.rmtree(path / split, ignore_errors=True)
    remove_shards(path)
    splits = {"train": prepared.train, "validation": prepared.validation}
    DatasetDict(splits).save_to_disk(str(path))
    prepared.tokenizer.save_pretrained(path / TOKENIZER_DIRNAME)
    with_umask_modes(path)
    write_json(blocks_description(prepared.tokenizer, prepared.counts, recipe, splits, **extra),
               path / PREPARED_FILENAME)
    return path


def read_description(path: Path) -> dict[str, Any]:
    """``prepared.json``, or the sum of every shard's description when the folder was prepared in shards."""
    if not (path / PREPARED_FILENAME).is_file():
        if shard_descriptions(path):
            return sharded_description(path)
        what = "does not exist" if not path.exists() else f"holds no {PREPARED_FILENAME} (an unfinished preparation?)"
        raise HfClmError(f"prepared_dataset {path} {what}; run 'hf-clm prepare RECIPE' first")
    return read_json(path / PREPARED_FILENAME, "run 'hf-clm prepare RECIPE' again")


def read_blocks(folder: Path, path: Path) -> Dataset | DatasetDict:
    """``load_from_disk``, which maps every arrow file: a missing or torn one fails here, in one line."""
    try:
        return load_from_disk(str(folder))
    except (OSError, ValueError, pa.ArrowException) as err:
        missing = f" ({err.filename})" if isinstance(err, OSError) and err.filename else ""
        raise HfClmError(f"prepared_dataset {path} is damaged{missing}: {first_line(err)}; run "
                         f"'hf-clm prepare RECIPE' again") from None


def checked_blocks(folder: Path, path: Path, description: dict[str, Any], split: str, vocabulary: int) -> Dataset:
    """The blocks in ``folder``, once they are those ``description`` names (count, fingerprint) and
    every token id is one of the tokenizer's."""
    blocks = read_blocks(folder, path)
    check_blocks_match(blocks, folder, description, split)
    check_token_ids(blocks, vocabulary, f"prepared_dataset {folder}")
    return blocks


def load_prepared_blocks(path: Path, description: dict[str, Any], vocabulary: int) -> DatasetDict:
    """The folder's blocks, each split of each shard checked against its description (count,
    fingerprint) and its token ids against the tokenizer's ``vocabulary``."""
    if "shards" in description:
        n = description["num_shards"]
        shards = [(Shard(i, n), shard_description) for i, shard_description in enumerate(description["shards"])]
        return DatasetDict(
            train=concatenate_datasets([checked_blocks(shard.blocks_dir(path), path, d, "train", vocabulary)
                                        for shard, d in shards]),
            validation=concatenate_datasets([checked_blocks(shard.validation_dir(path), path, d, "validation",
                                                            vocabulary) for shard, d in shards]))
    blocks = read_blocks(path, path)
    if not isinstance(blocks, DatasetDict) or set(blocks) != {"train", "validation"}:
        held = ", ".join(blocks) if isinstance(blocks, DatasetDict) else "one dataset"
        raise HfClmError(f"prepared_dataset {path} holds splits {held}, not train and validation; "
                         f"run 'hf-clm prepare RECIPE' again")
    for split, dataset in blocks.items():
        check_blocks_match(dataset, path / split, description, split)
        check_token_ids(dataset, vocabulary, f"prepared_dataset {path / split}")
    return blocks


def check_prepared_matches(description: dict[str, Any], tokenizer: PreTrainedTokenizerBase, recipe: Recipe,
                           path: Path) -> None:
    block_size = recipe.data_args.block_size
    if description["block_size"] != block_size:
        raise HfClmError(f"prepared_dataset {path} has blocks of {description['block_size']} tokens but the "
                         f"recipe's block_size is {block_size}; prepare it again with this recipe")
    check_corpus_matches(description, recipe.data_args, path)
    source = tokenizer_source(recipe.model_args, recipe.data_args)
    if recipe.model_args.train_tokenizer:  # the saved BPE is the product: its corpus is checked above
        same = description["tokenizer"].split(", trained on")[0] == source.split(", trained on")[0]
    else:
        same = description["tokenizer_digest"] == tokenizer_digest(tokenizer)
    if not same:
        raise HfClmError(f"prepared_dataset {path} was tokenized with '{description['tokenizer']}' but the "
                         f"recipe's tokenizer is '{source}'; prepare it again with this recipe")


def prepared_data(recipe: Recipe) -> TrainingData:
    path = Path(recipe.data_args.prepared_dataset)
    description = read_description(path)
    tokenizer = load_prepared_tokenizer(path)
    # A trained BPE is compared by its recipe (the saved one is the product); a pretrained one by content.
    reference = tokenizer if recipe.model_args.train_tokenizer else load_pretrained_tokenizer(
        recipe.model_args.tokenizer_name_or_path or recipe.model_args.model_name_or_path)
    check_prepared_matches(description, reference, recipe, path)
    if tokenizer_digest(tokenizer) != description["tokenizer_digest"]:
        raise HfClmError(f"the tokenizer in {path / TOKENIZER_DIRNAME} is not the one its blocks were made with "
                         f"(replaced after they were written?); run 'hf-clm prepare RECIPE' again")
    blocks = load_prepared_blocks(path, description, len(tokenizer))
    counts = {name: TokenCounts.from_dict(count) for name, count in description["counts"].items()}
    if recipe.data_args.max_eval_samples is not None:
        blocks["validation"], counts["validation"] = first_documents(
            blocks["validation"], counts["validation"], recipe.data_args.max_eval_samples, tokenizer.eos_token_id)
    logger.info("Read prepared blocks from %s: %s", path,
                ", ".join(f"{name} {len(split):,}" for name, split in blocks.items()))
    return TrainingData(tokenizer, blocks["train"], blocks["validation"], counts)


def training_data(recipe: Recipe) -> TrainingData:
    """The recipe's training data, from wherever the recipe says it comes."""
    if recipe.data_args.mixture is not None:
        from hf_clm.data.mixture import mixture_data  # it reads prepared sources with this module's functions

        data = mixture_data(recipe)
    elif recipe.data_args.prepared_dataset:
        data = prepared_data(recipe)
    elif recipe.data_args.streaming:
        data = streamed_data(recipe)
    else:
        data = in_memory_data(recipe)
    return with_eval_sets(data, recipe.data_args)


def with_eval_sets(data: TrainingData, data_args: DataArguments) -> TrainingData:
    """The recipe's named evaluation sets cut into blocks like the validation split."""
    sets = load_eval_sets(data_args)
    if sets:
        if clash := set(sets) & set(data.eval_sets):
            raise HfClmError(f"eval_sets.{sorted(clash)[0]} has the name of a mixture source (evaluated on its "
                             f"held-out text already); rename the set or give the source another name")
        blocks, counts = build_blocks(DatasetDict(sets), data.tokenizer, data_args)
        data.eval_sets.update(blocks)
        data.counts.update(counts)
    return data


def check_preparable(recipe: Recipe) -> Path:
    """The folder ``hf-clm prepare`` writes, once the recipe can be prepared ahead."""
    target = recipe.data_args.prepared_dataset
    if not target:
        raise HfClmError("the recipe sets no prepared_dataset folder to write; add prepared_dataset: PATH")
    if recipe.data_args.streaming:
        raise HfClmError("a streamed corpus is not prepared ahead; drop streaming: true to prepare it")
    check_hub_sources(recipe.model_args, recipe.data_args)
    return Path(target)


def prepare(recipe: Recipe, shard: Shard | None = None, tokenizer_only: bool = False) -> Path:
    """``hf-clm prepare``: tokenize and group once, to the recipe's ``prepared_dataset`` folder
    (or one shard of it, or only its tokenizer). ``recipe``: a Recipe or a DataRecipe, whose
    ``model_args`` and ``data_args`` are read."""
    target = check_preparable(recipe)
    if tokenizer_only:
        decide_tokenizer(recipe, target)
        print(f"tokenizer saved to {target / TOKENIZER_DIRNAME}")
        return target
    if recipe.data_args.mixture is not None:
        from hf_clm.data.mixture import save_prepared_mixture

        if shard is not None:
            raise HfClmError("a mixture is prepared whole, by one process: drop --shard and --num_shards")
        with folder_lock(target, "prepared_dataset"):
            data = save_prepared_mixture(recipe, target)
        path = target
    elif shard is not None:
        data = prepare_shard(recipe, shard)
        path = target
    else:
        with folder_lock(target, "prepared_dataset"):
            data = in_memory_data(recipe)
            path = save_prepared(data, recipe, target, corpus_digest=corpus_digest(recipe.data_args))
    print_counts(data.counts)
    print(f"saved to {path}" + (f" (shard {shard.index} of {shard.count})" if shard else ""))
    return path


def print_counts(counts: dict[str, TokenCounts]) -> None:
    for name, count in counts.items():
        print(f"{name:<10} {count.documents:>9,} documents {count.tokens:>13,} tokens {count.blocks:>10,} blocks")
