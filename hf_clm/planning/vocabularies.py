"""Vocabulary sizes of Hub tokenizers, for planning a model trained from scratch with one of them when
the tokenizer is not on this machine. Each figure is ``len(tokenizer)`` (base vocabulary plus added
special tokens): the rows of the embedding ``train`` builds (see ``hf_clm.model.build.scratch_config``),
which can be fewer than the padded ``vocab_size`` of the Hub model's own config (Qwen2.5: 151,665
tokens, 151,936 rows; Pythia: 50,277 tokens, 50,304 rows)."""

from __future__ import annotations

GPT2 = 50_257
NEOX = 50_277
LLAMA2 = 32_000
LLAMA3 = 128_256
QWEN2 = 151_665

KNOWN_VOCABULARIES = {
    "gpt2": GPT2, "openai-community/gpt2": GPT2, "gpt2-medium": GPT2, "openai-community/gpt2-medium": GPT2,
    "gpt2-large": GPT2, "openai-community/gpt2-large": GPT2, "gpt2-xl": GPT2, "openai-community/gpt2-xl": GPT2,
    "distilgpt2": GPT2, "distilbert/distilgpt2": GPT2,
    "EleutherAI/gpt-neox-20b": NEOX, "EleutherAI/pythia-70m": NEOX, "EleutherAI/pythia-160m": NEOX,
    "EleutherAI/pythia-410m": NEOX, "EleutherAI/pythia-1b": NEOX,
    "meta-llama/Llama-2-7b-hf": LLAMA2, "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": LLAMA2,
    "mistralai/Mistral-7B-v0.1": 32_000,
    "meta-llama/Meta-Llama-3-8B": LLAMA3, "meta-llama/Llama-3.1-8B": LLAMA3, "meta-llama/Llama-3.2-1B": LLAMA3,
    "Qwen/Qwen2.5-0.5B": QWEN2, "Qwen/Qwen2.5-1.5B": QWEN2, "Qwen/Qwen2.5-7B": QWEN2,
    "HuggingFaceTB/SmolLM2-135M": 49_152, "HuggingFaceTB/SmolLM2-360M": 49_152,
}


def known_vocabulary(name: str) -> int | None:
    """The size of the Hub tokenizer ``name`` (ids compared without case), None when it is not known."""
    sizes = {key.lower(): size for key, size in KNOWN_VOCABULARIES.items()}
    return sizes.get(name.strip().lower())
