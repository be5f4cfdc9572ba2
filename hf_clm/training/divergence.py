"""Divergence: stop training at the first step whose loss or gradient norm is not finite.

Trainer's own ``logging_nan_inf_filter`` replaces a NaN loss in the logs by the mean of earlier
ones, and the run would go on to save NaN weights and a NaN perplexity. This callback stops it
before the optimizer applies such a step: the weights of every checkpoint on disk stay finite,
and no finished-run marker is written.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from hf_clm.errors import HfClmError


class TrainingDiverged(HfClmError):
    """Training produced a non-finite loss or gradient norm."""

    exit_status = 3


class DivergenceGuard(TrainerCallback):
    """Checks each optimizer step's loss (fed by the trainer's ``training_step``) and gradients
    before ``optimizer.step()``; raises :class:`TrainingDiverged` on the first non-finite one."""

    def __init__(self):
        self.step_loss: torch.Tensor | None = None
        self.grad_norm: float | torch.Tensor | None = None  # before clipping, when the trainer reports it
        self.last_finite: tuple[int, float] | None = None  # (step, loss)

    def record_loss(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float().reshape(())
        self.step_loss = loss if self.step_loss is None else self.step_loss + loss

    def record_grad_norm(self, norm: float | torch.Tensor | None) -> None:
        self.grad_norm = norm

    def on_train_begin(self, args, state, control, **kwargs):
        self.step_loss, self.last_finite, self.grad_norm = None, None, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        norm, self.grad_norm = self.grad_norm, None
        if norm is None and model is not None:
            norm = gradient_norm(model)
        norm, loss = (full_tensor(value) for value in (norm, self.step_loss))
        # on the loss's device: the all-reduce below must run on the backend's device (NCCL: a GPU)
        device = loss.device if loss is not None else \
            norm.device if isinstance(norm, torch.Tensor) else torch.device("cpu")
        loss = loss if loss is not None else torch.zeros((), device=device)
        norm = torch.as_tensor(0.0 if norm is None else norm, dtype=torch.float32).reshape(()).to(device)
        figures = torch.stack([loss, norm])
        bad = (~torch.isfinite(figures)).to(torch.float32)
        if dist.is_available() and dist.is_initialized():  # one rank's NaN loss stops every rank
            dist.all_reduce(bad)
        values, flags = figures.tolist(), bad.tolist()  # one small copy: Trainer syncs on the loss anyway
        self.step_loss = None
        step = state.global_step + 1
        if any(flags):
            raise TrainingDiverged(self.message(step, values, flags, args))
        self.last_finite = (step, values[0])

    def message(self, step: int, values: list[float], flags: list[float], args) -> str:
        what = []
        if flags[0]:
            what.append(f"loss {values[0]}" if not math.isfinite(values[0]) else "loss not finite on another process")
        if flags[1]:
            what.append(f"gradient norm {values[1]}")
        last = (f"the last finite loss was {self.last_finite[1]:.4f} at step {self.last_finite[0]}"
                if self.last_finite else "no earlier step in this session had a finite loss")
        return (f"training diverged at step {step} ({', '.join(what)}); {last}. That step was not applied, "
                f"checkpoints already saved are kept and the run is not marked finished; lower learning_rate "
                f"(now {args.learning_rate:g}), add warmup_steps or set max_grad_norm, then rerun with "
                f"resume_from_checkpoint: auto (from the last good checkpoint) or overwrite_output_dir: true")


def gradient_norm(model: torch.nn.Module) -> torch.Tensor | None:
    """The total L2 norm of the gradients this process holds (None when it holds none, e.g.
    under DeepSpeed, which keeps them in its engine)."""
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad  # a shard under FSDP
             for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False, foreach=True)


def full_tensor(value):
    """A sharded figure (FSDP2's DTensor gradient norm) as the plain tensor every rank agrees on."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value
