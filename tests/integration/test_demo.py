"""Full-size runs: the embedded default demo (slow) and a short real-data run (needs ../shared/data)."""

import json

import pytest
from conftest import REPO, SHARED_DATA, requires_shared_data, run_hf_clm


@pytest.mark.slow
def test_default_demo_trains_offline_and_beats_the_unigram_baseline_widely(tmp_path):
    result = run_hf_clm("train", "--output_dir", tmp_path / "run", cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["perplexity"] * 10 < summary["unigram_perplexity"]
    assert "unigram baseline" in result.stdout


@requires_shared_data
def test_tiny_shakespeare_recipe_runs_on_the_real_file(tmp_path):
    recipe = REPO / "recipes" / "tiny-shakespeare.yaml"
    result = run_hf_clm(
        "train", recipe, "--train_files", SHARED_DATA / "tinyshakespeare" / "input.txt", "--vocab_size", "512",
        "--n_layer", "1", "--n_embd", "32", "--n_head", "2", "--block_size", "64", "--max_steps", "8",
        "--eval_steps", "8", "--save_steps", "8", "--output_dir", tmp_path / "run", cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((tmp_path / "run" / "token_counts.json").read_text())
    held, kept = counts["validation"]["documents"], counts["train"]["documents"]
    assert abs(held / (held + kept) - 0.10) < 0.01  # the held-out 10%, decided per document by its hash
    assert counts["train"]["dropped"] < 64 and counts["validation"]["dropped"] < 64
