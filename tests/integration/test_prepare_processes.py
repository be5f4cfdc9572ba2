"""hf-clm prepare: blocks on disk ahead of a launch, and train reading them (or refusing them)."""

import pytest
from conftest import recipe_args
from support.prepare import prepare_argv

from hf_clm.recipe.parser import parse_recipe
from hf_clm.training.train import run


def test_train_from_prepared_blocks_equals_training_from_the_corpus(prepared):
    root, files, target, _ = prepared
    from_disk = run(parse_recipe(prepare_argv(files, root / "from-disk", target)))
    from_corpus = run(parse_recipe(recipe_args(files, root / "from-corpus", "--max_steps", "10", "--eval_steps", "10")))
    assert from_disk["perplexity"] == pytest.approx(from_corpus["perplexity"], rel=1e-6)
    assert from_disk["bits_per_byte"] == pytest.approx(from_corpus["bits_per_byte"], rel=1e-6)


def test_train_from_shards_runs(sharded):
    _, files, _, target = sharded
    summary = run(parse_recipe(prepare_argv(files, target.parent / "trained", target)))
    assert summary["perplexity"] > 1
