import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset

from hf_clm.model import build_model
from transformers import GPT2Config, GPT2LMHeadModel

from hf_clm.evaluation import (CORPUS_PERPLEXITY_METRIC, NLL, blocks_nll, perplexity_from_loss, perplexity_report,
                               scored_windows, stream_nll, unigram_nll, window_nlls)
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


def test_report_through_the_evaluate_metric_matches_the_plain_loop(model, bpe_tokenizer):
    ids = torch.randint(0, len(bpe_tokenizer), (150,), generator=torch.Generator().manual_seed(2))
    report = perplexity_report(window_nlls(model, ids, 16, 16, batch_size=4, progress=False), 16, 16,
                               n_bytes=600, n_chars=500)
    reference = plain_loop_nll(model, ids, 16)
    assert report["perplexity"] == pytest.approx(reference.perplexity, rel=1e-5)
    assert report["tokens"] == reference.tokens
    assert report["bits_per_byte"] == pytest.approx(reference.bits / 600, rel=1e-5)
    assert report["bits_per_char"] == pytest.approx(reference.bits / 500, rel=1e-5)


def test_metric_module_loads_offline_and_is_token_weighted():
    import evaluate

    metric = evaluate.load(CORPUS_PERPLEXITY_METRIC)
    # a short text with high loss and a long one with low loss: tokens weigh, not texts
    result = metric.compute(nll=[10.0, 20.0], tokens=[2, 40])
    assert result["perplexity"] == pytest.approx(math.exp(30 / 42))
    mean_of_texts = (math.exp(10 / 2) + math.exp(20 / 40)) / 2  # what the Hub's mean_perplexity would give
    assert result["perplexity"] < mean_of_texts


def lagged_stream(n: int, seed: int, vocab: int = 20, lag: int = 5) -> torch.Tensor:
    """Token t is (token t-5) + 1 (90% of the time): predictable only with 5 tokens of context."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n,), generator=g)
    keep = torch.rand(n, generator=g) > 0.1
    for i in range(lag, n):
        if keep[i]:
            x[i] = (x[i - lag] + 1) % vocab
    return x


def test_smaller_stride_gives_lower_or_equal_perplexity_on_a_trained_model():
    torch.manual_seed(0)
    train = lagged_stream(20000, seed=0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_layer=1, n_head=2, n_embd=32))
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    for _ in range(150):
        starts = torch.randint(0, len(train) - 16, (32,))
        batch = torch.stack([train[s:s + 16] for s in starts])
        loss = lm(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = lagged_stream(2000, seed=1)
    by_stride = {s: stream_nll(lm, test, 16, s, progress=False).perplexity for s in (16, 8, 4)}
    assert by_stride[8] <= by_stride[16] and by_stride[4] <= by_stride[16]
    assert by_stride[8] < 0.7 * by_stride[16]  # the first tokens of each window lacked context
