"""LoRA through peft: a base model trained here on corpus A, adapted to corpus B."""

import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, recipe_args, requires_shared_data, write_corpus
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_clm.commands.cli import main


def perplexity_of(model_dir: Path, data: Path, capsys) -> float:
    capsys.readouterr()
    assert main(["perplexity", str(model_dir), "--data", str(data), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["perplexity"]


def lora_flags(base_dir: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(base_dir), "--train_tokenizer", "false", "--peft_method", "lora",
            "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0", *extra]


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("lora")
    corpus_a, corpus_b = write_corpus(root / "a", step=7), write_corpus(root / "b", step=5)
    assert main(["train", *recipe_args(corpus_a, root / "base", "--max_steps", "40", "--eval_steps", "40")]) == 0
    assert main(["train", *recipe_args(corpus_b, root / "adapted", "--max_steps", "40", "--eval_steps", "40"),
                 *lora_flags(root / "base", "--lora_target_modules", "c_attn", "c_fc", "--merge_adapter", "true")]) == 0
    return root, corpus_b


def test_lora_lowers_perplexity_on_the_new_corpus(base_and_adapter, capsys):
    root, corpus_b = base_and_adapter
    before = perplexity_of(root / "base", corpus_b["validation"], capsys)
    after = perplexity_of(root / "adapted", corpus_b["validation"], capsys)
    assert after < 0.8 * before, (before, after)
    summary = json.loads((root / "adapted" / "perplexity.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["parameters"] / 5


def test_only_adapter_weights_change_and_are_saved_small(base_and_adapter):
    from peft import AutoPeftModelForCausalLM

    root, _ = base_and_adapter
    assert not (root / "adapted" / "model.safetensors").exists()
    adapter = root / "adapted" / "adapter_model.safetensors"
    assert adapter.stat().st_size < (root / "base" / "model.safetensors").stat().st_size / 5
    assert all("lora_" in name for name in load_file(adapter))
    base = load_file(root / "base" / "model.safetensors")
    tuned = AutoPeftModelForCausalLM.from_pretrained(root / "adapted").get_base_model().state_dict()
    for name, tensor in base.items():
        key = name if name in tuned else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(tuned[key], tensor), name


def test_merged_model_loads_without_peft_and_scores_like_base_plus_adapter(base_and_adapter, capsys):
    root, corpus_b = base_and_adapter
    merged = root / "adapted" / "merged"
    assert not (merged / "adapter_config.json").exists()
    assert type(AutoModelForCausalLM.from_pretrained(merged)).__name__ == "GPT2LMHeadModel"
    adapted = perplexity_of(root / "adapted", corpus_b["validation"], capsys)
    assert perplexity_of(merged, corpus_b["validation"], capsys) == pytest.approx(adapted, rel=1e-4)
    # the merge command gives the same model as merge_adapter: true
    assert main(["merge", str(root / "adapted"), "--output", str(root / "merged-again")]) == 0
    assert perplexity_of(root / "merged-again", corpus_b["validation"], capsys) == pytest.approx(adapted, rel=1e-4)


def test_target_modules_matching_no_layer_list_the_layers(base_and_adapter, tmp_path, capsys):
    root, corpus_b = base_and_adapter
    code = main(["train", *recipe_args(corpus_b, tmp_path / "run"), *lora_flags(root / "base"),
                 "--lora_target_modules", "q_proj", "v_proj"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lora target_modules q_proj, v_proj match no layer of GPT2LMHeadModel" in err
    assert "c_attn, c_fc, c_proj" in err


@requires_shared_data
def test_ci_sized_lora_recipe_on_tiny_gpt2(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's paths are relative to the repository root
    assert main(["train", str(REPO / "recipes" / "lora-tiny-gpt2.yaml"), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "4", "--eval_steps", "4"]) == 0
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["trainable_parameters"] < summary["parameters"]
    assert (tmp_path / "run" / "merged" / "model.safetensors").is_file()
