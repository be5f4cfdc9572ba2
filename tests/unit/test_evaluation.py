import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA, requires_shared_data
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

import hf_clm.evaluation.scoring as evaluation
from hf_clm.evaluation.scoring import (
    Scores,
    blocks_scores,
    evaluate_rolling,
    perplexity_from_loss,
    score_rows,
    shifted_targets,
    stream_scores,
    unigram_scores,
)
from hf_clm.evaluation.token_text import token_text
from hf_clm.evaluation.windows import rolling_windows, strided_windows
from hf_clm.model.build import build_model
from hf_clm.recipe.schema import ModelArguments


@pytest.fixture(scope="module")
def model(bpe_tokenizer):
    torch.manual_seed(0)
    return build_model(ModelArguments(n_layer=1, n_head=2, n_embd=16), bpe_tokenizer, 16).eval()


def test_perplexity_from_loss_overflows_to_inf():
    assert perplexity_from_loss(0.0) == 1.0
    assert perplexity_from_loss(1e6) == math.inf


def plain_loop_nll(model, ids: torch.Tensor, window: int) -> Scores:
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
    return Scores(total, count)


def test_stride_equal_to_window_matches_non_overlapping_plain_loop(model, bpe_tokenizer):
    ids = torch.randint(0, len(bpe_tokenizer), (203,), generator=torch.Generator().manual_seed(1))
    batched = stream_scores(model, ids, window=16, stride=16, batch_size=5)
    reference = plain_loop_nll(model, ids, 16)
    assert batched.tokens == reference.tokens == 203 - math.ceil(203 / 16) + (203 % 16 == 1)
    assert batched.perplexity == pytest.approx(reference.perplexity, rel=1e-5)


def test_every_token_after_the_first_is_scored_once_with_any_stride():
    for n, window, stride in [(100, 16, 16), (100, 16, 5), (17, 16, 8), (16, 16, 1), (50, 10, 3)]:
        windows = list(strided_windows(n, window, stride))
        scored = [i + 1 for w in windows for i in range(w.first, w.end)]
        assert all(w.end - w.begin <= window - 1 for w in windows)
        if stride < window:
            assert sorted(scored) == list(range(1, n))
        else:  # the guide's non-overlapping windows: each window's first token is context only
            assert len(scored) == len(set(scored)) == n - len(range(0, n, stride)) + (n % stride == 1)


def test_rolling_windows_score_every_token_once_with_at_most_window_inputs():
    for n, window in [(1, 4), (4, 4), (5, 4), (34, 10), (100, 7)]:
        windows = list(rolling_windows(0, n, window))
        scored = [i for w in windows for i in range(w.first, w.end)]
        assert scored == list(range(n))
        assert all(w.end - w.begin <= window for w in windows)
        assert all(w.begin == max(0, w.end - window) for w in windows)  # refilled with left context


def test_blocks_scores_are_token_weighted(model, bpe_tokenizer):
    blocks = Dataset.from_dict({"input_ids": np.random.default_rng(0).integers(0, len(bpe_tokenizer), (10, 16)).tolist()})
    total = blocks_scores(model, blocks, batch_size=3, progress=False)
    one_by_one = Scores()
    for row in blocks["input_ids"]:
        one_by_one += plain_loop_nll(model, torch.tensor(row), 16)
    assert total.tokens == 10 * 15
    assert total.loss == pytest.approx(one_by_one.loss, rel=1e-5)


def test_unigram_baseline_matches_counting_by_hand():
    train = Dataset.from_dict({"input_ids": [[0, 1, 1, 2], [1, 1, 1, 3]]})
    evaluation = Dataset.from_dict({"input_ids": [[3, 1, 2, 0]]})
    counts = np.array([1, 5, 1, 1]) + 1.0
    probs = counts / counts.sum()
    expected = -(np.log(probs[1]) + np.log(probs[2]) + np.log(probs[0]))  # first position not a target
    nll = unigram_scores(train, evaluation, vocab_size=4)
    assert nll.tokens == 3 and nll.nll == pytest.approx(expected)


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
    by_stride = {s: stream_scores(lm, test, 16, s).perplexity for s in (16, 8, 4)}
    assert by_stride[8] <= by_stride[16] and by_stride[4] <= by_stride[16]
    assert by_stride[8] < 0.7 * by_stride[16]  # the first tokens of each window lacked context


def full_logits_scores(model, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Independent reference: the model's own logits, cross-entropy over the whole tensor."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return nll.sum(1)


def test_head_sliced_over_positions_equals_the_full_logits(model, bpe_tokenizer, monkeypatch):
    ids = torch.randint(0, len(bpe_tokenizer), (3, 16), generator=torch.Generator().manual_seed(4))
    targets = shifted_targets(ids)
    reference = full_logits_scores(model, ids, targets)
    for per_slice in (1, 7 * len(bpe_tokenizer), 1 << 25):  # one position at a time .. all at once
        monkeypatch.setattr(evaluation, "LOGITS_PER_SLICE", per_slice)
        with torch.inference_mode():
            rows = score_rows(model, ids, targets)
        assert torch.allclose(rows[:, 0], reference, rtol=1e-5)
        assert rows[:, 1].tolist() == [15, 15, 15]


def test_models_that_transform_their_logits_are_scored_through_their_own_forward(bpe_tokenizer):
    torch.manual_seed(0)
    lm = build_model(ModelArguments(n_layer=1, n_head=2, n_embd=16), bpe_tokenizer, 16).eval()
    ids = torch.randint(0, len(bpe_tokenizer), (2, 16), generator=torch.Generator().manual_seed(5))
    lm.config.logit_scale = 1.0  # as Cohere's config: the head's output is transformed in forward
    assert not evaluation.splits_head(lm)
    with torch.inference_mode():
        rows = score_rows(lm, ids, shifted_targets(ids))
    assert torch.allclose(rows[:, 0], full_logits_scores(lm, ids, shifted_targets(ids)), rtol=1e-5)


def reference_rolling_loglikelihood(model, ids: list[int], prefix: int, window: int) -> float:
    """lm-evaluation-harness's loglikelihood_rolling written out: first window [prefix] + tokens,
    then non-overlapping prediction windows of `window` tokens, each fed the `window` tokens before."""
    total, predicted = 0.0, 0
    sequence = [prefix, *ids]
    while predicted < len(ids):
        n = min(window, len(ids) - predicted)
        inputs = sequence[max(0, predicted + n - window): predicted + n]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([inputs])).logits[0].float(), -1)
        for k in range(n):
            position = len(inputs) - n + k
            total += log_probs[position, ids[predicted + k]].item()
        predicted += n
    return total


def test_rolling_matches_lm_evaluation_harness_windows_per_document(model, bpe_tokenizer):
    texts = ["the cat sat on a mat while dogs ran past", "quick brown foxes " * 9, "birds", ""]
    result = evaluate_rolling(model, bpe_tokenizer, texts, window=8, batch_size=3, progress=False)
    assert result.documents == 3
    for text, loglikelihood in zip(texts, result.document_loglikelihoods):
        ids = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = reference_rolling_loglikelihood(model, ids, bpe_tokenizer.eos_token_id, 8)
        assert loglikelihood == pytest.approx(expected, rel=1e-5)
    # every byte and character of the text is scored
    assert result.scores.bytes == sum(len(t.encode()) for t in texts)
    assert result.scores.chars == sum(len(t) for t in texts)
    assert result.scores.tokens == sum(len(bpe_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


@requires_shared_data
def test_token_text_of_the_gpt2_tokenizer_covers_every_byte_of_real_text():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHARED_DATA / "tiny-gpt2")
    text = (SHARED_DATA / "wikitext-2" / "valid.txt").read_text(encoding="utf-8")[:20000] + " naïve café — 東京 🙂"
    ids = torch.tensor(tokenizer(text)["input_ids"])
    table = token_text(tokenizer)
    assert int(table.bytes[ids].sum()) == len(text.encode("utf-8"))
    assert int(table.chars[ids].sum()) == len(text)
    assert table.bytes[tokenizer.eos_token_id] == 0
