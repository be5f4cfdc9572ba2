"""Attention scope: what a token of a packed block may attend to.

``block`` (the default): every earlier token of the block, across document boundaries, as
run_clm.py trains. ``document``: only earlier tokens of its own document, and positions restart
at each document, as if every document had been fed alone.

Every document in the token stream is followed by EOS (see :mod:`hf_clm.data.blocks`). Under document
scope that EOS *opens* the next document, as its BOS: it takes position 0 of the next document,
so the first word of a document is predicted from the EOS alone (the same start a document fed
alone gets), while the last word of a document still has EOS as its target (the model learns
where documents end). Had EOS closed its document instead, the prediction made *at* the EOS (the
next document's first token) would be made from the previous, unrelated document.

transformers builds the block-diagonal causal mask itself (GPT-2, Llama and the other models
whose mask comes from ``masking_utils.create_causal_mask``; sdpa, eager and flex_attention
kernels) when ``position_ids`` restart, but only when no ``attention_mask`` is passed and no KV
cache is in use (``masking_utils._preprocess_mask_arguments``): ``collator.DocumentCollator`` drops
the collator's all-ones mask, Trainer sets the model's ``use_cache`` to TrainingArguments'
(false; the recipe refuses true with document scope), and evaluation outside Trainer
(``evaluation.final_states``) passes these position ids and ``use_cache=False``.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from hf_clm.errors import HfClmError


def document_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Positions that restart at 0 on every EOS (EOS opens a document); the tokens before a row's
    first EOS (the tail of a document begun in an earlier block) count from the row's start."""
    index = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
    starts = torch.where(input_ids == eos_token_id, index, torch.zeros_like(index))
    return index - torch.cummax(starts, dim=-1).values


def attention_scope(model: PreTrainedModel) -> str:
    """The scope the model was trained with, recorded in its config (``config.json``)."""
    return getattr(model.config, "attention_scope", "block")


def record_attention_scope(model: PreTrainedModel, scope: str) -> None:
    model.config.attention_scope = scope


@torch.no_grad()
def check_document_isolation(model: PreTrainedModel) -> None:
    """Fail unless the model really isolates documents: a short second document scores the same
    packed behind another as alone (some architectures ignore restarting position ids)."""
    eos = model.config.eos_token_id
    vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    words = [i for i in range(vocab) if i not in (eos, model.config.pad_token_id)][:6]
    packed = torch.tensor([[*words[:3], eos, *words[3:]]], device=device)
    alone = packed[:, 3:]
    was_training = model.training
    model.eval()
    try:
        together = model(input_ids=packed, position_ids=document_position_ids(packed, eos),
                         use_cache=False).logits[0, 3:]
        single = model(input_ids=alone, use_cache=False).logits[0]
    finally:
        model.train(was_training)
    if not torch.allclose(together.float(), single.float(), atol=1e-3, rtol=1e-3):
        raise HfClmError(f"{type(model).__name__} does not isolate documents from restarting position ids; "
                         f"use attention_scope: block with this model")
