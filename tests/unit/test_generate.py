"""generate at the model's context: it stops there, says so, and never indexes past the position table."""

import logging

import pytest
from support.generate import CONTEXT, prompt_of
from transformers import AutoModelForCausalLM, GPT2Config

from hf_clm.errors import HfClmError
from hf_clm.model.generate import Sampling, generate


@pytest.fixture
def eos_first_model(bpe_tokenizer):
    """A model whose likeliest next token is always EOS (its final states are constant ones, and EOS's
    embedding, tied to the head, is the largest along them)."""
    import torch

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=64,
                                                        n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[bpe_tokenizer.eos_token_id] = 10.0
    return model.eval()


def test_prompt_and_continuation_exactly_fill_the_context(small_context_model, bpe_tokenizer, caplog):
    prompt = prompt_of(bpe_tokenizer, 10)
    with caplog.at_level(logging.WARNING, logger="hf_clm.model.generate"):
        output = small_context_model.generate(**bpe_tokenizer(prompt, return_tensors="pt",
                                                              return_token_type_ids=False),
                                              max_new_tokens=CONTEXT - 10, do_sample=False)
        assert output.shape[1] == CONTEXT
        generate(small_context_model, bpe_tokenizer, prompt, Sampling(max_new_tokens=CONTEXT - 10, temperature=0),
                 stream=False)
    assert "stops at the model's context" not in caplog.text


def test_one_token_past_the_context_stops_there_and_says_so(small_context_model, bpe_tokenizer, caplog):
    prompt = prompt_of(bpe_tokenizer, 10)
    with caplog.at_level(logging.WARNING, logger="hf_clm.model.generate"):
        text = generate(small_context_model, bpe_tokenizer, prompt,
                        Sampling(max_new_tokens=CONTEXT - 10 + 1, temperature=0), stream=False)
    assert "stops at the model's context of 16 tokens: 10 prompt tokens + 6 new tokens (not 7)" in caplog.text
    assert text  # the 6 tokens that fit


def test_prompt_that_fills_the_context_is_an_error(small_context_model, bpe_tokenizer):
    with pytest.raises(HfClmError, match="prompt is 16 tokens long.*context of 16 tokens leaves no room"):
        generate(small_context_model, bpe_tokenizer, prompt_of(bpe_tokenizer, CONTEXT), Sampling(), stream=False)
    assert generate(small_context_model, bpe_tokenizer, prompt_of(bpe_tokenizer, CONTEXT - 1),
                    Sampling(temperature=0), stream=False)  # one token still fits


def test_generation_that_stops_at_end_of_text_says_so_and_ignore_eos_goes_on(eos_first_model, bpe_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_clm.model.generate"):
        text = generate(eos_first_model, bpe_tokenizer, "ROMEO:", Sampling(max_new_tokens=8, temperature=0),
                        stream=False)
    assert text == ""
    assert "stopped at end-of-text (the model's EOS) after 0 new tokens of 8" in caplog.text
    assert "--ignore_eos continues past it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_clm.model.generate"):
        generate(eos_first_model, bpe_tokenizer, "ROMEO:", Sampling(max_new_tokens=8, temperature=0, ignore_eos=True),
                 stream=False)
    assert "end-of-text" not in caplog.text


def test_generate_help_shows_the_defaults(capsys):
    from hf_clm.commands.cli import main

    assert main(["generate", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default 100)" in help_text and "(default 1.0)" in help_text and "--ignore_eos" in help_text
