"""Tokenizer: a pretrained fast tokenizer, or a byte-level BPE trained on the training split.

A pretrained tokenizer leaves here exactly as it was loaded: no token is added, so a fine-tuned
model keeps its base vocabulary and embeddings (and a LoRA adapter holds the LoRA matrices only).
It may have no pad token, or pad = EOS (GPT-2, many Llama fine-tunes): the collator then masks
labels by the attention mask, so EOS stays a target (see ``collator.causal_lm_collator``). A BPE
trained here has its own ``<|pad|>``.

:func:`encode_document` is the one rule for how a document becomes ids (a Llama-style tokenizer's
BOS first), used by training blocks, ``generate``, ``explain`` and ``perplexity`` alike.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import transformers
from datasets import Dataset
from datasets.fingerprint import Hasher
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hf_clm.data.sources import TOKENIZER_ALTERNATIVE, offline_hint, require_hub
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.schema import ModelArguments
from hf_clm.run.artifacts import with_umask_modes
from hf_clm.run.files import TOKENIZER_FILE

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


class UnreadableTokenizer(Exception):
    """``AutoTokenizer`` could not load a tokenizer: why, in one line, and its ``tokenizer.json`` when
    that file is there but damaged (rather than missing or unreadable)."""

    def __init__(self, source: str | Path, err: Exception):
        self.reason = first_line(err)
        file = Path(str(source), TOKENIZER_FILE)
        self.damaged = file if file.is_file() and not isinstance(err, OSError) else None
        super().__init__(self.reason)


def named_tokenizer_class(source: str | Path, local_only: bool = False) -> type | None:
    """The tokenizer class ``tokenizer_config.json`` names, as AutoTokenizer would pick it, when
    transformers has it (None otherwise, and for a source without that file). Loading through it
    imports no torch: AutoTokenizer itself imports the model configurations, and they import torch."""
    from transformers.utils import cached_file

    try:
        file = cached_file(str(source), "tokenizer_config.json", _raise_exceptions_for_missing_entries=False,
                           _raise_exceptions_for_connection_errors=False, local_files_only=local_only)
        name = json.loads(Path(file).read_text(encoding="utf-8")).get("tokenizer_class") if file else None
    except (OSError, ValueError, AttributeError):
        return None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase) else None


def read_tokenizer(source: str | Path, local_only: bool = False) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(source)`` (through the class its tokenizer_config.json names,
    when transformers has it), or a folder of a byte-level BPE's bare ``vocab.json`` + ``merges.txt``;
    any failure as :class:`UnreadableTokenizer`. ``local_only``: a local folder or the Hugging Face
    cache, never the network."""
    folder = Path(str(source))
    if not (folder / "config.json").is_file() and (tokenizer := bpe_files_tokenizer(folder)) is not None:
        return tokenizer  # what AutoTokenizer cannot place (no config): read here without it
    try:
        if (cls := named_tokenizer_class(source, local_only)) is not None:
            return cls.from_pretrained(source, local_files_only=local_only)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except Exception as err:  # tokenizers raises a bare Exception for a damaged tokenizer.json
        if (tokenizer := bpe_files_tokenizer(Path(str(source)))) is not None:
            return tokenizer
        raise UnreadableTokenizer(source, err) from None


def bpe_files_tokenizer(folder: Path) -> PreTrainedTokenizerFast | None:
    """A byte-level BPE from a folder that holds only its ``vocab.json`` and ``merges.txt`` (as
    GPT-2's original release does), which AutoTokenizer cannot place without a tokenizer config;
    EOS is ``<|endoftext|>`` when the vocabulary has it."""
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()) or (folder / "tokenizer_config.json").is_file():
        return None
    bpe = ByteLevelBPETokenizer(str(vocab), str(merges))
    eos = EOS_TOKEN if bpe.token_to_id(EOS_TOKEN) is not None else None
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos, unk_token=eos)


def trained_tokenizer_cache(train: Dataset, vocab_size: int) -> Path:
    key = Hasher.hash((train._fingerprint, vocab_size, TRAINED_TOKENIZER_FORMAT))
    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_clm_tokenizers" / key


def cached_bpe_tokenizer(train: Dataset, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train once per (training split, vocab size); later runs load it like datasets' map cache."""
    cache = trained_tokenizer_cache(train, vocab_size)
    if (cache / TOKENIZER_FILE).is_file():
        logger.info("Loading the BPE tokenizer trained earlier on this corpus from %s", cache)
        try:
            return read_tokenizer(cache)
        except UnreadableTokenizer as err:
            logger.warning("Rebuilding the damaged cached tokenizer %s (%s)", cache, err.reason)
            shutil.rmtree(cache, ignore_errors=True)
    logger.info("Training a byte-level BPE tokenizer (vocab %d) on %d training documents", vocab_size, len(train))
    tokenizer = train_bpe_tokenizer(train, vocab_size)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache.parent))
    tokenizer.save_pretrained(staging)
    with_umask_modes(staging)
    try:
        os.replace(staging, cache)
    except OSError:  # another process cached the same tokenizer first
        shutil.rmtree(staging, ignore_errors=True)
    return tokenizer


# Fewer entries than this cannot spell text: such a "tokenizer" is a folder missing its vocabulary
# (transformers then builds one holding only the special tokens).
MIN_VOCABULARY = 16


def load_pretrained_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    require_hub("tokenizer", name_or_path, TOKENIZER_ALTERNATIVE)
    try:
        tokenizer = read_tokenizer(name_or_path)
    except UnreadableTokenizer as err:
        where = f" ({err.damaged} is damaged?)" if err.damaged else ""
        raise HfClmError(f"cannot load a tokenizer from '{name_or_path}'{where}: {err.reason}"
                         f"{offline_hint(TOKENIZER_ALTERNATIVE) if not where else ''}") from None
    if len(tokenizer) < MIN_VOCABULARY:
        raise HfClmError(f"the tokenizer of '{name_or_path}' has {len(tokenizer)} token(s); a tokenizer needs at least "
                         f"{MIN_VOCABULARY} to spell text (is its tokenizer.json or vocab file missing?); point "
                         f"tokenizer_name_or_path at a folder holding a real tokenizer, or train one")
    if not tokenizer.is_fast:
        raise HfClmError(f"the tokenizer of '{name_or_path}' has no fast (Rust) version; hf_clm needs one")
    if tokenizer.eos_token is None:
        raise HfClmError(f"the tokenizer of '{name_or_path}' has no EOS token to mark where documents end; "
                         f"set tokenizer_name_or_path to one that has (or add eos_token to its tokenizer_config.json)")
    return tokenizer


def document_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a document starts with: those the tokenizer itself puts before a text (the BOS of
    a Llama-style tokenizer), or none (GPT-2-style, where a document follows the previous one's EOS)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    special = tokenizer(probe)["input_ids"]
    start = next((i for i in range(len(special) - len(plain) + 1) if special[i:i + len(plain)] == plain), 0)
    return list(special[:start])


def encode_document(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """A text as the model saw documents in training: the document prefix, then the text's ids
    (no EOS: at inference the text goes on)."""
    return document_prefix(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]


def train_or_load_tokenizer(model: ModelArguments, train: Dataset) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the BPE trained (or cached) for this corpus, or the pretrained one, unchanged."""
    if model.train_tokenizer:
        tokenizer = cached_bpe_tokenizer(train, model.vocab_size)
        if len(tokenizer) < model.vocab_size:
            logger.warning("The BPE learned %s tokens, fewer than vocab_size %s: no more pairs occur twice in the "
                           "training text. The model's vocabulary is %s (vocab_size is an upper bound)",
                           f"{len(tokenizer):,}", f"{model.vocab_size:,}", f"{len(tokenizer):,}")
        return tokenizer
    return load_pretrained_tokenizer(model.tokenizer_name_or_path or model.model_name_or_path)
