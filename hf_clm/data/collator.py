"""Collator: blocks -> a training batch. ``DataCollatorForLanguageModeling(mlm=False)`` copies
``input_ids`` to ``labels`` (the model shifts them: position t predicts token t + 1, so a block of
``block_size`` tokens gives ``block_size - 1`` supervised predictions); padding never counts as a
target; under ``attention_scope: document`` positions restart at every document."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from hf_clm.data.attention import document_position_ids
from hf_clm.errors import HfClmError

# The label of a position no loss is taken on (padding; what PyTorch's cross-entropy ignores).
IGNORE_INDEX = -100


@dataclass
class PaddingOnlyMaskCollator(DataCollatorForLanguageModeling):
    """``DataCollatorForLanguageModeling(mlm=False)`` whose labels are -100 where the attention mask
    says padding, and only there. The parent masks every label equal to ``pad_token_id``, which
    with pad = EOS would hide every document end from the loss (transformers issue #23530)."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        if not self.mlm and "attention_mask" in batch:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        return batch


def causal_lm_collator(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForLanguageModeling:
    """The run's collator. A tokenizer with a pad token of its own (a BPE trained here) goes to
    ``DataCollatorForLanguageModeling(mlm=False)`` as it is; one whose pad is EOS or missing (GPT-2,
    Llama) gets a padding-only label mask, and a copy padded with EOS where it has no pad, so the
    run's tokenizer (saved with the model) stays the base one."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    if tokenizer.pad_token_id is None:
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    return PaddingOnlyMaskCollator(tokenizer, mlm=False)


class DocumentCollator:
    """The run's collator, then document scope: document position ids, and no attention mask (an
    all-ones mask would make transformers fall back to one causal mask over the block)."""

    def __init__(self, collator: DataCollatorForLanguageModeling):
        self.collator = collator
        self.eos_token_id = collator.tokenizer.eos_token_id

    def __call__(self, examples):
        batch = self.collator(examples)
        mask = batch.pop("attention_mask", None)
        if mask is not None and not bool(mask.all()):
            raise HfClmError("attention_scope: document needs full blocks without padding")
        batch["position_ids"] = document_position_ids(batch["input_ids"], self.eos_token_id)
        return batch


def run_collator(tokenizer: PreTrainedTokenizerBase, attention_scope: str = "block"):
    """The collator a run trains and evaluates with."""
    collator = causal_lm_collator(tokenizer)
    return DocumentCollator(collator) if attention_scope == "document" else collator
