"""Throughput: training tokens per second and model FLOPs utilisation (MFU), one definition each.

Tokens/s counts the tokens trained (all ranks) over training time only: time spent evaluating and
saving checkpoints is left out. MFU is PaLM's: model FLOPs per token x tokens/s / peak FLOP/s.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from hf_clm.model import context_length
from hf_clm.recipe import RunArguments


class ThroughputMeter(TrainerCallback):
    """Training tokens per second between two logs, time spent evaluating and saving left out."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.last_time, self.last_tokens, self.excluded = time.perf_counter(), 0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time, self.last_tokens, self.excluded = time.perf_counter(), state.num_input_tokens_seen, 0.0

    @contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start

    def interval(self, tokens_seen: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = now - self.last_time - self.excluded
        rate = (tokens_seen - self.last_tokens) / seconds if seconds > 0 else 0.0
        self.last_time, self.last_tokens, self.excluded = now, tokens_seen, 0.0
        figures = {"tokens_per_second": rate}
        if self.peak_flops:
            figures["mfu"] = rate * self.flops_per_token / self.peak_flops
        return figures


# Peak dense bf16 tensor-core FLOP/s of one device, from the vendors' data sheets (no sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
    "GH200": 989e12, "B200": 2250e12, "A100": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12,
    "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def device_peak_flops(run: RunArguments, device: torch.device) -> float | None:
    """Peak FLOP/s of one training device: the recipe's ``peak_tflops``, or a known GPU's figure."""
    if run.peak_tflops:
        return run.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)

def total_peak_flops(run: RunArguments, args: TrainingArguments) -> float | None:
    per_device = device_peak_flops(run, args.device)
    return per_device * args.world_size if per_device else None

def flops_per_token(model: PreTrainedModel, block_size: int) -> float:
    """Training FLOPs per token, as in the PaLM paper's MFU: 6 per weight (forward + backward)
    plus attention's 12 x layers x hidden x context (position embeddings are lookups, not matmuls)."""
    config = model.config
    positions = model.get_input_embeddings().weight.shape[1] * context_length(config) \
        if getattr(config, "n_positions", None) else 0
    weights = model.num_parameters() - positions
    return 6 * weights + 12 * config.num_hidden_layers * config.hidden_size * block_size

def training_throughput(trainer: Trainer) -> dict[str, float]:
    """Mean tokens/s and MFU over the training logs (evaluation and saving left out)."""
    logs = [e for e in trainer.state.log_history if "tokens_per_second" in e]
    if not logs:
        return {}
    figures = {"train_tokens_per_second": float(np.mean([e["tokens_per_second"] for e in logs]))}
    if all("mfu" in e for e in logs):
        figures["mfu"] = float(np.mean([e["mfu"] for e in logs]))
    return figures
