import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_clm.model import build_model
from hf_clm.perplexity import NLL, blocks_nll, perplexity_from_loss, scored_windows, stream_nll, unigram_nll
from hf_clm.recipe import ModelArguments


@pytest.fixture(scope="module")
def model(bpe_tokenizer):
    torch.manual_seed(0)
    return build_model(ModelArguments(n_layer=1, n_head=2, n_embd=16), bpe_tokenizer, 16).eval()


def test_perplexity_from_loss_overflows_to_inf():
    assert perplexity_from_loss(0.0) == 1.0
    assert perplexity_from_loss(1e6) == math.inf


def plain_loop_nll(model, ids: torch.Tensor, window: int) -> NLL:
    """Independent reference: non-overlapping windows, one at a time, token-weighted."""
    total, count = 0.0, 0
    for begin in range(0, len(ids), window):
        chunk = ids[begin:begin + window]
        if len(chunk) < 2:
            continue
        with torch.no_grad():
            logits = model(input_ids=chunk[None]).logits[0]
        total += F.cross_entropy(logits[:-1], chunk[1:], reduction="sum").item()
        count += len(chunk) - 1
    return NLL(total, count)


def test_stride_equal_to_window_matches_non_overlapping_plain_loop(model, bpe_tokenizer):
    ids = torch.randint(0, len(bpe_tokenizer), (203,), generator=torch.Generator().manual_seed(1))
    batched = stream_nll(model, ids, window=16, stride=16, batch_size=5, progress=False)
    reference = plain_loop_nll(model, ids, 16)
    assert batched.tokens == reference.tokens == 203 - math.ceil(203 / 16) + (203 % 16 == 1)
    assert batched.perplexity == pytest.approx(reference.perplexity, rel=1e-5)


def test_every_token_after_the_first_is_scored_once_with_any_stride():
    for n, window, stride in [(100, 16, 16), (100, 16, 5), (17, 16, 8), (16, 16, 1), (50, 10, 3)]:
        spans = list(scored_windows(n, window, stride))
        scored = [begin + i for begin, end, first in spans for i in range(max(first, 1), end - begin)]
        if stride < window:
            assert sorted(scored) == list(range(1, n))


def test_blocks_nll_is_token_weighted(model, bpe_tokenizer):
    blocks = Dataset.from_dict({"input_ids": np.random.default_rng(0).integers(0, len(bpe_tokenizer), (10, 16)).tolist()})
    total = blocks_nll(model, blocks, batch_size=3, progress=False)
    one_by_one = NLL()
    for row in blocks["input_ids"]:
        one_by_one += plain_loop_nll(model, torch.tensor(row), 16)
    assert total.tokens == 10 * 15
    assert total.mean == pytest.approx(one_by_one.mean, rel=1e-5)


def test_unigram_baseline_matches_counting_by_hand():
    train = Dataset.from_dict({"input_ids": [[0, 1, 1, 2], [1, 1, 1, 3]]})
    evaluation = Dataset.from_dict({"input_ids": [[3, 1, 2, 0]]})
    counts = np.array([1, 5, 1, 1]) + 1.0
    probs = counts / counts.sum()
    expected = -(np.log(probs[1]) + np.log(probs[2]) + np.log(probs[0]))  # first position not a target
    nll = unigram_nll(train, evaluation, vocab_size=4)
    assert nll.tokens == 3 and nll.total == pytest.approx(expected)
