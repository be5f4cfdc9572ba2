"""optim: muon (Muon for hidden matrices, AdamW for the rest), warmup_stable_decay and max_tokens,
through real Trainer runs that resume from a checkpoint."""

import json
import math
import shutil

import pytest
import torch
from conftest import recipe_args, write_corpus

from hf_clm.commands.cli import main

SWITCHES = ("--optim", "muon", "--muon_learning_rate", "0.03", "--max_tokens", "5000",
            "--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"decay_ratio": 0.5}',
            "--bf16", "true", "--attention_scope", "document", "--save_steps", "10", "--eval_steps", "20")


def logged(run_dir, key: str) -> dict[int, float]:
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return {entry["step"]: entry[key] for entry in history if key in entry}


@pytest.fixture(scope="module")
def whole_and_resumed(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("muon")
    files = write_corpus(root)
    argv = recipe_args(files, root / "whole", *SWITCHES)
    argv.remove("--max_steps"), argv.remove("30")  # the budget is max_tokens
    assert main(["train", *argv]) == 0
    resumed = root / "resumed"
    resumed.mkdir()
    shutil.copytree(root / "whole" / "checkpoint-10", resumed / "checkpoint-10")
    argv[argv.index("--output_dir") + 1] = str(resumed)
    assert main(["train", *argv, "--resume_from_checkpoint", "auto"]) == 0
    return root / "whole", resumed


def test_a_token_budget_sets_the_steps_and_the_schedule_decays_to_zero_at_its_end(whole_and_resumed):
    whole, _ = whole_and_resumed
    state = json.loads((whole / "trainer_state.json").read_text())
    assert state["max_steps"] == 20  # ceil(5,000 / (8 blocks x 32 tokens))
    assert json.loads((whole / "perplexity.json").read_text())["train_tokens_seen"] == 20 * 8 * 32
    rates = logged(whole, "learning_rate")
    assert rates[5] == rates[10] == pytest.approx(1e-2)  # stable (no warm-up) ...
    for step in (15, 20):  # ... then a cosine over the last 10 steps (step s runs at the rate of s - 1)
        assert rates[step] == pytest.approx(1e-2 * (1 + math.cos(math.pi * (step - 11) / 10)) / 2)
    losses = logged(whole, "loss")
    assert losses[20] < losses[5] - 0.5


def test_the_checkpoint_holds_both_optimizers_each_group_at_its_own_learning_rate(whole_and_resumed):
    whole, _ = whole_and_resumed
    state = torch.load(whole / "checkpoint-10" / "optimizer.pt", weights_only=False)
    assert set(state) == {"adamw", "muon"}
    assert all(s["momentum_buffer"].ndim == 2 for s in state["muon"]["state"].values())
    assert [g["lr"] for g in state["adamw"]["param_groups"]] == pytest.approx([1e-2, 1e-2])
    assert [g["lr"] for g in state["muon"]["param_groups"]] == pytest.approx([0.03])


def test_resuming_a_muon_run_on_a_token_budget_ends_where_the_uninterrupted_run_does(whole_and_resumed):
    whole, resumed = whole_and_resumed
    assert json.loads((resumed / "trainer_state.json").read_text())["max_steps"] == 20
    assert {s: v for s, v in logged(resumed, "learning_rate").items() if s > 10} == \
        {s: v for s, v in logged(whole, "learning_rate").items() if s > 10}
    assert {s: v for s, v in logged(resumed, "loss").items() if s > 10} == \
        {s: v for s, v in logged(whole, "loss").items() if s > 10}
    assert (resumed / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_the_run_record_names_the_optimizer_trainer_built_and_the_attention_scope(whole_and_resumed):
    whole, resumed = whole_and_resumed
    for run_dir in (whole, resumed):
        record = json.loads((run_dir / "perplexity.json").read_text())["run"]
        assert record["optimizer"] == "Muon + AdamW" and record["attention_scope"] == "document"
        assert "optimizer Muon + AdamW" in (run_dir / "report.md").read_text()
