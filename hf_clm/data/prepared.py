"""A prepared dataset's parts that every way of preparing shares: what it holds in memory
(:class:`TrainingData`), how its tokenizer and blocks are described, and the folder's names."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase

from hf_clm.data.blocks import TokenCounts
from hf_clm.data.tokenizer import UnreadableTokenizer, read_tokenizer
from hf_clm.errors import HfClmError
from hf_clm.recipe.schema import DataArguments, ModelArguments

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
    mixture: list[dict[str, Any]] | None = None  # per source of a mixture: its share and token counts
    part: dict[str, Any] = field(default_factory=dict)  # one shard's: what it read (corpus_digest, bytes_read)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, IterableDataset)


def tokenizer_source(model: ModelArguments, data: DataArguments) -> str:
    """What the recipe's tokenizer is, in words: compared when a prepared dataset is reused."""
    if model.train_tokenizer:
        corpus = data.dataset_name or data.builtin_corpus or ", ".join(data.train_files or []) or \
            "the training text of the mixture's sources"
        return f"byte-level BPE, vocab {model.vocab_size}, trained on {corpus}"
    return model.tokenizer_name_or_path or model.model_name_or_path


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_prepared_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return read_tokenizer(path / TOKENIZER_DIRNAME)
    except UnreadableTokenizer as err:
        raise HfClmError(f"the tokenizer in {path / TOKENIZER_DIRNAME} cannot be read ({err.reason}); run "
                         f"'hf-clm prepare RECIPE' again") from None
