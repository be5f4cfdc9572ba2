"""A mixture's training data: each source read, tokenized and cut into blocks as a one-corpus
recipe's corpus is (``load_corpus`` + ``build_blocks``, or a prepared folder's blocks), then the
sources' training blocks interleaved by :mod:`hf_clm.data.interleave` for the run's budget, and
each source's held-out blocks an evaluation set of its name.

One tokenizer serves every source: the recipe's pretrained one, or a byte-level BPE trained on
the sources' training text together (each document once, whatever the weights). Training then
reads the interleaved blocks in order (Trainer's ``train_sampling_strategy: sequential``): the
order is already shuffled within each source by the seed.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from hf_clm.data.blocks import TokenCounts, build_blocks
from hf_clm.data.corpus import load_corpus
from hf_clm.data.interleave import Interleaving, exhaustion_length, interleaved_order
from hf_clm.data.prepared import TrainingData, load_prepared_tokenizer, tokenizer_digest
from hf_clm.data.tokenizer import load_pretrained_tokenizer, train_or_load_tokenizer
from hf_clm.errors import HfClmError
from hf_clm.recipe.mixture import MixtureSource, mixture_sources, normalisation_note
from hf_clm.recipe.schema import DataArguments, Recipe

logger = logging.getLogger(__name__)


@dataclass
class SourceBlocks:
    source: MixtureSource
    train: Dataset
    validation: Dataset
    counts: dict[str, TokenCounts]  # train and validation


def source_arguments(data: DataArguments, source: MixtureSource) -> DataArguments:
    """The recipe's data keys with this source as its one corpus."""
    return dataclasses.replace(
        data, mixture=None, dataset_name=source.dataset_name, dataset_config_name=source.dataset_config_name,
        train_files=list(source.train_files) if source.train_files else None, validation_files=None,
        builtin_corpus=None, prepared_dataset=None, eval_sets=None,
        text_column=source.text_column or data.text_column, sample_by=source.sample_by or data.sample_by)


def source_error(source: MixtureSource, err: HfClmError) -> HfClmError:
    return HfClmError(f"mixture source '{source.name}' ({source.corpus}): {err}")


def source_corpus(data: DataArguments, source: MixtureSource) -> DatasetDict:
    try:
        return load_corpus(source_arguments(data, source))
    except HfClmError as err:
        raise source_error(source, err) from None


def mixture_tokenizer(recipe: Recipe, sources: list[MixtureSource], corpora: dict[str, DatasetDict]
                      ) -> PreTrainedTokenizerBase:
    """The recipe's pretrained tokenizer, or a BPE trained on every text source's training split."""
    model = recipe.model_args
    if model.train_tokenizer:
        prepared = [s.name for s in sources if s.prepared_dataset]
        if prepared:
            raise HfClmError(f"train_tokenizer: true trains a BPE on the sources' text, and mixture source "
                             f"'{prepared[0]}' is a prepared folder of blocks; set tokenizer_name_or_path to its "
                             f"tokenizer folder instead")
        return train_or_load_tokenizer(model, concatenate_datasets([corpus["train"] for corpus in corpora.values()]))
    return load_pretrained_tokenizer(model.tokenizer_name_or_path or model.model_name_or_path)


def prepared_source(source: MixtureSource, tokenizer: PreTrainedTokenizerBase, block_size: int) -> SourceBlocks:
    """A folder of ``hf-clm prepare``: its blocks, once its tokenizer and block size are the mixture's."""
    from hf_clm.data.prepare import load_prepared_blocks, read_description

    path = Path(source.prepared_dataset)
    try:
        description = read_description(path)
        if description["block_size"] != block_size:
            raise HfClmError(f"its blocks are of {description['block_size']} tokens, the recipe's block_size is "
                             f"{block_size}; prepare it again with block_size {block_size}")
        if tokenizer_digest(load_prepared_tokenizer(path)) != tokenizer_digest(tokenizer):
            raise HfClmError(f"it was tokenized with '{description['tokenizer']}', not the recipe's tokenizer; "
                             f"prepare it again with the recipe's tokenizer")
        blocks = load_prepared_blocks(path, description, len(tokenizer))
    except HfClmError as err:
        raise source_error(source, err) from None
    counts = {name: TokenCounts.from_dict(description["counts"][name]) for name in ("train", "validation")}
    return SourceBlocks(source, blocks["train"], blocks["validation"], counts)


def all_source_blocks(recipe: Recipe, sources: list[MixtureSource]
                      ) -> tuple[PreTrainedTokenizerBase, list[SourceBlocks]]:
    data = recipe.data_args
    corpora = {s.name: source_corpus(data, s) for s in sources if not s.prepared_dataset}
    tokenizer = mixture_tokenizer(recipe, sources, corpora)
    found = []
    for source in sources:
        if source.prepared_dataset:
            found.append(prepared_source(source, tokenizer, data.block_size))
            continue
        blocks, counts = build_blocks(corpora[source.name], tokenizer, source_arguments(data, source))
        found.append(SourceBlocks(source, blocks["train"], blocks["validation"], counts))
    for part in found:
        for split in ("train", "validation"):
            if part.counts[split].blocks == 0:
                raise HfClmError(f"mixture source '{part.source.name}': its {split} split has "
                                 f"{part.counts[split].tokens} tokens, fewer than one block of {data.block_size}; "
                                 f"lower block_size or give it more text")
    return tokenizer, found


def summed(counts: list[TokenCounts]) -> TokenCounts:
    return TokenCounts(sum(c.documents for c in counts), sum(c.tokens for c in counts),
                       sum(c.blocks for c in counts), counts[0].block_size)


def budget_blocks(recipe: Recipe) -> int:
    """Blocks the run trains on: max_steps (max_tokens made steps) x the global batch."""
    return recipe.training_args.max_steps * recipe.global_batch_blocks()


def stopped_budget(recipe: Recipe, parts: list[SourceBlocks], budget: int) -> int:
    """``mixture_exhausted: stop``: the budget cut to the steps before the first source runs out
    (max_steps lowered to them, said in one line)."""
    blocks = [p.counts["train"].blocks for p in parts]
    weights = [p.source.weight for p in parts]
    available = exhaustion_length(blocks, weights, recipe.training_args.seed)
    if available >= budget:
        return budget
    per_step = recipe.global_batch_blocks()
    steps = available // per_step
    first = min((p for p in parts if p.source.weight > 0), key=lambda p: p.counts["train"].blocks / p.source.weight)
    if steps == 0:
        raise HfClmError(f"mixture source '{first.source.name}' runs out after {available:,} interleaved blocks, "
                         f"before the first step of {per_step:,} blocks; give it more text, lower its weight, or "
                         f"set mixture_exhausted: repeat")
    logger.warning("mixture: source '%s' (%s blocks, weight %.4g) runs out after %s of the budget's %s blocks: "
                   "training stops at step %s of %s (mixture_exhausted: stop)", first.source.name,
                   f"{first.counts['train'].blocks:,}", first.source.weight, f"{available:,}", f"{budget:,}",
                   f"{steps:,}", f"{recipe.training_args.max_steps:,}")
    recipe.training_args.max_steps = steps
    return steps * per_step


def warn_repeated_sources(parts: list[SourceBlocks], order: Interleaving, budget: int) -> None:
    for i, part in enumerate(parts):
        used, count = order.used(i), part.counts["train"]
        if used > count.blocks:
            logger.warning("mixture: source '%s' has %s blocks (%s tokens) but its share of the budget's %s blocks "
                           "is %s (weight %.4g): it repeats %.2f times (mixture_exhausted: repeat)",
                           part.source.name, f"{count.blocks:,}", f"{count.tokens:,}", f"{budget:,}", f"{used:,}",
                           part.source.weight, used / count.blocks)


def mixture_description(parts: list[SourceBlocks], order: Interleaving | None) -> list[dict[str, Any]]:
    """Per source: its corpus, share, token counts of both splits and, once interleaved, the blocks
    training reads from it and how many passes over it that is."""
    rows = []
    for i, part in enumerate(parts):
        row = {"name": part.source.name, "corpus": part.source.corpus, "weight": part.source.weight,
               "train": part.counts["train"].as_dict(), "validation": part.counts["validation"].as_dict()}
        if order is not None:
            used = order.used(i)
            row.update(trained_blocks=used, trained_tokens=used * part.counts["train"].block_size,
                       passes=round(used / part.counts["train"].blocks, 4))
        rows.append(row)
    return rows


def interleaved_blocks(parts: list[SourceBlocks], order: Interleaving) -> Dataset:
    offsets = np.cumsum([0] + [len(p.train) for p in parts[:-1]])
    return concatenate_datasets([p.train for p in parts]).select(offsets[order.sources] + order.rows)


def mixture_data(recipe: Recipe) -> TrainingData:
    """The mixture's blocks interleaved for the recipe's budget, and each source's held-out blocks
    as an evaluation set of its name."""
    sources = mixture_sources(recipe.data_args.mixture)
    if note := normalisation_note(sources):
        logger.warning(note)
    tokenizer, parts = (prepared_mixture(recipe, sources) if recipe.data_args.prepared_dataset
                        else all_source_blocks(recipe, sources))
    budget = budget_blocks(recipe)
    if recipe.data_args.mixture_exhausted == "stop":
        budget = stopped_budget(recipe, parts, budget)
    order = interleaved_order([p.counts["train"].blocks for p in parts], [s.weight for s in sources], budget,
                              recipe.training_args.seed)
    warn_repeated_sources(parts, order, budget)
    counts = {"train": summed([p.counts["train"] for p in parts]),
              "validation": summed([p.counts["validation"] for p in parts]),
              **{p.source.name: p.counts["validation"] for p in parts}}
    data = TrainingData(tokenizer, interleaved_blocks(parts, order),
                        concatenate_datasets([p.validation for p in parts]), counts,
                        eval_sets={p.source.name: p.validation for p in parts})
    data.mixture = mixture_description(parts, order)
    logger.info("mixture: %s", "; ".join(f"{row['name']} weight {row['weight']:.4g}, {row['train']['tokens']:,} "
                                         f"tokens, {row['trained_blocks']:,} blocks trained"
                                         for row in data.mixture))
    return data


def mixture_validation_text(mixture: list[dict[str, Any]]) -> str:
    """What a mixture's run validates on, in words."""
    return ("the held-out text of every mixture source together (" + ", ".join(row["name"] for row in mixture)
            + "; each also an evaluation set of its name)")


def save_prepared_mixture(recipe, target: Path) -> TrainingData:
    """``hf-clm prepare`` of a mixture: every source's blocks, one after another, in the folder's
    train and validation splits, and in ``prepared.json`` each source's rows and token counts.
    The weights are not part of it: a recipe may change them and train from the same folder."""
    from hf_clm.data.prepare import save_prepared

    sources = mixture_sources(recipe.data_args.mixture)
    tokenizer, parts = all_source_blocks(recipe, sources)
    counts = {"train": summed([p.counts["train"] for p in parts]),
              "validation": summed([p.counts["validation"] for p in parts])}
    data = TrainingData(tokenizer, concatenate_datasets([p.train for p in parts]),
                        concatenate_datasets([p.validation for p in parts]), counts)
    data.mixture = mixture_description(parts, None)
    save_prepared(data, recipe, target, mixture=data.mixture)
    return data


def prepared_mixture(recipe: Recipe, sources: list[MixtureSource]
                     ) -> tuple[PreTrainedTokenizerBase, list[SourceBlocks]]:
    """A mixture's prepared folder, split back into its sources; refused when it holds other sources
    (by name and corpus) or another tokenizer or block size than the recipe's."""
    from hf_clm.data.prepare import check_prepared_matches, load_prepared_blocks, read_description

    path = Path(recipe.data_args.prepared_dataset)
    description = read_description(path)
    prepared = description.get("mixture")
    wanted = [(s.name, s.corpus) for s in sources]
    if prepared is None or [(row["name"], row["corpus"]) for row in prepared] != wanted:
        held = ", ".join(f"{row['name']} ({row['corpus']})" for row in prepared) if prepared else "one corpus"
        raise HfClmError(f"prepared_dataset {path} holds {held}, not the recipe's mixture of "
                         f"{', '.join(f'{n} ({c})' for n, c in wanted)}; prepare it again with this recipe")
    tokenizer = load_prepared_tokenizer(path)
    reference = tokenizer if recipe.model_args.train_tokenizer else load_pretrained_tokenizer(
        recipe.model_args.tokenizer_name_or_path or recipe.model_args.model_name_or_path)
    check_prepared_matches(description, reference, recipe, path)
    blocks = load_prepared_blocks(path, description, len(tokenizer))
    parts, starts = [], {"train": 0, "validation": 0}
    for source, row in zip(sources, prepared):
        counts = {split: TokenCounts.from_dict(row[split]) for split in ("train", "validation")}
        splits = {}
        for split in ("train", "validation"):
            splits[split] = blocks[split].select(range(starts[split], starts[split] + counts[split].blocks))
            starts[split] += counts[split].blocks
        parts.append(SourceBlocks(source, splits["train"], splits["validation"], counts))
    return tokenizer, parts
