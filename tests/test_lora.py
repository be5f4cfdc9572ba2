"""LoRA through peft: a base model trained here on corpus A, adapted to corpus B."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, recipe_args, requires_shared_data, write_corpus
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from hf_clm.commands.cli import main
from hf_clm.errors import HfClmError


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


@pytest.mark.full
def test_lora_lowers_perplexity_on_the_new_corpus(base_and_adapter, capsys):
    root, corpus_b = base_and_adapter
    before = perplexity_of(root / "base", corpus_b["validation"], capsys)
    after = perplexity_of(root / "adapted", corpus_b["validation"], capsys)
    assert after < 0.8 * before, (before, after)
    summary = json.loads((root / "adapted" / "perplexity.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["parameters"] / 5


@pytest.mark.full
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


@pytest.mark.full
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


def test_peft_without_a_pretrained_model_is_an_error(tmp_path, text_files, capsys):
    assert main(["train", *recipe_args(text_files, tmp_path / "run"), "--peft_method", "lora"]) == 2
    assert "peft fine-tunes a pretrained model: set model_name_or_path" in capsys.readouterr().err


@pytest.mark.full
def test_target_modules_matching_no_layer_list_the_layers(base_and_adapter, tmp_path, capsys):
    root, corpus_b = base_and_adapter
    code = main(["train", *recipe_args(corpus_b, tmp_path / "run"), *lora_flags(root / "base"),
                 "--lora_target_modules", "q_proj", "v_proj"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "lora target_modules q_proj, v_proj match no layer of GPT2LMHeadModel" in err
    assert "c_attn, c_fc, c_proj" in err


def test_peft_section_in_yaml(tmp_path):
    from hf_clm.recipe.parser import parse_recipe

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("model_name_or_path: some/model\nbuiltin_corpus: python-stdlib\n"
                           "peft: {method: lora, r: 4, lora_alpha: 8, target_modules: [c_attn, c_proj]}\n")
    model = parse_recipe([str(recipe_file)]).model_args
    assert (model.peft_method, model.lora_r, model.lora_alpha, model.lora_target_modules) == \
        ("lora", 4, 8, ["c_attn", "c_proj"])


@pytest.mark.full
@requires_shared_data
def test_ci_sized_lora_recipe_on_tiny_gpt2(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's paths are relative to the repository root
    assert main(["train", str(REPO / "recipes" / "lora-tiny-gpt2.yaml"), "--output_dir", str(tmp_path / "run"),
                 "--max_steps", "4", "--eval_steps", "4"]) == 0
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert summary["trainable_parameters"] < summary["parameters"]
    assert (tmp_path / "run" / "merged" / "model.safetensors").is_file()


@pytest.fixture
def tiny_lora_run(tmp_path, bpe_tokenizer):
    """An (untrained) LoRA adapter with its tokenizer on a one-layer GPT-2: a LoRA run to merge, in a second."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config

    base = tmp_path / "base"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=32, n_layer=1, n_head=2,
                                                n_embd=16)).save_pretrained(base)
    bpe_tokenizer.save_pretrained(base)
    adapter = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                             LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    for name, parameter in adapter.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # a merge that changes the weights
    run = tmp_path / "run"
    adapter.save_pretrained(run)
    bpe_tokenizer.save_pretrained(run)
    return run


def test_a_failed_merge_leaves_no_merged_folder(tiny_lora_run, monkeypatch, capsys):
    import hf_clm.model.merge

    def fail(*_):
        raise HfClmError("no space left writing tokenizer.json")

    monkeypatch.setattr(hf_clm.model.merge, "read_tokenizer", fail)  # after the weights are written
    assert main(["merge", str(tiny_lora_run)]) == 2
    assert sorted(p.name for p in tiny_lora_run.iterdir() if p.name.startswith((".", "merged"))) == []


def killed_merge(run: Path) -> None:
    """``hf-clm merge run``, SIGKILLed once the merged weights are written, before the tokenizer and the rename."""
    code = ("import os, signal, sys, hf_clm.model.merge; "
            "hf_clm.model.merge.read_tokenizer = lambda *_: os.kill(os.getpid(), signal.SIGKILL); "
            "from hf_clm.commands.cli import main; main(['merge', sys.argv[1]])")
    result = subprocess.run([sys.executable, "-c", code, str(run)], check=False, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_a_killed_merge_leaves_no_model_or_the_previous_one_and_the_next_merge_tidies_up(tiny_lora_run, capsys):
    merged = tiny_lora_run / "merged"
    killed_merge(tiny_lora_run)
    assert not merged.exists()
    assert [p.name for p in tiny_lora_run.glob(".merged.*.tmp")]  # the killed merge's staging folder, hidden
    assert main(["merge", str(tiny_lora_run)]) == 0
    assert not list(tiny_lora_run.glob(".merged.*"))
    killed_merge(tiny_lora_run)
    assert sorted(p.name for p in merged.iterdir()) == ["config.json", "generation_config.json", "merged_from.json",
                                                        "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    text = tiny_lora_run.parent / "text.txt"
    text.write_text("the cat sat on the mat\n")
    assert main(["perplexity", str(merged), "--data", str(text), "--json"]) == 0
    assert main(["merge", str(tiny_lora_run)]) == 0
    assert not list(tiny_lora_run.glob(".merged.*"))


def test_merge_refuses_the_run_directory_and_a_file_before_loading(tiny_lora_run, tmp_path, capsys):
    adapter_weights = (tiny_lora_run / "adapter_model.safetensors").read_bytes()
    note = tmp_path / "note.txt"
    note.write_text("keep me\n")
    for output, expected in ((tiny_lora_run, "is the run directory itself"), (note, "is a file, not a folder"),
                             (tmp_path / "base", "already holds files")):
        assert main(["merge", str(tiny_lora_run), "--output", str(output)]) == 2
        assert expected in capsys.readouterr().err.strip().splitlines()[-1]
    assert note.read_text() == "keep me\n"
    assert (tiny_lora_run / "adapter_model.safetensors").read_bytes() == adapter_weights
    assert not (tiny_lora_run / "model.safetensors").exists()
