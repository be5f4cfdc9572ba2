"""Evaluation tokens/s: hf_clm's batched-window perplexity against a plain forward-pass loop."""

from __future__ import annotations

import time

import torch
from transformers import AutoModelForCausalLM

from hf_clm.evaluation import stream_nll


def plain_windows(model, ids: torch.Tensor, window: int, stride: int, batch: int) -> float:
    """Each window scored with model(labels=...), earlier-scored tokens masked with -100."""
    starts = list(range(0, max(len(ids) - 1, 1), stride))
    total = 0.0
    with torch.inference_mode():
        rows, labels = [], []
        for i, start in enumerate(starts):
            end = min(start + window, len(ids))
            row = ids[start:end]
            label = row.clone()
            if i > 0:
                label[: window - stride] = -100
            rows.append(row)
            labels.append(label)
            if len(rows) == batch or i == len(starts) - 1:
                width = max(len(r) for r in rows)
                x = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
                y = torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=-100) for r in labels])
                total += model(input_ids=x, labels=y).loss.item()
                rows, labels = [], []
    return total


def tokens_per_second(fn, n_tokens: int) -> float:
    start = time.perf_counter()
    fn()
    return n_tokens / (time.perf_counter() - start)


def compare(cfg, n_tokens: int, window: int, stride: int, batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size - 1, (n_tokens,))
    plain_windows(model, ids[: window * batch], window, stride, batch)  # warm-up
    plain = tokens_per_second(lambda: plain_windows(model, ids, window, stride, batch), n_tokens)
    package = tokens_per_second(lambda: stream_nll(model, ids, window, stride, batch, progress=False), n_tokens)
    return plain, package
