"""A real Trainer run, end to end, on a model and corpus small enough for seconds on a CPU."""

import json
from pathlib import Path

import pytest
import torch
from conftest import recipe_args, write_corpus
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_clm.commands.cli import main
from hf_clm.evaluation.scoring import blocks_scores
from hf_clm.recipe.parser import parse_recipe
from hf_clm.training.train import run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("train")
    files = write_corpus(root)
    output_dir = root / "run"
    summary = run(parse_recipe(recipe_args(files, output_dir)))
    return output_dir, summary


def test_run_writes_model_tokenizer_recipe_and_perplexity(trained_run):
    output_dir, summary = trained_run
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "token_counts.json",
                 "perplexity.json", "trainer_state.json"):
        assert (output_dir / name).is_file(), name
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-15", "checkpoint-30"]
    assert (output_dir / "checkpoint-15" / "model.safetensors").is_file()
    written = json.loads((output_dir / "perplexity.json").read_text())
    assert written.pop("run") == summary["run"]  # how the run ran: exact values, not figures
    assert written.pop("global_step") == 30 and set(written.pop("weights_sha256")) == {"model.safetensors"}
    assert written == pytest.approx({k: v for k, v in summary.items() if k not in ("run", "global_step")})
    assert summary["run"]["parallelism"] == "none" and summary["run"]["global_batch_tokens"] == 8 * 32
    assert set(written) >= {"perplexity", "loss", "tokens", "parameters", "train_tokens_seen"}
    assert written["train_tokens_seen"] == 30 * 8 * 32


def test_every_evaluation_logs_perplexity_and_loss_falls(trained_run):
    output_dir, summary = trained_run
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals] == [15, 30]
    for entry in evals:
        assert entry["eval_perplexity"] == pytest.approx(torch.tensor(entry["eval_loss"]).exp().item(), rel=1e-6)
    losses = [e["loss"] for e in history if "loss" in e]
    assert losses[-1] < losses[0] - 0.5
    assert summary["perplexity"] < summary["unigram_perplexity"]


def test_saved_run_reloads_and_reproduces_its_perplexity(trained_run):
    output_dir, summary = trained_run
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    counts = json.loads((output_dir / "token_counts.json").read_text())
    assert counts["validation"]["dropped"] < 32
    assert counts["train"]["kept"] + counts["train"]["dropped"] == counts["train"]["tokens"]
    # re-evaluate the validation blocks outside Trainer: the same token-weighted figure
    from hf_clm.data.blocks import build_blocks
    from hf_clm.data.corpus import load_corpus

    recipe = parse_recipe([str(output_dir / "recipe.yaml")])
    blocks, _ = build_blocks(load_corpus(recipe.data_args), tokenizer, recipe.data_args)
    nll = blocks_scores(model, blocks["validation"], batch_size=16, progress=False)
    assert nll.tokens == summary["tokens"]
    assert nll.perplexity == pytest.approx(summary["perplexity"], rel=1e-4)


def test_run_writes_its_report_with_plots(trained_run):
    output_dir, summary = trained_run
    report = json.loads((output_dir / "report.json").read_text())["runs"][0]
    assert report["perplexity"] == pytest.approx(summary["perplexity"])
    assert report["train_tokens_per_second"] > 0 and 0 < summary["bits_per_byte"] < 8
    markdown = (output_dir / "report.md").read_text()
    assert f"{summary['perplexity']:.2f}" in markdown and "curves_by_steps.png" in markdown
    for name in ("curves_by_steps.png", "curves_by_tokens_seen.png"):
        assert (output_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_says_when_the_model_is_worse_than_the_unigram_baseline():
    from hf_clm.run.figures import baseline_comparison

    assert baseline_comparison(20.0, 600.0) == "model is 30.0x lower"
    assert baseline_comparison(50.0, 25.0).startswith("model is 2.0x HIGHER: worse than counting tokens")


def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path, text_files, caplog):
    argv = recipe_args(text_files, tmp_path / "run", "--max_steps", "3", "--warmup_steps", "715", "--eval_steps", "3")
    with caplog.at_level("WARNING", logger="hf_clm"):
        assert main(["train", *argv]) == 0
    assert "warmup_steps 715 covers the whole run of 3 steps: the learning rate never reaches learning_rate" \
        in caplog.text


def test_report_to_tensorboard_writes_event_files_where_the_run_says(tmp_path, text_files, caplog, monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    argv = recipe_args(text_files, tmp_path / "run", "--max_steps", "4", "--eval_steps", "4", "--logging_steps", "2",
                       "--report_to", "tensorboard")
    with caplog.at_level("INFO", logger="hf_clm"):
        assert main(["train", *argv]) == 0
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Logging to tensorboard"))
    folder = Path(said.split("event files in ", 1)[1].split(" (", 1)[0])
    assert folder.is_relative_to(tmp_path / "run") and list(folder.glob("events.out.tfevents.*"))


def test_an_evaluation_that_dominates_the_time_is_warned_about_once(tmp_path, text_files, caplog):
    argv = recipe_args(text_files, tmp_path / "run", "--max_steps", "6", "--eval_steps", "2",
                       "--per_device_eval_batch_size", "1", "--validation_files", str(text_files["train"]))
    with caplog.at_level("WARNING", logger="hf_clm"):
        assert main(["train", *argv]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation has taken")]
    assert len(warnings) == 1 and "max_eval_samples, now all" in warnings[0] and "eval_steps, now 2" in warnings[0]


def test_the_base_and_the_final_evaluation_are_warned_about_before_they_run(tmp_path, text_files, caplog):
    """From the token counts: 2 steps x 256 tokens of training against 1,568 validation tokens, a third
    of a trained token's cost each: evaluation is half the time, before training and at its end."""
    argv = recipe_args(text_files, tmp_path / "run", "--max_steps", "2", "--eval_steps", "2", "--eval_on_start",
                       "true")
    with caplog.at_level("WARNING", logger="hf_clm"):
        assert main(["train", *argv]) == 0
    counts = json.loads((tmp_path / "run" / "token_counts.json").read_text())["validation"]
    messages = [r.getMessage() for r in caplog.records if " tokens, about " in r.getMessage()]
    assert messages == [
        f"the evaluation before training (eval_on_start) scores {counts['kept']:,} tokens, about 51% of the time of "
        "the 512 tokens training takes (a token evaluated costs about a third of one trained); evaluate fewer "
        "documents (max_eval_samples, now all)",
        f"the final evaluation scores {counts['kept']:,} tokens, about 51% of the time of the 512 tokens training "
        "took (a token evaluated costs about a third of one trained); evaluate fewer documents (max_eval_samples, "
        "now all)"]


def test_an_evaluation_small_beside_training_is_not_warned_about(tmp_path, text_files, caplog):
    argv = recipe_args(text_files, tmp_path / "run", "--max_steps", "2", "--eval_steps", "2", "--eval_on_start",
                       "true", "--max_eval_samples", "1")
    with caplog.at_level("WARNING", logger="hf_clm"):
        assert main(["train", *argv]) == 0
    assert not [r for r in caplog.records if " tokens, about " in r.getMessage()]


def test_a_resumed_run_logs_to_the_tensorboard_folder_of_the_run_it_resumes(tmp_path, text_files, caplog,
                                                                             monkeypatch):
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    first = recipe_args(text_files, tmp_path / "run", "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2",
                        "--logging_steps", "1", "--report_to", "tensorboard")
    assert main(["train", *first]) == 0
    (folder,) = (tmp_path / "run" / "runs").iterdir()
    with caplog.at_level("INFO", logger="hf_clm"):
        assert main(["train", *first, "--max_steps", "4", "--resume_from_checkpoint", "auto"]) == 0
    assert list((tmp_path / "run" / "runs").iterdir()) == [folder]  # no second folder, a second event file
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    said = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Logging to tensorboard"))
    assert f"event files in {folder} " in said


def test_the_tensorboard_command_is_suggested_only_where_it_is_installed(monkeypatch):
    import importlib.util

    from hf_clm.training import trackers

    real = importlib.util.find_spec
    for installed, expected in ((False, "to view them: pip install tensorboard, then tensorboard --logdir runs/x"),
                                (True, "tensorboard --logdir runs/x")):
        monkeypatch.setattr(trackers.importlib.util, "find_spec",
                            lambda name, real=real, installed=installed: (object() if installed else None)
                            if name == "tensorboard" else real(name))
        assert trackers.tensorboard_viewer("runs/x") == expected
