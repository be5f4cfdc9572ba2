"""Tokenizer: a pretrained fast tokenizer, or a byte-level BPE trained on the training split.

Whatever the source, the tokenizer leaves here with an EOS token and a *different* pad token.
``DataCollatorForLanguageModeling`` sets every label equal to ``pad_token_id`` to -100, so with
pad = EOS (GPT-2's usual work-around) the model is never taught where a document ends
(transformers issue #23530).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets
from datasets import Dataset
from datasets.fingerprint import Hasher
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_clm.errors import HfClmError
from hf_clm.hub import TOKENIZER_ALTERNATIVE, offline_hint, require_hub
from hf_clm.recipe import ModelArguments

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TRAINING_BATCH_SIZE = 1000
TRAINED_TOKENIZER_FORMAT = 1  # bump when train_bpe_tokenizer changes, to invalidate cached tokenizers


def text_batches(split: Dataset, batch_size: int = TRAINING_BATCH_SIZE):
    """The split's texts, a batch of documents at a time (never the corpus as one string)."""
    for batch in split.select_columns(["text"]).iter(batch_size=batch_size):
        yield [text or "" for text in batch["text"]]  # a null text is an empty document


def train_bpe_tokenizer(train: Dataset, vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE learned from the training split only."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(text_batches(train), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[EOS_TOKEN, PAD_TOKEN], length=len(train),
                            show_progress=True)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS_TOKEN,
                                   eos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def trained_tokenizer_cache(train: Dataset, vocab_size: int) -> Path:
    key = Hasher.hash((train._fingerprint, vocab_size, TRAINED_TOKENIZER_FORMAT))
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_clm_tokenizers" / key


def cached_bpe_tokenizer(train: Dataset, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train once per (training split, vocab size); later runs load it like datasets' map cache."""
    cache = trained_tokenizer_cache(train, vocab_size)
    if (cache / "tokenizer.json").is_file():
        logger.info("Loading the BPE tokenizer trained earlier on this corpus from %s", cache)
        return AutoTokenizer.from_pretrained(cache)
    logger.info("Training a byte-level BPE tokenizer (vocab %d) on %d training documents", vocab_size, len(train))
    tokenizer = train_bpe_tokenizer(train, vocab_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent))
    tokenizer.save_pretrained(staging)
    try:
        os.replace(staging, cache)
    except OSError:  # another process cached the same tokenizer first
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


def load_pretrained_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    require_hub("tokenizer", name_or_path, TOKENIZER_ALTERNATIVE)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise HfClmError(f"cannot load a tokenizer from '{name_or_path}': {str(err).splitlines()[0]}"
                         f"{offline_hint(TOKENIZER_ALTERNATIVE)}") from None
    if not tokenizer.is_fast:
        raise HfClmError(f"the tokenizer of '{name_or_path}' has no fast (Rust) version; hf_clm needs one")
    if tokenizer.eos_token is None:
        raise HfClmError(f"the tokenizer of '{name_or_path}' has no EOS token to mark document ends")
    return tokenizer


def ensure_distinct_pad_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Give the tokenizer a pad token other than EOS; returns how many tokens were added (0 or 1)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return 0
    if PAD_TOKEN in tokenizer.get_vocab():
        tokenizer.pad_token = PAD_TOKEN
        return 0
    added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    logger.info("Added pad token %s (id %d) so that EOS labels stay supervised", PAD_TOKEN, tokenizer.pad_token_id)
    return added


def train_or_load_tokenizer(model: ModelArguments, train: Dataset) -> tuple[PreTrainedTokenizerBase, int]:
    """The run's tokenizer and the number of tokens this function added to it (a pad token at most)."""
    if model.train_tokenizer:
        tokenizer = cached_bpe_tokenizer(train, model.vocab_size)
        if len(tokenizer) < model.vocab_size:
            logger.warning("The BPE learned %s tokens, fewer than vocab_size %s: no more pairs occur twice in the "
                           "training text. The model's vocabulary is %s (vocab_size is an upper bound)",
                           f"{len(tokenizer):,}", f"{model.vocab_size:,}", f"{len(tokenizer):,}")
    else:
        tokenizer = load_pretrained_tokenizer(model.tokenizer_name_or_path or model.model_name_or_path)
    return tokenizer, ensure_distinct_pad_token(tokenizer)
