import torch
from conftest import SHARED_DATA, make_documents, requires_shared_data
from datasets import Dataset
from transformers import AutoTokenizer

from hf_clm.data.collator import causal_lm_collator
from hf_clm.data.tokenizer import EOS_TOKEN, PAD_TOKEN, load_pretrained_tokenizer, train_or_load_tokenizer
from hf_clm.errors import first_line
from hf_clm.recipe.schema import ModelArguments


def train_split(extra: str = "") -> Dataset:
    return Dataset.from_dict({"text": make_documents(150, seed=5) + ([extra] if extra else [])})


def eos_labels_supervised(tokenizer) -> bool:
    """Do EOS positions keep their label through the run's collator?"""
    ids = tokenizer("the cat sat")["input_ids"] + [tokenizer.eos_token_id] + tokenizer("on the mat")["input_ids"]
    batch = causal_lm_collator(tokenizer)([{"input_ids": ids}])
    eos_positions = torch.tensor(ids) == tokenizer.eos_token_id
    return bool(eos_positions.any()) and bool((batch["labels"][0][eos_positions] == tokenizer.eos_token_id).all())


def test_trained_bpe_has_separate_eos_and_pad_and_reloads(tmp_path):
    tokenizer = train_or_load_tokenizer(ModelArguments(train_tokenizer=True, vocab_size=300), train_split())
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == 300
    assert eos_labels_supervised(tokenizer)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "the quick brown fox\n  sat"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.decode(reloaded(text)["input_ids"]) == text  # byte-level: lossless


def test_bpe_learns_from_the_training_split_only():
    word = "zyzzogeton"
    with_word = train_or_load_tokenizer(ModelArguments(train_tokenizer=True, vocab_size=400),
                                           train_split(extra=f"{word} " * 200))
    without = train_or_load_tokenizer(ModelArguments(train_tokenizer=True, vocab_size=400), train_split())
    assert len(with_word.tokenize(" " + word)) == 1
    assert len(without.tokenize(" " + word)) > 3


def test_trained_tokenizer_is_cached_per_training_split():
    args = ModelArguments(train_tokenizer=True, vocab_size=320)
    split = train_split()
    first = train_or_load_tokenizer(args, split)
    second = train_or_load_tokenizer(args, split)
    assert first.get_vocab() == second.get_vocab()
    assert type(second).__name__ == type(first).__name__


@requires_shared_data
def test_pretrained_gpt2_tokenizer_is_left_as_it_is():
    tokenizer = train_or_load_tokenizer(ModelArguments(tokenizer_name_or_path=str(SHARED_DATA / "tiny-gpt2")),
                                        train_split())
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257
    assert tokenizer.pad_token is None  # no token added: the base vocabulary stays as it is


def test_vocab_size_beyond_what_the_corpus_holds_is_said(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="hf_clm.data.tokenizer"):
        tokenizer = train_or_load_tokenizer(ModelArguments(train_tokenizer=True, vocab_size=100_000), train_split())
    assert len(tokenizer) < 100_000
    assert f"The BPE learned {len(tokenizer):,} tokens, fewer than vocab_size 100,000" in caplog.text


@requires_shared_data
def test_a_folder_of_bare_bpe_files_loads_as_the_tokenizer_they_define():
    """GPT-2's original release: vocab.json + merges.txt, no tokenizer config."""
    bare = load_pretrained_tokenizer(str(SHARED_DATA / "gpt2-tokenizer"))
    released = AutoTokenizer.from_pretrained(SHARED_DATA / "tiny-gpt2")
    text = "The cat sat on the mat.\n  Ünïcode — ok"
    assert bare(text).input_ids == released(text).input_ids and len(bare) == len(released)
    assert bare.eos_token_id == released.eos_token_id == 50256


def test_an_error_message_is_one_line_and_keeps_a_list_its_first_line_announces():
    assert first_line(ValueError("Couldn't do it from one of: \n(1) a file, \n(2) an instance")) == \
        "Couldn't do it from one of: (1) a file, (2) an instance"
    assert first_line(ValueError("first\nsecond")) == "first" and first_line(KeyError()) == "KeyError"
