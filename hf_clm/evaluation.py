"""Perplexity: exp(total NLL / predicted tokens) over a whole evaluation set, never a mean of means.

A window of ``n`` tokens predicts ``n - 1`` of them (token t from tokens < t); its first token
has no left context inside the window and is never counted, and neither is padding (-100).
Windows move by ``stride``: with ``stride == window`` they do not overlap; with a smaller stride
each token is still scored once, but with up to ``window - stride`` extra tokens of context (the
method of the Hugging Face guide "Perplexity of fixed-length models").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel

IGNORE_INDEX = -100
# The package's `evaluate` metric: evaluate.load(CORPUS_PERPLEXITY_METRIC) works offline.
CORPUS_PERPLEXITY_METRIC = str(Path(__file__).resolve().parent / "metrics" / "corpus_perplexity")


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), with overflow reported as infinity instead of an exception."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class NLL:
    """Summed negative log-likelihood (nats) over ``tokens`` predicted tokens."""

    total: float = 0.0
    tokens: int = 0

    def __iadd__(self, other: NLL) -> NLL:
        self.total += other.total
        self.tokens += other.tokens
        return self

    @property
    def mean(self) -> float:
        return self.total / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return perplexity_from_loss(self.mean)

    @property
    def bits(self) -> float:
        return self.total / math.log(2)


def row_nll_and_targets(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed NLL of ``labels[:, 1:]`` given the logits at positions ``0 .. n-2``, and the
    number of those targets (padding and masked positions, -100, are not targets)."""
    # Shift the labels, not the logits (as transformers' own loss does): slicing or transposing
    # the [batch, length, vocab] logits would copy the largest tensor of the forward pass.
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    return nll.sum(1), (targets != IGNORE_INDEX).sum(1)


def batch_nll(model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor) -> NLL:
    """Summed NLL of a batch's targets, the model's own shift applied."""
    nll, targets = row_nll_and_targets(model(input_ids=input_ids).logits, labels)
    return NLL(nll.sum().item(), int(targets.sum()))


def model_device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def blocks_nll(model: PreTrainedModel, blocks: Dataset, batch_size: int = 8, progress: bool = True) -> NLL:
    """Token-weighted NLL of full blocks (every position after the first is a target)."""
    model.eval()
    device, result = model_device(model), NLL()
    batches = blocks.with_format("torch").iter(batch_size=batch_size)
    for batch in tqdm(batches, total=math.ceil(len(blocks) / batch_size), desc="Perplexity", disable=not progress):
        ids = batch["input_ids"].long().to(device)
        result += batch_nll(model, ids, ids)
    return result


def scored_windows(n_tokens: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first scored label index) of each window, so that every token after the first
    is scored exactly once."""
    previous_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        if end - begin < 2 and begin > 0:
            return
        yield begin, end, max(previous_end - begin, 0)
        previous_end = end
        if end == n_tokens:
            return


def window_nlls(model: PreTrainedModel, ids: torch.Tensor, window: int, stride: int,
                batch_size: int = 8, progress: bool = True) -> Iterator[NLL]:
    """NLL of each batch of windows of ``window`` tokens moved by ``stride`` over a 1-D stream."""
    model.eval()
    device = model_device(model)
    spans = list(scored_windows(len(ids), window, stride))
    # Windows of one length are batched together; only the last window can be shorter.
    for start in tqdm(range(0, len(spans), batch_size), desc="Perplexity", disable=not progress):
        chunk = spans[start:start + batch_size]
        for length in sorted({end - begin for begin, end, _ in chunk}, reverse=True):
            same = [s for s in chunk if s[1] - s[0] == length]
            inputs = torch.stack([ids[begin:end] for begin, end, _ in same]).to(device)
            labels = inputs.clone()
            for row, (_, _, first_scored) in enumerate(same):
                labels[row, :first_scored] = IGNORE_INDEX
            with torch.inference_mode():
                part = batch_nll(model, inputs, labels)
            yield part  # outside the context: the caller must not run in inference mode


def stream_nll(model: PreTrainedModel, ids: torch.Tensor, window: int, stride: int,
               batch_size: int = 8, progress: bool = True) -> NLL:
    """Total NLL of a 1-D token stream scored in windows of ``window`` tokens moved by ``stride``."""
    result = NLL()
    for part in window_nlls(model, ids, window, stride, batch_size, progress):
        result += part
    return result


def unigram_nll(train_blocks: Dataset, eval_blocks: Dataset, vocab_size: int) -> NLL:
    """The baseline any LM must beat: add-one-smoothed token frequencies of the training blocks,
    scored on the same targets as the model (every block position after the first)."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for batch in train_blocks.with_format("numpy").iter(batch_size=4096):
        counts += np.bincount(batch["input_ids"].ravel(), minlength=vocab_size)[:vocab_size]
    log_probs = np.log(counts / counts.sum())
    result = NLL()
    for batch in eval_blocks.with_format("numpy").iter(batch_size=4096):
        targets = batch["input_ids"][:, 1:].ravel()
        result += NLL(float(-log_probs[targets].sum()), int(targets.size))
    return result


def text_size(split: Dataset) -> tuple[int, int]:
    """(UTF-8 bytes, characters) of the split's text."""
    n_bytes = n_chars = 0
    for batch in split.iter(batch_size=1000):
        for text in batch["text"]:
            text = text or ""
            n_chars += len(text)
            n_bytes += len(text.encode("utf-8"))
    return n_bytes, n_chars


def perplexity_report(parts: Iterable[NLL], window: int, stride: int, n_bytes: int, n_chars: int
                      ) -> dict[str, float | int]:
    """The figures of one evaluation, aggregated by the package's `evaluate` metric: corpus
    perplexity, loss, tokens, and bits per byte/char (total NLL in bits / the text's UTF-8 bytes
    or characters), which do not depend on the tokenizer."""
    metric = evaluate.load(CORPUS_PERPLEXITY_METRIC)
    for part in parts:
        metric.add_batch(nll=[part.total], tokens=[part.tokens])
    return {**metric.compute(bytes=n_bytes, chars=n_chars), "bytes": n_bytes, "chars": n_chars,
            "window": window, "stride": stride}
