"""Shared by tests/unit/test_time_budget.py and tests/integration/test_time_budget_processes.py."""

import json

from conftest import recipe_args

from hf_clm.commands.cli import main


def budget_run(text_files, run_dir, seconds: str, *extra: str) -> dict:
    argv = recipe_args(text_files, run_dir, "--max_steps", "-1", "--max_train_seconds", seconds,
                       "--lr_scheduler_type", "cosine", "--warmup_steps", "0.1", "--logging_steps", "1",
                       "--eval_steps", "100000", *extra)
    assert main(["train", *argv]) == 0
    return json.loads((run_dir / "perplexity.json").read_text())
