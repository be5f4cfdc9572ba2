"""The label contract: the collator copies ids to labels, the model shifts them inside its loss."""

import torch
import torch.nn.functional as F
from transformers import DataCollatorForLanguageModeling

from hf_clm.model.build import build_model
from hf_clm.recipe.schema import ModelArguments


def tiny_model(tokenizer, block_size=32):
    torch.manual_seed(0)
    model = build_model(ModelArguments(n_layer=2, n_head=2, n_embd=32), tokenizer, block_size)
    return model.eval()


def test_loss_is_next_token_cross_entropy_and_padding_is_ignored(bpe_tokenizer):
    texts = ["the cat sat on the mat.", "dogs ran past quick brown foxes and birds sang over green hills."]
    features = [{"input_ids": bpe_tokenizer(t)["input_ids"] + [bpe_tokenizer.eos_token_id]} for t in texts]
    batch = DataCollatorForLanguageModeling(bpe_tokenizer, mlm=False)(features)
    short, long_ = (len(f["input_ids"]) for f in features)
    assert short < long_
    assert (batch["input_ids"][0, short:] == bpe_tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short:] == -100).all()  # padding is never a target
    assert (batch["labels"][0, :short] == batch["input_ids"][0, :short]).all()  # EOS included
    assert (batch["attention_mask"][0, short:] == 0).all()

    model = tiny_model(bpe_tokenizer)
    with torch.no_grad():
        output = model(**batch)
    # by hand: logits at positions 0..n-2 against input ids 1..n-1, padding excluded
    logits, targets = output.logits[:, :-1], batch["input_ids"][:, 1:].clone()
    targets[batch["labels"][:, 1:] == -100] = -100
    by_hand = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    assert torch.allclose(output.loss, by_hand, rtol=1e-6, atol=1e-6)


def test_causality_changing_token_j_leaves_earlier_logits_unchanged(bpe_tokenizer):
    model = tiny_model(bpe_tokenizer)
    ids = torch.tensor([bpe_tokenizer("the cat sat on the mat while dogs ran past quick brown foxes")["input_ids"]])
    n = ids.size(1)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        for j in (1, n // 2, n - 1):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 7) % len(bpe_tokenizer)
            logits = model(input_ids=changed).logits
            assert torch.allclose(logits[0, :j], reference[0, :j], atol=1e-6)
            assert not torch.allclose(logits[0, j:], reference[0, j:], atol=1e-6)  # the change is seen
