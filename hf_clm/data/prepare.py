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

import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetDict, IterableDataset, concatenate_datasets, load_from_disk
from transformers import PreTrainedTokenizerBase

from hf_clm.run.artifacts import read_json, write_json
from hf_clm.data.blocks import TokenCounts, build_blocks, first_documents, stream_blocks
from hf_clm.data.corpus import load_corpus, load_eval_sets, load_streaming_corpus, materialize_head
from hf_clm.errors import HfClmError, first_line
from hf_clm.data.sources import check_hub_sources
from hf_clm.run.locks import folder_lock
from hf_clm.recipe.schema import DataArguments, ModelArguments, Recipe
from hf_clm.run.files import PREPARED_FILENAME
from hf_clm.data.tokenizer import UnreadableTokenizer, load_pretrained_tokenizer, read_tokenizer, train_or_load_tokenizer

logger = logging.getLogger(__name__)

TOKENIZER_DIRNAME = "tokenizer"
# Beside the tokenizer folder of a sharded preparation, written when the folder is whole: what it is.
TOKENIZER_SOURCE = "tokenizer-source.json"
VALIDATION_DIRNAME = "validation"
SHARD_DESCRIPTION = re.compile(r"shard-(\d{5})-of-(\d{5})\.json")
# Documents from the head of a streamed corpus that a BPE tokenizer is trained on.
STREAMING_TOKENIZER_DOCUMENTS = 10_000


@dataclass
class TrainingData:
    tokenizer: PreTrainedTokenizerBase
    train: Dataset | IterableDataset
    validation: Dataset
    counts: dict[str, TokenCounts]  # no "train" entry when the training split is streamed
    eval_sets: dict[str, Dataset] = field(default_factory=dict)  # the recipe's named evaluation sets, blocked
    training_documents: int | None = None  # the whole training split's, when this holds one shard of it

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, IterableDataset)


def tokenizer_source(model: ModelArguments, data: DataArguments) -> str:
    """What the recipe's tokenizer is, in words: compared when a prepared dataset is reused."""
    if model.train_tokenizer:
        corpus = data.dataset_name or data.builtin_corpus or ", ".join(data.train_files or [])
        return f"byte-level BPE, vocab {model.vocab_size}, trained on {corpus}"
    return model.tokenizer_name_or_path or model.model_name_or_path


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


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


def save_prepared(prepared: TrainingData, recipe: Recipe, path: str | Path) -> Path:
    """Write blocks, tokenizer and a description of both; ``prepared.json`` last, so a folder
    without it is an interrupted preparation that ``train`` will not read."""
    path = Path(path)
    (path / PREPARED_FILENAME).unlink(missing_ok=True)
    for split in ("train", "validation"):  # blocks of an earlier preparation
        shutil.rmtree(path / split, ignore_errors=True)
    remove_shards(path)
    DatasetDict(train=prepared.train, validation=prepared.validation).save_to_disk(str(path))
    prepared.tokenizer.save_pretrained(path / TOKENIZER_DIRNAME)
    write_json(blocks_description(prepared.tokenizer, prepared.counts, recipe), path / PREPARED_FILENAME)
    return path


def blocks_description(tokenizer: PreTrainedTokenizerBase, counts: dict[str, TokenCounts], recipe: Recipe,
                       **extra: Any) -> dict[str, Any]:
    return {"block_size": recipe.data_args.block_size,
            "tokenizer": tokenizer_source(recipe.model_args, recipe.data_args),
            "tokenizer_digest": tokenizer_digest(tokenizer),
            "counts": {name: count.as_dict() for name, count in counts.items()}, **extra}


def read_description(path: Path) -> dict[str, Any]:
    """``prepared.json``, or the sum of every shard's description when the folder was prepared in shards."""
    if not (path / PREPARED_FILENAME).is_file():
        if shard_descriptions(path):
            return sharded_description(path)
        what = "does not exist" if not path.exists() else f"holds no {PREPARED_FILENAME} (an unfinished preparation?)"
        raise HfClmError(f"prepared_dataset {path} {what}; run 'hf-clm prepare RECIPE' first")
    return read_json(path / PREPARED_FILENAME, "run 'hf-clm prepare RECIPE' again")


def load_prepared_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return read_tokenizer(path / TOKENIZER_DIRNAME)
    except UnreadableTokenizer as err:
        raise HfClmError(f"the tokenizer in {path / TOKENIZER_DIRNAME} cannot be read ({err.reason}); run "
                         f"'hf-clm prepare RECIPE' again") from None


def load_prepared_blocks(path: Path, shards: int | None = None) -> DatasetDict:
    try:
        if shards is not None:
            return DatasetDict(train=concatenate_datasets([load_from_disk(str(Shard(i, shards).blocks_dir(path)))
                                                           for i in range(shards)]),
                               validation=load_from_disk(str(path / VALIDATION_DIRNAME)))
        blocks = load_from_disk(str(path))  # maps every arrow file: a missing or torn one fails here
    except (OSError, ValueError, pa.ArrowException) as err:
        missing = f" ({err.filename})" if isinstance(err, OSError) and err.filename else ""
        raise HfClmError(f"prepared_dataset {path} is damaged{missing}: {first_line(err)}; run "
                         f"'hf-clm prepare RECIPE' again") from None
    if set(blocks) != {"train", "validation"}:
        raise HfClmError(f"prepared_dataset {path} holds splits {', '.join(blocks)}, not train and validation; "
                         f"run 'hf-clm prepare RECIPE' again")
    return blocks


def check_prepared_matches(description: dict[str, Any], tokenizer: PreTrainedTokenizerBase, recipe: Recipe,
                           path: Path) -> None:
    block_size = recipe.data_args.block_size
    if description["block_size"] != block_size:
        raise HfClmError(f"prepared_dataset {path} has blocks of {description['block_size']} tokens but the "
                         f"recipe's block_size is {block_size}; prepare it again with this recipe")
    source = tokenizer_source(recipe.model_args, recipe.data_args)
    if recipe.model_args.train_tokenizer:
        same = description["tokenizer"] == source
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
    blocks = load_prepared_blocks(path, description.get("num_shards"))
    counts = {name: TokenCounts.from_dict(count) for name, count in description["counts"].items()}
    if recipe.data_args.max_eval_samples is not None:
        blocks["validation"], counts["validation"] = first_documents(
            blocks["validation"], counts["validation"], recipe.data_args.max_eval_samples, tokenizer.eos_token_id)
    logger.info("Read prepared blocks from %s: %s", path,
                ", ".join(f"{name} {len(split):,}" for name, split in blocks.items()))
    return TrainingData(tokenizer, blocks["train"], blocks["validation"], counts)


def training_data(recipe: Recipe) -> TrainingData:
    """The recipe's training data, from wherever the recipe says it comes."""
    if recipe.data_args.prepared_dataset:
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
        blocks, counts = build_blocks(DatasetDict(sets), data.tokenizer, data_args)
        data.eval_sets = dict(blocks)
        data.counts.update(counts)
    return data


def prepare(recipe: Recipe, shard: Shard | None = None, tokenizer_only: bool = False) -> Path:
    """``hf-clm prepare``: tokenize and group once, to the recipe's ``prepared_dataset`` folder
    (or one shard of it, or only its tokenizer)."""
    target = recipe.data_args.prepared_dataset
    if not target:
        raise HfClmError("the recipe sets no prepared_dataset folder to write; add prepared_dataset: PATH")
    if recipe.data_args.streaming:
        raise HfClmError("a streamed corpus is not prepared ahead; drop streaming: true to prepare it")
    check_hub_sources(recipe.model_args, recipe.data_args)
    if tokenizer_only:
        with folder_lock(target, "prepared_dataset", part="tokenizer"):
            raw = load_corpus(recipe.data_args)
            tokenizer = train_or_load_tokenizer(recipe.model_args, raw["train"])
            check_no_other_blocks(Path(target), tokenizer)
            save_shared_tokenizer(tokenizer, recipe, Path(target))
        print(f"tokenizer saved to {Path(target) / TOKENIZER_DIRNAME}")
        return Path(target)
    if shard is not None:
        with folder_lock(target, f"shard {shard.index} of prepared_dataset", part=shard.name):
            data = prepared_shard(recipe, shard, Path(target))
            path = save_shard(data, recipe, shard, Path(target))
    else:
        with folder_lock(target, "prepared_dataset"):
            data = in_memory_data(recipe)
            path = save_prepared(data, recipe, target)
    for name, count in data.counts.items():
        print(f"{name:<10} {count.documents:>9,} documents {count.tokens:>13,} tokens {count.blocks:>10,} blocks")
    print(f"saved to {path}" + (f" (shard {shard.index} of {shard.count})" if shard else ""))
    return path


# Sharded preparation. Shard I of N holds the blocks of the I-th of N consecutive runs of the
# training documents (after the held-out split, which every shard computes alike). Shard 0 also
# writes the validation blocks and the tokenizer; a BPE trained on the corpus is trained once,
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

    def description_path(self, root: Path) -> Path:
        return root / f"shard-{self.name}.json"

    def documents(self, total: int) -> range:
        return range(self.index * total // self.count, (self.index + 1) * total // self.count)

    def command(self, root: Path) -> str:
        return f"hf-clm prepare RECIPE --prepared_dataset {root} --shard {self.index} --num_shards {self.count}"


def shard_descriptions(path: Path) -> dict[Shard, Path]:
    found = {}
    for file in sorted(path.glob("shard-*-of-*.json")) if path.is_dir() else []:
        if match := SHARD_DESCRIPTION.fullmatch(file.name):
            found[Shard(int(match[1]), int(match[2]))] = file
    return found


def remove_shards(path: Path) -> None:
    """The shards of an earlier sharded preparation of ``path``, descriptions first."""
    for shard, file in shard_descriptions(path).items():
        file.unlink(missing_ok=True)
        shutil.rmtree(shard.blocks_dir(path), ignore_errors=True)
    for stale in path.glob("train-*-of-*"):
        shutil.rmtree(stale, ignore_errors=True)
    (path / TOKENIZER_SOURCE).unlink(missing_ok=True)


def sharded_description(path: Path) -> dict[str, Any]:
    """One description for a complete, consistent set of shards: their train counts summed."""
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
        for key in ("block_size", "tokenizer_digest", "training_documents"):
            if description.get(key) != first.get(key):
                raise HfClmError(f"prepared_dataset {path}: shard {i} has another {key.replace('_', ' ')} than "
                                 f"shard 0 ({description.get(key)} vs {first.get(key)}); run "
                                 f"'{Shard(i, n).command(path)}' again with shard 0's recipe")
    train = [TokenCounts.from_dict(d["counts"]["train"]) for d in descriptions]
    total = TokenCounts(sum(c.documents for c in train), sum(c.tokens for c in train), sum(c.blocks for c in train),
                        first["block_size"])
    return {**first, "num_shards": n, "counts": {"train": total.as_dict(), "validation": first["counts"]["validation"]}}


def shared_tokenizer(recipe: Recipe, root: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer a sharded preparation of ``root`` already saved for this recipe (None when
    there is none); an error when it was made for another tokenizer."""
    source_file = root / TOKENIZER_SOURCE
    if not source_file.is_file():
        return None
    saved = read_json(source_file, f"delete {root / TOKENIZER_DIRNAME} and prepare again")
    wanted = tokenizer_source(recipe.model_args, recipe.data_args)
    if saved["tokenizer"] != wanted:
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
    tokenizer whole or not at all."""
    temporary = root / f".{TOKENIZER_DIRNAME}.{os.getpid()}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    tokenizer.save_pretrained(temporary)
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
                         f"'{tokenizer_source(recipe.model_args, recipe.data_args)}'; prepare every shard with one "
                         f"recipe, or use a fresh folder")
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
    """This shard's training blocks (and the validation blocks, for shard 0)."""
    check_shard_fits(root, shard, recipe.data_args.block_size)
    raw = load_corpus(recipe.data_args)
    check_same_documents(root, shard, len(raw["train"]))
    tokenizer = shard_tokenizer(recipe, shard, root, raw["train"])
    documents = raw["train"].select(shard.documents(len(raw["train"])))
    if len(documents) == 0:
        raise HfClmError(f"the corpus has {len(raw['train'])} training documents, fewer than --num_shards "
                         f"{shard.count}; use fewer shards")
    splits = DatasetDict(train=documents, validation=raw["validation"]) if shard.index == 0 else \
        DatasetDict(train=documents)
    blocks, counts = build_blocks(splits, tokenizer, recipe.data_args)
    return TrainingData(tokenizer, blocks["train"], blocks.get("validation"), counts,
                        training_documents=len(raw["train"]))


def check_same_documents(root: Path, shard: Shard, documents: int) -> None:
    """The shards already in ``root`` split a training split of as many documents as this one's (a
    different corpus, max_train_samples or held-out share gives another count)."""
    for other, file in shard_descriptions(root).items():
        if other == shard:
            continue
        theirs = read_json(file, f"run '{other.command(root)}' again").get("training_documents")
        if theirs != documents:
            raise HfClmError(f"prepared_dataset {root} holds shard {other.index} of a training split of {theirs} "
                             f"documents, and this recipe's has {documents}; prepare every shard with one recipe "
                             f"and corpus, or use a fresh folder")


def save_shard(data: TrainingData, recipe: Recipe, shard: Shard, root: Path) -> Path:
    """Blocks first, the description last: a shard without its description is unfinished."""
    shard.description_path(root).unlink(missing_ok=True)
    if (root / PREPARED_FILENAME).exists() or (root / "dataset_dict.json").exists():
        logger.warning("Replacing the one-machine preparation in %s with shards", root)
    (root / PREPARED_FILENAME).unlink(missing_ok=True)  # the folder no longer holds one whole preparation
    (root / "dataset_dict.json").unlink(missing_ok=True)
    shutil.rmtree(root / "train", ignore_errors=True)
    shutil.rmtree(shard.blocks_dir(root), ignore_errors=True)
    data.train.save_to_disk(str(shard.blocks_dir(root)))
    if shard.index == 0:
        shutil.rmtree(root / VALIDATION_DIRNAME, ignore_errors=True)
        data.validation.save_to_disk(str(root / VALIDATION_DIRNAME))
    write_json(blocks_description(data.tokenizer, data.counts, recipe, shard=shard.index, num_shards=shard.count,
                                  training_documents=data.training_documents), shard.description_path(root))
    return root
