"""``hf-clm train RECIPE --rehearse K``: K steps of the recipe's shapes, a checkpoint, a real resume, one
short evaluation and the measured figures beside the plan's, in OUTPUT_DIR-rehearsal; nothing finished."""

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, SHARED_DATA, recipe_args, requires_shared_data, run_hf_clm, write_corpus

from hf_clm.planning import rehearsal
from hf_clm.planning.rehearsal_values import rehearsal_values
from hf_clm.recipe.parser import parse_recipe

FLAGSHIP = REPO / "recipes" / "gpt2-124m-fineweb.yaml"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the settings a machine without CUDA cannot use")


def small_recipe(tmp_path, **changes) -> Path:
    """The tests' seconds-long run as a recipe file (its max_steps is the real run's, 30)."""
    files = write_corpus(tmp_path / "corpus")
    flags = recipe_args(files, tmp_path / "out")
    values = {flag[2:]: value for flag, value in zip(flags[::2], flags[1::2])}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({**values, **changes}), encoding="utf-8")
    return path


@pytest.mark.full
def test_rehearsal_measures_beside_the_plan_resumes_and_finishes_nothing(tmp_path):
    recipe = small_recipe(tmp_path, push_to_hub=True, license="mit", hub_model_id="tester/x")
    result = run_hf_clm("train", recipe, "--rehearse", "2", "--peak_tflops", "0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rehearsal: push_to_hub left for the real run" in result.stderr
    table = result.stdout[result.stdout.index("rehearsal on cpu" if not torch.cuda.is_available() else "rehearsal on"):]
    assert re.search(r"^\s+measured\s+plan$", table, re.MULTILINE), table
    assert re.search(r"^step time\s+\d+\.\d\d s\s+\d[\d.]* (ms|s) at 40% MFU$", table, re.MULTILINE), table
    assert re.search(r"^peak memory\s+[\d.,]+ (KiB|MiB|GiB)\s+[\d.,]+ (KiB|MiB|GiB)$", table, re.MULTILINE), table
    assert "checkpoint-2 written (global_step 2) and resumed from to step 3" in table

    folder = tmp_path / "out-rehearsal"
    assert json.loads((folder / "checkpoint-2" / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == 3  # the resumed Trainer's
    saved = torch.load(folder / "checkpoint-2" / "optimizer.pt", weights_only=False)
    rates = [group["lr"] for group in saved["param_groups"]]
    assert rates and all(rate > 0 for rate in rates)  # the resumed step trains, at the recipe's rate
    figures = json.loads((folder / "rehearsal.json").read_text())
    assert figures["finished"] is False and figures["resumed_to_step"] == 3 and len(figures["step_seconds"]) == 2
    assert figures["plan_step_seconds"] > 0 and figures["peak_memory_bytes"] > figures["measured_training_memory_bytes"]
    assert figures["eval_blocks"] == 2 * 8  # two evaluation batches (per_device_eval_batch_size 8)
    assert not (folder / "perplexity.json").exists() and not (folder / "model.safetensors").exists()
    assert not (tmp_path / "out").exists()  # the real run's output_dir is left alone


@pytest.mark.full
def test_a_rehearsal_replaces_the_last_one_and_nothing_else(tmp_path, hf_clm_main):
    recipe = small_recipe(tmp_path)
    folder = tmp_path / "out-rehearsal"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    refused = hf_clm_main("train", recipe, "--rehearse", "1")
    assert refused.returncode == 2 and "holds files a rehearsal did not write (mine.txt)" in refused.stderr
    (folder / "mine.txt").unlink()
    for steps in (2, 1):
        assert hf_clm_main("train", recipe, "--rehearse", str(steps)).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-1", "rehearsal.json", "trainer_state.json"]


@no_cuda
@requires_shared_data
def test_the_flagship_rehearses_on_local_text_without_what_this_machine_cannot_use(monkeypatch, caplog):
    import hf_clm.planning.rehearsal_values as values_module

    monkeypatch.setattr(values_module, "c_compiler", lambda: None)
    monkeypatch.setattr(values_module, "cpu_has_fast", lambda dtype: False)
    monkeypatch.setattr(values_module, "torch_version", lambda: (2, 3))
    local = ["--train_files", str(SHARED_DATA / "tinyshakespeare" / "input.txt"), "--validation_files",
             str(SHARED_DATA / "wikitext-2" / "valid.txt"), "--tokenizer_name_or_path", str(SHARED_DATA / "tiny-gpt2")]
    with caplog.at_level(logging.WARNING, logger="hf_clm.planning.rehearsal_values"):
        recipe = parse_recipe([str(FLAGSHIP), "--rehearse", "2", *local, "--tf32", "true", "--dataloader_pin_memory",
                               "true", "--attn_implementation", "flash_attention_2", "--report_to", "wandb"],
                              rehearsal=rehearsal_values)
    args, model, data = recipe.training_args, recipe.model_args, recipe.data_args
    assert args.output_dir.endswith("runs/gpt2-124m-fineweb-rehearsal") and args.max_steps == 2
    assert (args.tf32, args.bf16, args.torch_compile, args.dataloader_pin_memory) == (False, False, False, False)
    assert str(args.optim.value) == "adamw_torch" and model.attn_implementation == "sdpa"
    assert (args.save_steps, args.resume_from_checkpoint, args.push_to_hub) == (2, None, False)
    assert data.streaming and data.shuffle_buffer_size == 3 * 64  # the blocks the rehearsal trains, not 10,000
    notices = [r.getMessage() for r in caplog.records]
    assert "rehearsal: report_to wandb left for the real run" in notices
    for setting in ("tf32 (CUDA only)", "bf16 (this CPU has no bf16 matrix instructions; training in fp32)",
                    "optim adamw_torch_fused", "torch_compile (no C compiler", "attn_implementation flash_attention_2",
                    "dataloader_pin_memory"):
        assert any(n.startswith(f"rehearsal on cpu: ignoring {setting}") for n in notices), (setting, notices)


def test_a_too_large_batch_is_lowered_to_the_largest_the_plan_fits(tmp_path, caplog):
    from hf_clm.planning.launch import Device

    recipe = parse_recipe([str(small_recipe(tmp_path)), "--rehearse", "2", "--per_device_eval_batch_size", "16"],
                          rehearsal=rehearsal_values)
    plan, _ = rehearsal.rehearsal_plan(recipe, Device("cpu", 10**12, None))
    small = Device("small cpu", int(plan["memory_per_device"]["total"] / 0.9 * 0.6), None)
    with caplog.at_level(logging.WARNING, logger="hf_clm.planning.rehearsal"):
        fitted = rehearsal.fitted_plan(recipe, small)
    batch = recipe.training_args.per_device_train_batch_size
    assert 1 <= batch < 8 and fitted["per_device_train_batch_size"] == batch and fitted["fits"]
    assert recipe.training_args.per_device_eval_batch_size == batch
    assert "per_device_train_batch_size 8 at" in caplog.text and f"rehearsing with {batch}" in caplog.text
