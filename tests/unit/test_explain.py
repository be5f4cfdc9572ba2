import pytest
import torch

from hf_clm.errors import HfClmError
from hf_clm.evaluation.explain import explain, format_explanation
from hf_clm.model.build import build_model
from hf_clm.recipe.schema import ModelArguments


@pytest.fixture(scope="module")
def model(bpe_tokenizer):
    torch.manual_seed(0)
    return build_model(ModelArguments(n_layer=1, n_head=2, n_embd=16), bpe_tokenizer, 64).eval()


def test_mean_loss_equals_the_models_own_loss(model, bpe_tokenizer):
    text = "the cat sat on the mat"
    explanation = explain(model, bpe_tokenizer, text, top_k=3)
    ids = torch.tensor([bpe_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        own = model(input_ids=ids, labels=ids).loss.item()
    assert explanation.mean_loss == pytest.approx(own, rel=1e-5)
    assert len(explanation.positions) == ids.size(1) - 1
    assert "".join(explanation.tokens) == text


def test_each_position_scores_the_next_token_from_its_context(model, bpe_tokenizer):
    explanation = explain(model, bpe_tokenizer, "the cat sat on the mat", top_k=4)
    first, second = explanation.positions[:2]
    assert first.context == explanation.tokens[0] and first.target == explanation.tokens[1]
    assert second.context == "".join(explanation.tokens[:2]) and second.target == explanation.tokens[2]
    for p in explanation.positions:
        probs = [prob for _, prob in p.top]
        assert probs == sorted(probs, reverse=True) and len(probs) == 4
        assert p.loss == pytest.approx(-torch.tensor(p.probability).log().item(), rel=1e-4)
        assert (p.rank == 1) == (p.top[0][0] == p.target and p.top[0][1] == pytest.approx(p.probability))
    table = format_explanation(explanation)
    assert "p(target)" in table and "perplexity" in table


def test_text_shorter_than_two_tokens_is_an_error(model, bpe_tokenizer):
    with pytest.raises(HfClmError, match="at least 2"):
        explain(model, bpe_tokenizer, "a")
