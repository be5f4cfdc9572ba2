"""hf-clm prepare: blocks on disk ahead of a launch, and train reading them (or refusing them)."""

import json

import pytest
from conftest import recipe_args, run_in_process, write_corpus
from datasets import load_from_disk

from hf_clm.cli import main
from hf_clm.recipe_parser import parse_recipe
from hf_clm.train import run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("prepare")
    files = write_corpus(root)
    target = root / "blocks"
    flags = recipe_args(files, root / "unused", "--max_steps", "10", "--eval_steps", "10")
    result = run_in_process("prepare", *flags, "--prepared_dataset", str(target))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, files, target, result.stdout


def prepare_argv(files, output_dir, target, *extra):
    return recipe_args(files, output_dir, "--max_steps", "10", "--eval_steps", "10",
                       "--prepared_dataset", str(target), *extra)


def test_prepare_writes_blocks_tokenizer_and_description(prepared):
    root, files, target, stdout = prepared
    description = json.loads((target / "prepared.json").read_text())
    blocks = load_from_disk(str(target))
    assert description["block_size"] == 32 and description["tokenizer"].startswith("byte-level BPE, vocab 400")
    assert len(blocks["train"]) == description["counts"]["train"]["blocks"] > 0
    assert blocks["train"].column_names == ["input_ids"]  # no labels/attention_mask copies
    assert (target / "tokenizer" / "tokenizer.json").is_file()
    assert f"{description['counts']['train']['blocks']:,} blocks" in stdout


@pytest.mark.full
def test_train_from_prepared_blocks_equals_training_from_the_corpus(prepared):
    root, files, target, _ = prepared
    from_disk = run(parse_recipe(prepare_argv(files, root / "from-disk", target)))
    from_corpus = run(parse_recipe(recipe_args(files, root / "from-corpus", "--max_steps", "10", "--eval_steps", "10")))
    assert from_disk["perplexity"] == pytest.approx(from_corpus["perplexity"], rel=1e-6)
    assert from_disk["bits_per_byte"] == pytest.approx(from_corpus["bits_per_byte"], rel=1e-6)


@pytest.mark.parametrize("flag,value,message", [
    ("--block_size", "16", "has blocks of 32 tokens but the recipe's block_size is 16"),
    ("--vocab_size", "300", "was tokenized with 'byte-level BPE, vocab 400"),
])
def test_train_refuses_a_prepared_dataset_made_differently(prepared, capsys, flag, value, message):
    root, files, target, _ = prepared
    code = main(["train", *prepare_argv(files, root / "refused", target, flag, value)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (root / "refused" / "model.safetensors").exists()


def test_train_refuses_a_missing_or_unfinished_prepared_dataset(prepared, capsys, tmp_path):
    root, files, _, _ = prepared
    assert main(["train", *prepare_argv(files, tmp_path / "run", tmp_path / "nowhere")]) == 2
    assert "does not exist; run 'hf-clm prepare RECIPE' first" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    assert main(["train", *prepare_argv(files, tmp_path / "run", tmp_path / "half")]) == 2
    assert "holds no prepared.json" in capsys.readouterr().err
