"""The model a plan sizes: the one ``train`` builds, on the ``meta`` device (shapes and dtypes, no memory),
read without the network. A pretrained model from its ``config.json`` (a local folder, or the Hugging
Face cache); a model trained from scratch from :func:`hf_clm.model.build.scratch_config`, the config
train builds, with the tokenizer's vocabulary. The block is checked against the model's context by
train's own check. What plan cannot read for sure it refuses, naming what to give instead:

* a Hub model whose config is not cached: ``hf download NAME config.json``, or a local folder;
* a Hub tokenizer that is not cached: its size from :mod:`hf_clm.planning.vocabularies`, else
  ``--vocab_size N`` (given, it also stands for a tokenizer the table knows).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from hf_clm.data.tokenizer import UnreadableTokenizer, read_tokenizer
from hf_clm.errors import HfClmError, first_line
from hf_clm.model.build import check_context_holds_block, scratch_config
from hf_clm.planning.vocabularies import known_vocabulary
from hf_clm.recipe.schema import ModelArguments, Recipe

FLASH_KERNELS = ("flash_attention_2", "flash_attention_3")


def model_config(recipe: Recipe, vocab_size: int | None = None) -> tuple[Any, str]:
    """The config the run's model is built from, and where it came from, in words. ``vocab_size``:
    plan's ``--vocab_size``, for a tokenizer that is not on this machine."""
    model, block = recipe.model_args, recipe.data_args.block_size
    if model.model_name_or_path:
        config, source = pretrained_config(model.model_name_or_path), f"the config of {model.model_name_or_path}"
    else:
        vocab, where = scratch_vocabulary(model, vocab_size)
        config = scratch_config(model, block, vocab)
        source = f"GPT-2 from the recipe's shape keys, vocabulary {vocab:,} ({where})"
    check_context_holds_block(config, block)
    return config, source


def pretrained_config(name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        if Path(name).exists():
            raise HfClmError(f"cannot read the config of {name}: {first_line(err)}") from None
    raise HfClmError(f"model_name_or_path {name}: its config.json is not in the local Hugging Face cache, and plan "
                     f"reads the model's shapes from it without the network; fetch it where the Hub is reachable "
                     f"(hf download {name} config.json), or pass a local folder holding it")


def scratch_vocabulary(model: ModelArguments, vocab_size: int | None) -> tuple[int, str]:
    """The vocabulary of a model trained from scratch, and where it came from, in words."""
    name = model.tokenizer_name_or_path
    if model.train_tokenizer or not name:
        return model.vocab_size, "vocab_size, the most a trained tokenizer gets"
    try:
        return len(read_tokenizer(name, local_only=True)), f"the tokenizer {name}"
    except UnreadableTokenizer as err:
        if Path(name).exists():
            raise HfClmError(f"cannot read the tokenizer {name}: {err.reason}") from None
    if vocab_size is not None:
        return vocab_size, f"--vocab_size; the tokenizer {name} is not in the local cache"
    if (known := known_vocabulary(name)) is not None:
        return known, (f"the size of the Hub tokenizer {name}, which is not in the local cache; "
                       f"--vocab_size N gives another")
    raise HfClmError(f"the tokenizer {name} is not in the local Hugging Face cache and its size is not among the Hub "
                     f"tokenizers plan knows; give --vocab_size N (its len(tokenizer)), or fetch it where the Hub is "
                     f"reachable (hf download {name} tokenizer.json tokenizer_config.json)")


def meta_model(recipe: Recipe, config):
    """The model on the meta device: shapes and dtypes, no memory. (accelerate's init_empty_weights
    unties GPT-2's tied head, doubling its embedding; the meta device keeps the tie.) A flash-attention
    kernel is sized as sdpa, which keeps no attention scores either: its package need not be here."""
    from transformers import AutoModelForCausalLM

    dtype = getattr(config, "dtype", None) if recipe.model_args.model_name_or_path else None
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kernel = recipe.model_args.attn_implementation
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32,
                                                attn_implementation=None if kernel in FLASH_KERNELS else kernel)


def with_adapter(lm, recipe: Recipe):
    from hf_clm.model.build import with_lora_adapter

    if recipe.model_args.peft_method != "lora":
        return lm
    model_logger = logging.getLogger("hf_clm.model.build")
    level = model_logger.level
    model_logger.setLevel(logging.WARNING)  # its "LoRA r=... trainable" line is about a run, not a plan
    try:
        with torch.device("meta"):
            return with_lora_adapter(lm, dataclasses.replace(recipe.model_args, load_in_4bit=False))
    finally:
        model_logger.setLevel(level)


def compute_element_bytes(lm, recipe: Recipe) -> int:
    """Bytes of one activation element, in the dtype the run computes in: 2 under bf16/fp16 autocast;
    QLoRA's ``bnb_4bit_compute_dtype``; else the dtype of the model's weights (a checkpoint stored in
    16 bits trains in 16 bits)."""
    args, model = recipe.training_args, recipe.model_args
    if args.bf16 or args.fp16:
        return 2
    if model.load_in_4bit:
        return getattr(torch, model.bnb_4bit_compute_dtype).itemsize
    return lm.get_input_embeddings().weight.element_size()
