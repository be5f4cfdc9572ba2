"""Fine-tuning pretrained models: the base vocabulary kept, small LoRA adapters, before/after figures,
one tokenization convention end to end, other model families, and the bad inputs of this path."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, recipe_args, requires_shared_data
from safetensors import safe_open
from support.finetune import GPT2_VOCAB, bos_tokenizer, embedding_rows, finetune_args, lora_args, perplexity_of
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_clm.commands.cli import main
from hf_clm.data.blocks import DocumentTokenizer
from hf_clm.data.collator import causal_lm_collator
from hf_clm.data.tokenizer import document_prefix, encode_document
from hf_clm.evaluation.explain import explain


def no_eos_tokenizer_dir(root: Path) -> Path:
    path = root / "no-eos"
    tokenizer = bos_tokenizer()
    tokenizer.eos_token = None
    tokenizer.save_pretrained(path)
    return path

BAD_INPUTS = [
    ("tokenizer without EOS", lambda root, base: ["--tokenizer_name_or_path", str(no_eos_tokenizer_dir(root))],
     "has no EOS token to mark where documents end; set tokenizer_name_or_path to one that has"),
    ("LoRA target naming no layer", lambda root, base: lora_args("c_attn", "q_proj"),
     "lora target_modules c_attn match no layer of LlamaForCausalLM; its adaptable layers are: down_proj, "
     "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    ("modules_to_save naming nothing", lambda root, base: [*lora_args("q_proj"), "--lora_modules_to_save", "head"],
     "lora modules_to_save head match no module of LlamaForCausalLM; its modules are:"),
    ("load_in_4bit without peft", lambda root, base: ["--load_in_4bit", "true"],
     "load_in_4bit trains LoRA adapters on a 4-bit base (QLoRA): add peft: {method: lora}"),
    ("load_in_4bit without bitsandbytes", lambda root, base: [*lora_args("q_proj"), "--load_in_4bit", "true"],
     "load_in_4bit needs bitsandbytes, which is not installed: pip install 'hf-clm[qlora]'"),
    ("bnb_4bit_quant_type unknown", lambda root, base: [*lora_args("q_proj"), "--bnb_4bit_quant_type", "int4"],
     "bnb_4bit_quant_type must be one of nf4, fp4, not 'int4'"),
]


@requires_shared_data
def test_gpt2_tokenizer_keeps_its_vocabulary_eos_labels_supervised_padding_ignored():
    tokenizer = AutoTokenizer.from_pretrained(SHARED_DATA / "tiny-gpt2")
    assert tokenizer.pad_token is None and len(tokenizer) == GPT2_VOCAB
    ids, offsets = DocumentTokenizer(tokenizer).ids_and_offsets(["the cat sat.", "on the mat."])
    first, second = ids[offsets[0]:offsets[1]].tolist(), ids[offsets[1]:offsets[2]].tolist()
    assert first[-1] == second[-1] == tokenizer.eos_token_id  # GPT-2 adds no BOS; EOS closes each document
    batch = causal_lm_collator(tokenizer)([{"input_ids": first + second}, {"input_ids": second}])
    assert len(tokenizer) == GPT2_VOCAB and tokenizer.pad_token is None  # the run's tokenizer is untouched
    labels, ids_ = batch["labels"], batch["input_ids"]
    eos = (ids_ == tokenizer.eos_token_id) & (batch["attention_mask"] == 1)
    assert eos.sum() == 3 and (labels[eos] == tokenizer.eos_token_id).all()  # EOS stays a target
    padding = batch["attention_mask"] == 0
    assert padding.sum() == len(first) and (labels[padding] == -100).all()  # padding never is
    assert (labels[~padding] == ids_[~padding]).all()


def test_from_scratch_run_has_no_base_figures(tmp_path, text_files):
    assert main(["train", *recipe_args(text_files, tmp_path / "run", "--max_steps", "4", "--eval_steps", "4")]) == 0
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert "base" not in summary
    assert AutoTokenizer.from_pretrained(tmp_path / "run").pad_token == "<|pad|>"  # the trained BPE's own pad
    assert "→" not in (tmp_path / "run" / "report.md").read_text()


def test_bos_tokenizer_gets_the_same_bos_at_training_and_inference(llama_runs, capsys):
    root, base, corpus = llama_runs
    tokenizer = AutoTokenizer.from_pretrained(base)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert document_prefix(tokenizer) == [bos]
    plain = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    assert encode_document(tokenizer, "the cat sat") == [bos, *plain]
    # training blocks: every document is <s> ... </s>
    ids, offsets = DocumentTokenizer(tokenizer).ids_and_offsets(["the cat sat", "", "on the mat"])
    assert ids[offsets[0]:offsets[1]].tolist() == [bos, *plain, eos]
    assert offsets[1] == offsets[2]  # an empty document adds nothing
    assert ids[offsets[2]:offsets[3]].tolist()[0] == bos
    # explain scores the text after the same <s>
    model = AutoModelForCausalLM.from_pretrained(root / "full").eval()
    explanation = explain(model, tokenizer, "the cat sat")
    assert explanation.tokens[0] == "<s>" and len(explanation.positions) == len(plain)
    with torch.no_grad():
        reference = torch.tensor([[bos, *plain]])
        assert explanation.mean_loss == pytest.approx(model(input_ids=reference, labels=reference).loss.item(),
                                                      rel=1e-5)
    # perplexity scores a document as training saw it: <s> text </s>
    text = "the cat sat on a mat while dogs ran past."
    single = root / "one.txt"
    single.write_text(text)
    stream = torch.tensor([[bos, *tokenizer(text, add_special_tokens=False)["input_ids"], eos]])
    with torch.no_grad():
        expected = torch.exp(model(input_ids=stream, labels=stream).loss).item()
    assert perplexity_of(root / "full", single, capsys)["perplexity"] == pytest.approx(expected, rel=1e-4)
    # generate starts from <s> too: its greedy continuation is the model's own from [<s>, prompt]
    from hf_clm.model.generate import Sampling, generate

    continuation = generate(model, tokenizer, "the cat", Sampling(max_new_tokens=4, temperature=0), stream=False)
    prompt = torch.tensor([encode_document(tokenizer, "the cat")])
    own = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                         pad_token_id=eos)
    assert continuation == tokenizer.decode(own[0, prompt.shape[1]:], skip_special_tokens=True)


def test_llama_full_fine_tune_lora_merge_and_perplexity(llama_runs, capsys):
    root, base, corpus = llama_runs
    rows = embedding_rows(base / "model.safetensors")
    assert embedding_rows(root / "full" / "model.safetensors") == rows
    for name in ("full", "lora"):
        summary = json.loads((root / name / "perplexity.json").read_text())
        assert summary["perplexity"] < summary["base"]["perplexity"], name
    assert AutoTokenizer.from_pretrained(root / "full").get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    with safe_open(str(root / "lora" / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in names)
    merged = root / "lora" / "merged"
    assert type(AutoModelForCausalLM.from_pretrained(merged)).__name__ == "LlamaForCausalLM"
    assert embedding_rows(merged / "model.safetensors") == rows
    adapted = perplexity_of(root / "lora", corpus["validation"], capsys)["perplexity"]
    assert perplexity_of(merged, corpus["validation"], capsys)["perplexity"] == pytest.approx(adapted, rel=1e-4)


def test_modules_to_save_are_trained_and_saved_with_the_adapter(llama_runs, tmp_path):
    root, base, corpus = llama_runs
    run = tmp_path / "run"
    assert main(finetune_args(corpus, base, run, *lora_args("q_proj", r=4), "--max_steps", "2",
                              "--lora_modules_to_save", "lm_head")) == 0
    with safe_open(str(run / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert any("lm_head" in n for n in names) and any("lora_A" in n for n in names)
    summary = json.loads((run / "perplexity.json").read_text())
    expected = 4 * summary["trainable_parameters"]
    assert abs((run / "adapter_model.safetensors").stat().st_size - expected) <= 0.1 * expected


@pytest.mark.parametrize("extra, message", [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_bad_fine_tuning_input_is_one_line_and_writes_nothing(llama_runs, tmp_path, capsys, extra, message):
    if "bitsandbytes" in message and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    root, base, corpus = llama_runs
    capsys.readouterr()
    assert main(finetune_args(corpus, base, tmp_path / "run", *extra(tmp_path, base))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-clm: error: ") and message in err[-1], err[-1]
    assert not list((tmp_path / "run").glob("*.safetensors")) and not (tmp_path / "run" / "perplexity.json").exists()
