"""generate at the model's context: it stops there, says so, and never indexes past the position table."""

import logging

import pytest
from conftest import run_hf_clm
from transformers import AutoModelForCausalLM, GPT2Config

from hf_clm.errors import HfClmError
from hf_clm.model.generate import Sampling, generate

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


@pytest.mark.full
def test_default_max_new_tokens_on_a_small_model_as_a_subprocess(small_context_model, bpe_tokenizer, tmp_path):
    """Also: the libraries are quiet unless --verbose (their config warnings, "Loading weights" bars)."""
    small_context_model.config.bos_token_id = 10 ** 6  # a config transformers warns about on loading
    small_context_model.save_pretrained(tmp_path)
    bpe_tokenizer.save_pretrained(tmp_path)
    env = {"TRANSFORMERS_VERBOSITY": None, "DATASETS_VERBOSITY": None}  # unset: the package's defaults speak
    runs = {verbose: run_hf_clm(*verbose, "generate", tmp_path, prompt_of(bpe_tokenizer, 5), timeout=300, env=env)
            for verbose in ((), ("--verbose",))}
    for result in runs.values():
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert "5 prompt tokens + 11 new tokens (not 100)" in result.stderr
    quiet, verbose = runs[()].stderr, runs[("--verbose",)].stderr
    assert "Loading weights" not in quiet and "bos_token_id" not in quiet
    assert "Loading weights" in verbose and "bos_token_id" in verbose


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
