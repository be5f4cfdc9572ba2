import pytest
from conftest import SHARED_DATA, requires_shared_data
from transformers import AutoModelForCausalLM, GPT2Config

from hf_clm.errors import HfClmError
from hf_clm.model.build import build_model, context_length
from hf_clm.recipe.schema import ModelArguments


def test_scratch_model_takes_sizes_and_special_ids_from_recipe_and_tokenizer(bpe_tokenizer):
    model = build_model(ModelArguments(n_layer=3, n_head=2, n_embd=48), bpe_tokenizer, block_size=40)
    config = model.config
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (3, 2, 48, 40)
    assert config.vocab_size == len(bpe_tokenizer)
    assert config.eos_token_id == bpe_tokenizer.eos_token_id != 50256
    assert config.pad_token_id == bpe_tokenizer.pad_token_id != config.eos_token_id


def test_block_size_larger_than_context_is_an_error(bpe_tokenizer, tmp_path):
    with pytest.raises(HfClmError, match="block_size 64 is larger than n_positions 32"):
        build_model(ModelArguments(n_positions=32), bpe_tokenizer, block_size=64)
    saved = tmp_path / "ckpt"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=16, n_layer=1,
                                                n_head=2, n_embd=16)).save_pretrained(saved)
    with pytest.raises(HfClmError, match="block_size 32 is larger than the model's context of 16"):
        build_model(ModelArguments(model_name_or_path=str(saved)), bpe_tokenizer, block_size=32)
    assert context_length(AutoModelForCausalLM.from_pretrained(saved).config) == 16


def test_tokenizer_larger_than_embeddings_is_an_error(bpe_tokenizer, tmp_path):
    saved = tmp_path / "small-vocab"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=100, n_positions=32, n_layer=1, n_head=2,
                                                n_embd=16)).save_pretrained(saved)
    with pytest.raises(HfClmError, match=f"tokenizer has {len(bpe_tokenizer)} tokens but the model's embeddings only 100"):
        build_model(ModelArguments(model_name_or_path=str(saved)), bpe_tokenizer, block_size=16)


@requires_shared_data
def test_pretrained_checkpoint_keeps_its_embeddings_and_gets_eos_as_generation_pad():
    from datasets import Dataset

    from hf_clm.data.tokenizer import train_or_load_tokenizer

    args = ModelArguments(model_name_or_path=str(SHARED_DATA / "tiny-gpt2"))
    tokenizer = train_or_load_tokenizer(args, Dataset.from_dict({"text": ["x"]}))
    model = build_model(args, tokenizer, block_size=64)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 50257
    assert model.generation_config.pad_token_id == tokenizer.eos_token_id
