"""attention_scope: document — a token of a packed block sees only its own document, in training
(the collator's batches), in Trainer's evaluation, in `perplexity` and `explain`, and a saved run
keeps the scope."""

import json

import pytest
from conftest import recipe_args, write_corpus

from hf_clm.data.attention import record_attention_scope
from hf_clm.evaluation.scoring import blocks_scores
from hf_clm.model.build import load_for_inference
from hf_clm.recipe.parser import parse_recipe
from hf_clm.training.train import run


@pytest.fixture(scope="module")
def document_run(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("document-scope")
    output_dir = root / "run"
    recipe = parse_recipe(recipe_args(write_corpus(root), output_dir, "--attention_scope", "document"))
    return recipe, output_dir, run(recipe)


def test_a_document_scope_run_records_it_and_trainer_evaluation_follows_it(document_run):
    recipe, output_dir, summary = document_run
    assert json.loads((output_dir / "config.json").read_text())["attention_scope"] == "document"
    assert "attention_scope: document" in (output_dir / "recipe.yaml").read_text()
    from hf_clm.data.blocks import build_blocks
    from hf_clm.data.corpus import load_corpus

    model, tokenizer = load_for_inference(str(output_dir))
    blocks, _ = build_blocks(load_corpus(recipe.data_args), tokenizer, recipe.data_args)
    nll = blocks_scores(model, blocks["validation"], batch_size=16, progress=False)
    assert nll.tokens == summary["tokens"]
    assert nll.perplexity == pytest.approx(summary["perplexity"], rel=1e-4)
    record_attention_scope(model, "block")  # the same weights scored across documents: another figure
    assert blocks_scores(model, blocks["validation"], batch_size=16, progress=False).perplexity != \
        pytest.approx(summary["perplexity"], rel=1e-3)
