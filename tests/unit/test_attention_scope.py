"""attention_scope: document — a token of a packed block sees only its own document, in training
(the collator's batches), in Trainer's evaluation, in `perplexity` and `explain`, and a saved run
keeps the scope."""

import json

import pytest
import torch
from conftest import make_documents
from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, GPT2Config, LlamaConfig

from hf_clm.data.attention import document_position_ids, record_attention_scope
from hf_clm.data.collator import DocumentCollator
from hf_clm.evaluation.explain import explain
from hf_clm.evaluation.scoring import IGNORE_INDEX, Scores, score_rows, shifted_targets
from hf_clm.model.build import load_for_inference

EOS = 9


def tiny_model(family: str, kernel: str, tokenizer):
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = GPT2Config(n_positions=64, n_layer=2, n_head=2, n_embd=32, **common) if family == "gpt2" else \
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, max_position_embeddings=64, **common)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=kernel).eval()
    model.config.use_cache = False  # as Trainer sets it (TrainingArguments.use_cache, false)
    return model


def packed_block(tokenizer) -> tuple[list[int], slice]:
    """Three documents as the blocks station packs them (EOS after each), and where the second
    one lies, its opening EOS included."""
    first, second, third = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in make_documents(3))
    eos = tokenizer.eos_token_id
    ids = [*first[:10], eos, *second[:12], eos, *third[:8]]
    return ids, slice(10, 10 + 1 + 12)


def scored_second_document(model, ids: list[int], second: slice) -> tuple[float, float]:
    """NLL of the second document's targets: inside the packed block, and fed alone."""
    packed = torch.tensor([ids])
    labels = torch.full_like(packed, IGNORE_INDEX)
    labels[0, second] = packed[0, second]
    labels[0, second.start] = IGNORE_INDEX  # the opening EOS is context, not a target, in both
    alone = torch.tensor([ids[second]])
    alone_labels = alone.clone()
    alone_labels[0, 0] = IGNORE_INDEX
    with torch.inference_mode():
        return (Scores.from_rows(score_rows(model, packed, shifted_targets(labels))).nll,
                Scores.from_rows(score_rows(model, alone, shifted_targets(alone_labels))).nll)


def test_positions_restart_at_each_eos_which_opens_the_next_document():
    ids = torch.tensor([[5, 6, EOS, 7, 8, 3, EOS, 4], [EOS, 1, 2, 3, 4, 5, 6, EOS]])
    assert document_position_ids(ids, EOS).tolist() == [[0, 1, 0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 5, 6, 0]]


@pytest.mark.parametrize("family,kernel", [("gpt2", "sdpa"), ("gpt2", "eager"), ("llama", "sdpa"),
                                           ("llama", "eager")])


def test_second_document_of_a_packed_block_scores_as_if_alone(family, kernel, bpe_tokenizer):
    model = tiny_model(family, kernel, bpe_tokenizer)
    ids, second = packed_block(bpe_tokenizer)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids[second]])).logits[0]
        document = model(**DocumentCollator(DataCollatorForLanguageModeling(bpe_tokenizer, mlm=False))([{"input_ids": ids}])).logits[0, second]
        block = model(**DataCollatorForLanguageModeling(bpe_tokenizer, mlm=False)([{"input_ids": ids}])).logits[0, second]
    torch.testing.assert_close(document, alone, atol=1e-5, rtol=1e-5)
    assert (block - alone).abs().max() > 1e-2  # without the switch the first document leaks in


def test_an_attention_mask_or_a_kv_cache_silently_turns_the_document_mask_off(bpe_tokenizer):
    model = tiny_model("gpt2", "sdpa", bpe_tokenizer)
    ids, second = packed_block(bpe_tokenizer)
    batch = DocumentCollator(DataCollatorForLanguageModeling(bpe_tokenizer, mlm=False))([{"input_ids": ids}])
    assert "attention_mask" not in batch
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids[second]])).logits[0]
        with_mask = model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).logits[0, second]
        with_cache = model(**batch, use_cache=True).logits[0, second]
    assert (with_mask - alone).abs().max() > 1e-2 and (with_cache - alone).abs().max() > 1e-2


def test_evaluation_and_explain_follow_the_scope_recorded_in_a_saved_model(bpe_tokenizer, tmp_path):
    model = tiny_model("gpt2", "sdpa", bpe_tokenizer)
    ids, second = packed_block(bpe_tokenizer)
    in_block, alone = scored_second_document(model, ids, second)
    assert in_block != pytest.approx(alone, rel=1e-3)

    record_attention_scope(model, "document")
    model.save_pretrained(tmp_path)
    bpe_tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attention_scope"] == "document"
    reloaded, tokenizer = load_for_inference(str(tmp_path))
    in_block, alone = scored_second_document(reloaded, ids, second)
    assert in_block == pytest.approx(alone, rel=1e-5)

    text = tokenizer.decode(ids)
    packed = explain(reloaded, tokenizer, text, top_k=2)
    single = explain(reloaded, tokenizer, tokenizer.decode(ids[second]), top_k=2)
    tail = packed.positions[second.start:second.stop - 1]
    assert [p.target for p in tail] == [p.target for p in single.positions]
    assert [p.loss for p in tail] == pytest.approx([p.loss for p in single.positions], rel=1e-4, abs=1e-5)
