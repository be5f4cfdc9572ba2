"""Corpus mixtures: two real sources (a large one of words, a small one of digits, so every block
tells its source), weights 0.75/0.25, tokenized with a real BPE, interleaved, trained by Trainer."""

import json
import logging

import numpy as np
import pytest
from support.mixture import mixture_recipe, write_sources

from hf_clm.data.interleave import window_shares
from hf_clm.data.mixture import mixture_data
from hf_clm.recipe.parser import parse_recipe


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    return root, write_sources(root)


def test_every_window_of_1000_blocks_holds_each_share_within_1_percent(sources, caplog):
    root, files = sources
    recipe = parse_recipe([str(mixture_recipe(root, files, root / "unit"))])
    with caplog.at_level(logging.WARNING):
        data = mixture_data(recipe)
    assert "the weights sum to 4, not 1; normalised to words 0.75, digits 0.25" in caplog.text
    rows = {row["name"]: row for row in data.mixture}
    assert rows["words"]["train"]["blocks"] > 5 * rows["digits"]["train"]["blocks"]  # very different sizes
    assert len(data.train) == 500 * 8
    # the source of each training block, read from the block itself: digits or words
    blocks = data.train.with_format("numpy")[:]["input_ids"].tolist()
    texts = data.tokenizer.batch_decode(blocks, skip_special_tokens=True)
    is_digits = np.array([not any(c.isalpha() for c in text) for text in texts])
    sources_of = np.where(is_digits, 1, 0)
    shares = window_shares(sources_of, 2)
    assert len(shares) == len(data.train) - 999
    assert np.abs(shares - [0.75, 0.25]).max() <= 0.01
    # the small source repeats (budget share 1,000 blocks > its blocks), said at start, each pass reshuffled
    assert rows["digits"]["trained_blocks"] == int(is_digits.sum()) == 1000
    assert rows["digits"]["passes"] > 1 and "source 'digits' has" in caplog.text and "it repeats" in caplog.text
    digits = [tuple(ids) for ids, d in zip(blocks, is_digits) if d]
    per_pass = rows["digits"]["train"]["blocks"]
    assert sorted(digits[:per_pass]) == sorted(digits[per_pass:2 * per_pass]) and digits[:per_pass] != \
        digits[per_pass:2 * per_pass]
    # each source's held-out blocks are an evaluation set of its name
    assert set(data.eval_sets) == {"words", "digits"}
    assert len(data.eval_sets["digits"]) == rows["digits"]["validation"]["blocks"] > 0


def test_the_order_is_a_function_of_blocks_and_seed(sources):
    root, files = sources
    first = mixture_data(parse_recipe([str(mixture_recipe(root, files, root / "a"))]))
    again = mixture_data(parse_recipe([str(mixture_recipe(root, files, root / "b"))]))
    other_seed = mixture_data(parse_recipe([str(mixture_recipe(root, files, root / "c", seed=1))]))
    ids = [data.train.with_format("numpy")[:]["input_ids"] for data in (first, again, other_seed)]
    assert np.array_equal(ids[0], ids[1])
    assert not np.array_equal(ids[0], ids[2])


def test_stop_ends_training_where_the_first_source_runs_out(sources, caplog):
    root, files = sources
    recipe = parse_recipe([str(mixture_recipe(root, files, root / "stop", mixture_exhausted="stop"))])
    with caplog.at_level(logging.WARNING):
        data = mixture_data(recipe)
    digits = next(row for row in data.mixture if row["name"] == "digits")
    steps = recipe.training_args.max_steps
    assert steps < 500 and f"training stops at step {steps} of 500 (mixture_exhausted: stop)" in caplog.text
    assert len(data.train) == steps * 8
    assert digits["trained_blocks"] <= digits["train"]["blocks"]  # no block of it twice
    assert digits["train"]["blocks"] - digits["trained_blocks"] < 8 * 0.25 + 2


def test_a_prepared_mixture_lists_each_source_and_trains_with_other_weights(sources, hf_clm_main, tmp_path):
    root, files = sources
    folder = tmp_path / "prepared"
    recipe = mixture_recipe(tmp_path, files, tmp_path / "run", prepared_dataset=str(folder), max_steps=4,
                            eval_steps=4, save_steps=4)
    prepared = hf_clm_main("prepare", recipe)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    description = json.loads((folder / "prepared.json").read_text())
    rows = {row["name"]: row for row in description["mixture"]}
    assert set(rows) == {"words", "digits"}
    assert sum(row["train"]["blocks"] for row in rows.values()) == description["counts"]["train"]["blocks"]
    assert rows["digits"]["train"]["tokens"] < rows["words"]["train"]["tokens"] / 5
    trained = hf_clm_main("train", recipe, "--mixture", json.dumps(
        [{"train_files": str(files["words"]), "weight": 0.5}, {"train_files": str(files["digits"]), "weight": 0.5}]))
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert [row["trained_blocks"] for row in summary["mixture"]] == [16, 16]
    assert [row["train"] for row in summary["mixture"]] == [rows["words"]["train"], rows["digits"]["train"]]
