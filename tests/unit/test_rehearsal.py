"""``hf-clm train RECIPE --rehearse K``: K steps of the recipe's shapes, a checkpoint, a real resume, one
short evaluation and the measured figures beside the plan's, in OUTPUT_DIR-rehearsal; nothing finished."""

import logging

import pytest
import torch
from conftest import REPO, SHARED_DATA, requires_shared_data
from support.rehearsal import small_recipe

from hf_clm.planning import rehearsal
from hf_clm.planning.rehearsal_values import rehearsal_values
from hf_clm.recipe.parser import parse_recipe

FLAGSHIP = REPO / "recipes" / "gpt2-124m-fineweb.yaml"

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the settings a machine without CUDA cannot use")


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
