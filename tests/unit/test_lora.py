"""LoRA through peft: a base model trained here on corpus A, adapted to corpus B."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import recipe_args
from transformers import AutoModelForCausalLM

from hf_clm.commands.cli import main
from hf_clm.errors import HfClmError


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


def killed_merge(run: Path) -> None:
    """``hf-clm merge run``, SIGKILLed once the merged weights are written, before the tokenizer and the rename."""
    code = ("import os, signal, sys, hf_clm.model.merge; "
            "hf_clm.model.merge.read_tokenizer = lambda *_: os.kill(os.getpid(), signal.SIGKILL); "
            "from hf_clm.commands.cli import main; main(['merge', sys.argv[1]])")
    result = subprocess.run([sys.executable, "-c", code, str(run)], check=False, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def test_peft_without_a_pretrained_model_is_an_error(tmp_path, text_files, capsys):
    assert main(["train", *recipe_args(text_files, tmp_path / "run"), "--peft_method", "lora"]) == 2
    assert "peft fine-tunes a pretrained model: set model_name_or_path" in capsys.readouterr().err


def test_peft_section_in_yaml(tmp_path):
    from hf_clm.recipe.parser import parse_recipe

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("model_name_or_path: some/model\nbuiltin_corpus: python-stdlib\n"
                           "peft: {method: lora, r: 4, lora_alpha: 8, target_modules: [c_attn, c_proj]}\n")
    model = parse_recipe([str(recipe_file)]).model_args
    assert (model.peft_method, model.lora_r, model.lora_alpha, model.lora_target_modules) == \
        ("lora", 4, 8, ["c_attn", "c_proj"])


def test_a_failed_merge_leaves_no_merged_folder(tiny_lora_run, monkeypatch, capsys):
    import hf_clm.model.merge

    def fail(*_):
        raise HfClmError("no space left writing tokenizer.json")

    monkeypatch.setattr(hf_clm.model.merge, "read_tokenizer", fail)  # after the weights are written
    assert main(["merge", str(tiny_lora_run)]) == 2
    assert sorted(p.name for p in tiny_lora_run.iterdir() if p.name.startswith((".", "merged"))) == []


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
