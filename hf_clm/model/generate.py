"""Generate: continue a prompt with a trained model, streaming tokens to the terminal."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer, set_seed

from hf_clm.data.tokenizer import encode_document
from hf_clm.errors import HfClmError
from hf_clm.model.build import context_length

logger = logging.getLogger(__name__)


@dataclass
class Sampling:
    """How to continue a prompt; `hf-clm generate` checks each value's range before loading a model."""

    max_new_tokens: int = 100
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # never stop at end-of-text: EOS cannot be sampled (llama.cpp's --ignore-eos)


def new_token_budget(prompt_tokens: int, wanted: int, context: int | None) -> int:
    """How many tokens to generate: ``wanted``, or fewer so that prompt + continuation fit the
    model's context (position embeddings end there). Generation stops at the context; the window
    is not slid, so every token is predicted from the whole text before it."""
    if context is None:
        return wanted
    if prompt_tokens >= context:
        raise HfClmError(f"the prompt is {prompt_tokens} tokens long, and the model's context of {context} tokens "
                         f"leaves no room to continue it; shorten the prompt to fewer than {context} tokens")
    return min(wanted, context - prompt_tokens)


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, sampling: Sampling,
             stream: bool = True) -> str:
    """The prompt's continuation (without the prompt); printed token by token when ``stream``."""
    if not prompt.strip():
        raise HfClmError("the prompt is empty; give some text to continue")
    set_seed(sampling.seed)
    ids = torch.tensor([encode_document(tokenizer, prompt)], device=model.device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    prompt_tokens = ids.shape[1]
    context = context_length(model.config)
    budget = new_token_budget(prompt_tokens, sampling.max_new_tokens, context)
    if budget < sampling.max_new_tokens:
        logger.warning("Generation stops at the model's context of %d tokens: %d prompt tokens + %d new tokens "
                       "(not %d)", context, prompt_tokens, budget, sampling.max_new_tokens)
    greedy = sampling.temperature == 0
    output = model.generate(
        **inputs, max_new_tokens=budget, do_sample=not greedy,
        temperature=None if greedy else sampling.temperature, top_k=None if greedy else sampling.top_k,
        top_p=None if greedy else sampling.top_p, min_new_tokens=budget if sampling.ignore_eos else None,
        eos_token_id=tokenizer.eos_token_id,  # where documents end in training, whatever the config says
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        streamer=TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True) if stream else None,
    )
    new_ids = output[0, prompt_tokens:]
    if len(new_ids) < budget and len(new_ids) and new_ids[-1].item() == tokenizer.eos_token_id:
        logger.warning("Generation stopped at end-of-text (the model's EOS) after %d new token%s of %d: the model "
                       "ended the text there; --ignore_eos continues past it (or try another --seed)",
                       len(new_ids) - 1, "" if len(new_ids) == 2 else "s", budget)
    return tokenizer.decode(new_ids, skip_special_tokens=True)
