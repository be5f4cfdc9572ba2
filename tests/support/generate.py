"""Shared by tests/unit/test_generate.py and tests/integration/test_generate_processes.py."""

import pytest
from transformers import AutoModelForCausalLM, GPT2Config

CONTEXT = 16


@pytest.fixture(scope="module")
def small_context_model(bpe_tokenizer):
    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=CONTEXT,
                                                        n_layer=1, n_head=2, n_embd=16))
    model.generation_config.eos_token_id = None  # never stop early: every test runs to its length
    return model.eval()


def prompt_of(tokenizer, n: int) -> str:
    text = " ".join(["the cat sat on the mat"] * 10)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == n
    return prompt
