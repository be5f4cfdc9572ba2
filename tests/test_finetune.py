"""Fine-tuning pretrained models: the base vocabulary kept, small LoRA adapters, before/after figures,
one tokenization convention end to end, other model families, and the bad inputs of this path."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import SHARED_DATA, make_documents, recipe_args, requires_shared_data, run_hf_clm, write_corpus
from safetensors import safe_open
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedTokenizerFast

from hf_clm.data.blocks import DocumentTokenizer
from hf_clm.commands.cli import main
from hf_clm.data.collator import causal_lm_collator
from hf_clm.evaluation.explain import explain
from hf_clm.data.tokenizer import document_prefix, encode_document

GPT2_VOCAB = 50257


def finetune_args(corpus, base: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["train", *recipe_args(corpus, output_dir, "--model_name_or_path", str(base), "--train_tokenizer", "false",
                                  "--max_steps", "8", "--eval_steps", "8", "--save_steps", "8",
                                  "--learning_rate", "3e-3", *extra)]


def lora_args(*targets: str, r: int = 16) -> list[str]:
    return ["--peft_method", "lora", "--lora_r", str(r), "--lora_alpha", str(2 * r), "--lora_dropout", "0.0",
            "--lora_target_modules", *targets]


def embedding_rows(model_file: Path) -> int:
    with safe_open(str(model_file), "pt") as f:
        name = next(k for k in f.keys() if k.endswith(("wte.weight", "embed_tokens.weight")))
        return f.get_slice(name).get_shape()[0]


def perplexity_of(model_dir: Path, data: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["perplexity", str(model_dir), "--data", str(data), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ---- GPT-2-shaped: the real 50,257-token vocabulary, tiny widths ----

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


@pytest.mark.full
@requires_shared_data
def test_full_fine_tune_keeps_the_base_vocabulary_and_tokenizer(gpt2_runs):
    root, base, _ = gpt2_runs
    run = root / "full"
    assert embedding_rows(run / "model.safetensors") == embedding_rows(base / "model.safetensors") == GPT2_VOCAB
    saved, original = AutoTokenizer.from_pretrained(run), AutoTokenizer.from_pretrained(base)
    assert saved.get_vocab() == original.get_vocab() and len(saved) == GPT2_VOCAB
    assert saved.pad_token is None and saved.eos_token == original.eos_token
    assert AutoModelForCausalLM.from_pretrained(run).config.vocab_size == GPT2_VOCAB


@pytest.mark.full
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


@pytest.mark.full
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


@pytest.mark.full
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


def test_from_scratch_run_has_no_base_figures(tmp_path, text_files):
    assert main(["train", *recipe_args(text_files, tmp_path / "run", "--max_steps", "4", "--eval_steps", "4")]) == 0
    summary = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert "base" not in summary
    assert AutoTokenizer.from_pretrained(tmp_path / "run").pad_token == "<|pad|>"  # the trained BPE's own pad
    assert "→" not in (tmp_path / "run" / "report.md").read_text()


# ---- a Llama-style tokenizer (adds BOS, no pad) and a tiny Llama ----

def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE whose post-processor puts <s> before every text, as Llama's does; no pad token."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(make_documents(200, seed=3), vocab_size=400, min_frequency=2,
                            special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    bpe._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base = root / "base"
    tokenizer = bos_tokenizer()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    corpus = write_corpus(root / "corpus")
    assert main(finetune_args(corpus, base, root / "full")) == 0
    assert main(finetune_args(corpus, base, root / "lora", *lora_args("q_proj", "v_proj", r=8))) == 0
    assert main(["merge", str(root / "lora")]) == 0
    return root, base, corpus


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


# ---- bad input ----

def no_eos_tokenizer_dir(root: Path) -> Path:
    path = root / "no-eos"
    tokenizer = bos_tokenizer()
    tokenizer.eos_token = None
    tokenizer.save_pretrained(path)
    return path


def fake_bitsandbytes(root: Path) -> dict[str, str]:
    """An importable (empty) bitsandbytes, so that the missing-GPU check is the one that speaks."""
    (root / "fake" / "bitsandbytes").mkdir(parents=True)
    (root / "fake" / "bitsandbytes" / "__init__.py").write_text("")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "fake"), os.environ.get("PYTHONPATH", "")])}


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
