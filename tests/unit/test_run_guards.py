"""Recipes and output folders that cannot make a sensible run: one error line, exit 2, nothing written."""

import json
import sys

import pytest
from conftest import recipe_args

from hf_clm.commands.cli import main


def error_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert err.startswith("hf-clm: error: ")
    return err

# Training switches that cannot make the run they name: (flags, what the error line says).
BAD_SWITCHES = [
    (["--attention_scope", "document", "--attn_implementation", "flash_attention_2"],
     "attention_scope: document cannot be honoured by attn_implementation flash_attention_2"),
    (["--attention_scope", "document", "--use_cache", "true"], "attention_scope: document needs use_cache: false"),
    (["--attention_scope", "sentence"], "attention_scope must be one of block, document"),
    (["--optim", "muon", "--muon_learning_rate", "0"], "muon_learning_rate must be a number > 0"),
    (["--optim", "muon", "--fsdp", "full_shard"], "optim: muon needs whole weight matrices: not with fsdp"),
    (["--max_tokens", "5000"], "set max_tokens or max_steps, not both"),
    (["--max_steps", "-1", "--max_tokens", "0"], "max_tokens must be an integer >= 1"),
    (["--lr_scheduler_type", "warmup_stable_decay"], "warmup_stable_decay needs lr_scheduler_kwargs with decay_ratio"),
    (["--max_steps", "-1", "--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs",
      '{"decay_ratio": 0.2}'], "decay_ratio needs max_steps, max_tokens or max_train_seconds"),
]


def test_zero_optimizer_steps_is_an_error(text_files, tmp_path, capsys):
    err = error_of(capsys, "train", *recipe_args(text_files, tmp_path / "run", "--per_device_train_batch_size",
                                                 "64", "--gradient_accumulation_steps", "8"))
    assert "fewer than one optimizer step takes" in err and "64 per_device_train_batch_size x 8" in err
    assert not (tmp_path / "run" / "recipe.yaml").exists()


def test_streaming_without_max_steps_is_an_error(text_files, tmp_path, capsys):
    err = error_of(capsys, "train", *recipe_args(text_files, tmp_path / "run", "--streaming", "true",
                                                 "--max_steps", "-1"))
    assert "streaming: true needs max_steps" in err


def test_resume_from_a_missing_checkpoint_is_an_error(text_files, tmp_path, capsys):
    err = error_of(capsys, "train", *recipe_args(text_files, tmp_path / "run", "--resume_from_checkpoint",
                                                 str(tmp_path / "checkpoint-7")))
    assert "checkpoint-7 does not exist" in err


def test_a_finished_run_is_not_overwritten_unless_asked(text_files, tmp_path, capsys):
    argv = ["train", *recipe_args(text_files, tmp_path / "run", "--max_steps", "4", "--eval_steps", "4",
                                  "--save_steps", "2")]
    assert main(argv) == 0
    capsys.readouterr()
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    err = error_of(capsys, *argv)
    assert "holds a finished run" in err and "overwrite_output_dir: true" in err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before

    (tmp_path / "run" / "perplexity.json").unlink()  # a crashed run: checkpoints, no result
    err = error_of(capsys, *argv)
    assert "holds checkpoints (checkpoint-4)" in err and "resume_from_checkpoint: auto" in err

    assert main([*argv, "--overwrite_output_dir", "true", "--max_steps", "3", "--save_steps", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3"]
    assert json.loads((tmp_path / "run" / "perplexity.json").read_text())["train_tokens_seen"] == 3 * 8 * 32


def test_throughput_is_logged_and_saved(text_files, tmp_path, capsys):
    assert main(["train", *recipe_args(text_files, tmp_path / "run", "--max_steps", "10", "--eval_steps", "5",
                                       "--peak_tflops", "0.5")]) == 0
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    train_logs = [e for e in history if "loss" in e]
    assert len(train_logs) == 2 and all(e["interval_tokens_per_second"] > 0 for e in train_logs)
    for entry in train_logs:  # MFU = tokens/s x FLOPs per token / (0.5 TFLOP/s x 1 process)
        assert 0 < entry["interval_mfu"] < 1
    # one figure under the name: Trainer's own session rate (evaluation included) is not logged
    assert not any("train_tokens_per_second" in e for e in history)
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["train_tokens_per_second"] == pytest.approx(summary["train_tokens_seen"] / summary["train_seconds"])
    assert 0 < summary["mfu"] < 1
    report = json.loads((tmp_path / "run" / "report.json").read_text())["runs"][0]
    assert report["train_tokens_per_second"] == summary["train_tokens_per_second"]
    assert report["train_seconds"] == summary["train_seconds"]
    assert f"{summary['train_tokens_per_second']:,.0f} tokens/s, MFU" in capsys.readouterr().out


def test_flops_per_token_counts_six_per_weight_and_attention():
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_clm.training.throughput import flops_per_token

    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    weights = model.num_parameters() - 16 * 32  # position embeddings are a lookup
    assert flops_per_token(model, 16) == 6 * weights + 12 * 2 * 32 * 16


@pytest.mark.parametrize("flags,message", BAD_SWITCHES, ids=[m.split(" ")[0] + "-" + str(i)
                                                             for i, (_, m) in enumerate(BAD_SWITCHES)])


def test_a_training_switch_that_cannot_work_is_one_error_line(flags, message, text_files, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setattr("hf_clm.recipe.checks.installed", lambda package: True)  # as where flash-attn is
    err = error_of(capsys, "train", *recipe_args(text_files, tmp_path / "run", *flags))
    assert message in err
    assert not (tmp_path / "run").exists()


def test_muon_on_a_pretrained_model_without_hidden_matrices_is_an_error(text_files, bpe_tokenizer, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    checkpoint = tmp_path / "embeddings-only"
    GPT2LMHeadModel(GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=32, n_layer=0, n_embd=16)
                    ).save_pretrained(checkpoint)
    bpe_tokenizer.save_pretrained(checkpoint)
    err = error_of(capsys, "train", *recipe_args(text_files, tmp_path / "run", "--train_tokenizer", "false",
                                                 "--model_name_or_path", str(checkpoint), "--optim", "muon"))
    assert "optim: muon trains 2-D hidden weight matrices and GPT2LMHeadModel has no trainable one" in err
    assert not (tmp_path / "run" / "recipe.yaml").exists()


@pytest.mark.parametrize("argv", [
    ["train", "--hub_token=hf_SECRETvalue123", "recipe.yaml"],
    ["train", "recipe.yaml", "--hub-token", "hf_SECRETvalue123", "--max_steps", "3"],
    ["train", "--HUB_TOKEN", "hf_SECRETvalue123"],
    ["prepare", "--my-token=hf_SECRETvalue123", "--output_dir", "x"],
])


def test_the_lock_records_the_command_with_secret_values_masked(tmp_path, monkeypatch, argv):
    from hf_clm.run.locks import folder_lock

    monkeypatch.setattr(sys, "argv", ["hf-clm", *argv])
    with folder_lock(tmp_path / "run", "output_dir") as lock:
        command = json.loads(lock.read_text())["command"]
    assert "hf_SECRETvalue123" not in command and "***" in command
    assert command.startswith(f"hf-clm {argv[0]}") and command.count(" ") == len(argv)  # every argument kept


def test_a_tied_head_is_no_missing_key_when_a_checkpoint_loads(tmp_path, monkeypatch, bpe_tokenizer):
    """Resumes under a launcher reported GPT-2's tied lm_head.weight as a missing key (alarming, harmless)."""
    from torch.nn.modules.module import _IncompatibleKeys
    from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

    from hf_clm.training.trainer import CausalLMTrainer, tied_parameter_names

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    assert tied_parameter_names(model) == {"transformer.wte.weight", "lm_head.weight"}
    trainer = CausalLMTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]),
                              processing_class=bpe_tokenizer, flops_per_token=1.0, peak_flops=None)
    warned = []
    monkeypatch.setattr("transformers.trainer.logger.warning", lambda message, *args: warned.append(message))
    trainer._issue_warnings_after_load(_IncompatibleKeys(["lm_head.weight"], []))
    assert warned == []
    trainer._issue_warnings_after_load(_IncompatibleKeys(["transformer.h.0.attn.c_attn.weight"], []))
    assert len(warned) == 1 and "c_attn" in warned[0]  # a real missing key is still reported
