"""Shared by tests/unit/test_finetune.py and tests/integration/test_finetune_processes.py."""

import json
from pathlib import Path

from conftest import make_documents, recipe_args
from safetensors import safe_open
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import PreTrainedTokenizerFast

from hf_clm.commands.cli import main

GPT2_VOCAB = 50257


def finetune_args(corpus, base: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["train", *recipe_args(corpus, output_dir, "--model_name_or_path", str(base), "--train_tokenizer", "false",
                                  "--max_steps", "8", "--eval_steps", "8", "--save_steps", "8",
                                  "--learning_rate", "3e-3", *extra)]


def lora_args(*targets: str, r: int = 16) -> list[str]:
    return ["--peft_method", "lora", "--lora_r", str(r), "--lora_alpha", str(2 * r), "--lora_dropout", "0.0",
            "--lora_target_modules", *targets]


def embedding_rows(model_file: Path) -> int:
    with safe_open(str(model_file), "pt") as f:
        name = next(k for k in f.keys() if k.endswith(("wte.weight", "embed_tokens.weight")))
        return f.get_slice(name).get_shape()[0]


def perplexity_of(model_dir: Path, data: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["perplexity", str(model_dir), "--data", str(data), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE whose post-processor puts <s> before every text, as Llama's does; no pad token."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(make_documents(200, seed=3), vocab_size=400, min_frequency=2,
                            special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    bpe._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


