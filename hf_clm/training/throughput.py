"""Throughput: training tokens per second and model FLOPs utilisation (MFU), one definition each.

``train_tokens_per_second`` = tokens trained (all ranks) / ``train_seconds``, the time spent
training: evaluation and checkpoint saving are left out, and a resumed run adds its time to the
time its checkpoint had recorded (its tokens count goes on from the checkpoint's the same way).
That one figure, under that one name, is what the console, ``perplexity.json``, ``report.json``
and the model card show. Training log lines carry ``interval_tokens_per_second`` (and
``interval_mfu``): the same ratio since the previous log line. Trainer's own ``train_runtime``
and ``*_per_second`` figures include evaluation and are not used. MFU is PaLM's: model FLOPs per
token x tokens/s / peak FLOP/s.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from hf_clm.model.build import context_length
from hf_clm.recipe.schema import RunArguments
from hf_clm.run.gpus import PEAK_BF16_FLOPS


class ThroughputMeter(TrainerCallback, ExportableState):
    """Training time (evaluation and saving left out) and tokens/s between two logs. Its training
    time is saved in every checkpoint's ``trainer_state.json`` and restored on resume."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.restored_seconds = 0.0  # training time of the run before the checkpoint it resumed from
        self.begin = self.last_time = time.perf_counter()
        self.excluded = self.interval_excluded = 0.0
        self.pause_start: float | None = None
        self.ended: float | None = None  # training time stops at the end of training
        self.last_tokens = 0

    def state(self) -> dict:
        return {"args": {"flops_per_token": self.flops_per_token, "peak_flops": self.peak_flops},
                "attributes": {"train_seconds": self.train_seconds()}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__, {})
        saved = saved[-1] if isinstance(saved, list) and saved else saved
        self.restored_seconds = float(saved.get("attributes", {}).get("train_seconds", 0.0)) if saved else 0.0
        self.begin = self.last_time = time.perf_counter()
        self.excluded = self.interval_excluded = 0.0
        self.last_tokens, self.ended = state.num_input_tokens_seen, None
        # a checkpoint written without this meter: Trainer's next save expects its entry
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = self.now()

    @contextmanager
    def paused(self):
        if self.pause_start is not None or self.ended is not None:  # already paused, or training is over
            yield
            return
        self.pause_start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - self.pause_start
            self.excluded += spent
            self.interval_excluded += spent
            self.pause_start = None

    def now(self) -> float:
        if self.ended is not None:
            return self.ended
        return self.pause_start if self.pause_start is not None else time.perf_counter()

    def train_seconds(self) -> float:
        """Training time so far, across resumes, evaluation and saving left out."""
        return self.restored_seconds + max(self.now() - self.begin - self.excluded, 0.0)

    def interval(self, tokens_seen: int) -> dict[str, float]:
        now = self.now()
        seconds = now - self.last_time - self.interval_excluded
        rate = (tokens_seen - self.last_tokens) / seconds if seconds > 0 else 0.0
        self.last_time, self.last_tokens, self.interval_excluded = now, tokens_seen, 0.0
        figures = {"interval_tokens_per_second": rate}
        if self.peak_flops:
            figures["interval_mfu"] = rate * self.flops_per_token / self.peak_flops
        return figures


TERA = 1e12


def flops_from_tflops(tflops: float | None) -> float | None:
    """FLOP/s of a figure given in TFLOP/s (a recipe's ``peak_tflops``, plan's ``--gpu_tflops``); None for none."""
    return tflops * TERA if tflops else None


def device_peak_flops(run: RunArguments, device: torch.device) -> float | None:
    """Peak FLOP/s of one training device: the recipe's ``peak_tflops``, or a known GPU's figure."""
    if run.peak_tflops:
        return flops_from_tflops(run.peak_tflops)
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

def training_throughput(trainer: Trainer, meter: ThroughputMeter) -> dict[str, float]:
    """The run's ``train_tokens_per_second`` (and ``mfu``): tokens trained / ``train_seconds``."""
    tokens, seconds = trainer.state.num_input_tokens_seen, meter.train_seconds()
    if not tokens or seconds <= 0:
        return {}
    figures = {"train_seconds": seconds, "train_tokens_per_second": tokens / seconds}
    if meter.peak_flops:
        figures["mfu"] = figures["train_tokens_per_second"] * meter.flops_per_token / meter.peak_flops
    return figures
