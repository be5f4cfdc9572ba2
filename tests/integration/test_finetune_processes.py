"""Fine-tuning pretrained models: the base vocabulary kept, small LoRA adapters, before/after figures,
one tokenization convention end to end, other model families, and the bad inputs of this path."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, requires_shared_data, run_hf_clm, write_corpus
from safetensors import safe_open
from support.finetune import GPT2_VOCAB, embedding_rows, finetune_args, lora_args, perplexity_of
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from hf_clm.commands.cli import main


@pytest.fixture(scope="module")
def gpt2_runs(tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public test data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("gpt2-shaped")
    base = root / "base"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=GPT2_VOCAB, n_positions=64, n_embd=32, n_layer=2,
                                                n_head=2)).save_pretrained(base)
    AutoTokenizer.from_pretrained(SHARED_DATA / "tiny-gpt2").save_pretrained(base)
    corpus = write_corpus(root / "corpus")
    assert main(finetune_args(corpus, base, root / "full")) == 0
    assert main(finetune_args(corpus, base, root / "lora", *lora_args("c_attn", "c_proj", "c_fc"),
                              "--merge_adapter", "true")) == 0
    return root, base, corpus


def fake_bitsandbytes(root: Path) -> dict[str, str]:
    """An importable (empty) bitsandbytes, so that the missing-GPU check is the one that speaks."""
    (root / "fake" / "bitsandbytes").mkdir(parents=True)
    (root / "fake" / "bitsandbytes" / "__init__.py").write_text("")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "fake"), os.environ.get("PYTHONPATH", "")])}


@requires_shared_data
def test_full_fine_tune_keeps_the_base_vocabulary_and_tokenizer(gpt2_runs):
    root, base, _ = gpt2_runs
    run = root / "full"
    assert embedding_rows(run / "model.safetensors") == embedding_rows(base / "model.safetensors") == GPT2_VOCAB
    saved, original = AutoTokenizer.from_pretrained(run), AutoTokenizer.from_pretrained(base)
    assert saved.get_vocab() == original.get_vocab() and len(saved) == GPT2_VOCAB
    assert saved.pad_token is None and saved.eos_token == original.eos_token
    assert AutoModelForCausalLM.from_pretrained(run).config.vocab_size == GPT2_VOCAB


@requires_shared_data
def test_lora_adapter_holds_the_lora_matrices_only(gpt2_runs):
    root, _, _ = gpt2_runs
    run = root / "lora"
    summary = json.loads((run / "perplexity.json").read_text())
    adapter = run / "adapter_model.safetensors"
    with safe_open(str(adapter), "pt") as f:
        names = list(f.keys())
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    expected = 4 * summary["trainable_parameters"]  # fp32
    assert abs(adapter.stat().st_size - expected) <= 0.1 * expected, (adapter.stat().st_size, expected)


@requires_shared_data
def test_merged_model_keeps_the_base_vocabulary_and_loads_without_peft(gpt2_runs, capsys):
    root, _, corpus = gpt2_runs
    merged = root / "lora" / "merged"
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert type(model).__name__ == "GPT2LMHeadModel" and model.get_input_embeddings().num_embeddings == GPT2_VOCAB
    assert len(AutoTokenizer.from_pretrained(merged)) == GPT2_VOCAB
    adapted = perplexity_of(root / "lora", corpus["validation"], capsys)["perplexity"]
    assert perplexity_of(merged, corpus["validation"], capsys)["perplexity"] == pytest.approx(adapted, rel=1e-4)


@requires_shared_data
def test_before_after_in_summary_report_curves_and_card(gpt2_runs):
    from hf_clm.hub.card import model_card
    from hf_clm.hub.publish import PublishOptions, publication

    root, _, _ = gpt2_runs
    for name in ("full", "lora"):
        run = root / name
        summary = json.loads((run / "perplexity.json").read_text())
        base = summary["base"]
        assert set(base) >= {"perplexity", "bits_per_byte", "loss", "tokens"}
        assert base["tokens"] == summary["tokens"]
        assert summary["perplexity"] < base["perplexity"], (name, base, summary)
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        first_eval = next(e for e in history if "eval_loss" in e)
        assert first_eval["step"] == 0 and first_eval["eval_perplexity"] == pytest.approx(base["perplexity"])
        report = (run / "report.md").read_text()
        assert f"{base['perplexity']:.2f} → {summary['perplexity']:.2f}" in report
        assert f"{base['bits_per_byte']:.4f} → {summary['bits_per_byte']:.4f}" in report
        card = str(model_card(publication(run, PublishOptions(base_model="someone/base", license="mit")),
                              "someone/" + name))
        assert "| figure | base model → fine-tuned |" in card
        assert f"Perplexity {base['perplexity']:.1f} → {summary['perplexity']:.1f}" in card
    assert (root / "full" / "curves_by_steps.png").is_file()


@pytest.mark.full  # a real process: the fake bitsandbytes is imported from its PYTHONPATH
@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a CUDA GPU")
def test_load_in_4bit_on_cpu_is_a_one_line_error(llama_runs, tmp_path):
    root, base, corpus = llama_runs
    result = run_hf_clm(*finetune_args(corpus, base, tmp_path / "run", *lora_args("q_proj"), "--load_in_4bit", "true"),
                        env=fake_bitsandbytes(tmp_path), timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "hf-clm: error: load_in_4bit needs a CUDA GPU and this machine has none; drop load_in_4bit to train "
        "LoRA on the full-precision model")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
