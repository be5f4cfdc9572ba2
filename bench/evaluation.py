"""Evaluation: the package's scoring engine against a plain forward-pass loop (tokens/s), and the
peak memory of scoring a GPT-2-124M-shaped model (window 1,024, batch 8) with the LM head sliced
over positions vs the full float32 logits of the previous implementation."""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config

from bench import run_checked
from hf_clm.evaluation.scoring import score_rows, shifted_targets, stream_scores


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
    package = tokens_per_second(lambda: stream_scores(model, ids, window, stride, batch), n_tokens)
    return plain, package


def full_logits_nll(model, ids: torch.Tensor) -> float:
    """The previous implementation: the model's whole logits, in float32, then cross-entropy."""
    logits = model(input_ids=ids).logits
    targets = shifted_targets(ids)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100,
                           reduction="sum").item()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory(how: str, window: int, batch: int, layers: int) -> dict:
    """In a fresh process: resident memory of the weights, then the peak added by one scored batch;
    ``layers`` 0 is the tiny model (one layer, 32 wide, the same vocabulary): the process's baseline."""
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2) if layers == 0 else GPT2Config(n_layer=layers)
    model = AutoModelForCausalLM.from_config(config).eval()  # GPT-2 124M shapes at 12 layers
    ids = torch.randint(0, model.config.vocab_size, (batch, window))
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    with torch.inference_mode():
        model(input_ids=ids[:1, :8])  # allocator and kernels warmed up outside the measurement
        before = peak_rss_mb()
        if how == "sliced":
            score_rows(model, ids, shifted_targets(ids))
        else:
            full_logits_nll(model, ids)
    return {"weights_mb": weights_mb, "added_mb": peak_rss_mb() - before, "peak_mb": peak_rss_mb()}


def memory(how: str, window: int = 1024, batch: int = 8, layers: int = 12) -> dict:
    out = run_checked([sys.executable, "-m", "bench.evaluation", how, str(window), str(batch), str(layers)])
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    how, window, batch, layers = sys.argv[1], *map(int, sys.argv[2:5])
    print(json.dumps(measure_memory(how, window, batch, layers)))
