"""Recipes and output folders that cannot make a sensible run: one error line, exit 2, nothing written."""

import json

import pytest
from conftest import recipe_args

from hf_clm.commands.cli import main


def test_throughput_counts_training_time_across_a_resume(text_files, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *recipe_args(text_files, run, "--max_steps", "6", "--save_steps", "6",
                                       "--eval_steps", "6")]) == 0
    state_path = run / "checkpoint-6" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    assert state["stateful_callbacks"]["ThroughputMeter"]["attributes"]["train_seconds"] > 0
    # the checkpoint says 1,000 s were spent before it: the resumed run's time adds to that
    state["stateful_callbacks"]["ThroughputMeter"]["attributes"]["train_seconds"] = 1000.0
    state_path.write_text(json.dumps(state))
    assert main(["train", *recipe_args(text_files, run, "--max_steps", "9", "--save_steps", "6",
                                       "--eval_steps", "9", "--resume_from_checkpoint", "auto")]) == 0
    summary = json.loads((run / "perplexity.json").read_text())
    assert summary["train_tokens_seen"] == 9 * 8 * 32
    assert 1000 < summary["train_seconds"] < 1000 + 120
    assert summary["train_tokens_per_second"] == pytest.approx(9 * 8 * 32 / summary["train_seconds"])
