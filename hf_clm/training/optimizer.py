"""Optimizer: ``optim: muon``, Muon for the hidden weight matrices and AdamW for everything else.

Muon (``torch.optim.Muon``) orthogonalises the momentum of each 2-D weight matrix with a few
Newton-Schulz steps; it is meant for the matrices *inside* the network. Embeddings (token and
position), the output head, biases and norms keep AdamW, as in the modded-nanogpt speedrun and
nanochat. Each group has its own learning-rate key: ``learning_rate`` for AdamW,
``muon_learning_rate`` for Muon, whose per-matrix scale is ``match_rms_adamw`` (0.2 x sqrt(max
dimension), Moonshot's rule: Muon's update gets AdamW's size, and GPT-2's Conv1D, which stores
its matrices transposed, is scaled as a Linear would be).

Muon's Newton-Schulz iterations run on every matrix of one shape at once (:class:`StackedMuon`): a
small model's step is otherwise dominated by dispatching three small matrix products per iteration
per matrix, not by their arithmetic.

Both optimizers are held by one :class:`MuonWithAdamW`: one list of parameter groups (so Trainer's
LR scheduler scales both; the first group is AdamW's, the ``learning_rate`` Trainer logs), one
state dict (so checkpoints resume both).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim._muon import _adjust_lr
from transformers import PreTrainedModel, Trainer, TrainingArguments

from hf_clm.errors import HfClmError


def hidden_matrix_names(model: PreTrainedModel) -> list[str]:
    """Trainable 2-D weights that are neither an embedding (token, position) nor the output head."""
    excluded = {id(module.weight) for module in model.modules() if isinstance(module, torch.nn.Embedding)}
    head = model.get_output_embeddings()
    if head is not None:
        excluded.add(id(head.weight))
    return [name for name, p in model.named_parameters()
            if p.requires_grad and p.ndim == 2 and id(p) not in excluded]


def muon_parameter_groups(model: PreTrainedModel, args: TrainingArguments, muon_learning_rate: float | None
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(AdamW groups, Muon groups): AdamW with and without weight decay (Trainer's rule: none on
    biases and norms), Muon for the hidden matrices."""
    muon_names = set(hidden_matrix_names(model))
    if not muon_names:
        raise HfClmError(f"optim: muon trains 2-D hidden weight matrices and {type(model).__name__} has no "
                         f"trainable one; use another optim")
    decay = set(Trainer.get_decay_parameter_names(None, model))  # Trainer's rule; it does not use self
    rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n not in muon_names]
    adamw = [{"params": [p for n, p in rest if n in decay], "weight_decay": args.weight_decay},
             {"params": [p for n, p in rest if n not in decay], "weight_decay": 0.0}]
    muon = [{"params": [p for n, p in model.named_parameters() if n in muon_names],
             "lr": muon_learning_rate if muon_learning_rate is not None else args.learning_rate,
             "weight_decay": args.weight_decay}]
    return [g for g in adamw if g["params"]], muon


def orthogonalized(updates: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
                   ) -> torch.Tensor:
    """torch's ``_zeropower_via_newtonschulz`` (bfloat16, quintic iteration) over a stack of
    same-shaped matrices ``[n, rows, cols]`` in batched products."""
    a, b, c = coefficients
    x = updates.bfloat16()
    tall = x.size(1) > x.size(2)
    if tall:
        x = x.transpose(1, 2)
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.transpose(1, 2)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.transpose(1, 2) if tall else x


class StackedMuon(torch.optim.Muon):
    """``torch.optim.Muon``'s update and state (``momentum_buffer``), with the orthogonalisation of
    same-shaped matrices stacked into one batched iteration."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            buffers: list[torch.Tensor] = []
            self._init_group(group, params, grads, buffers)
            lr, momentum = float(group["lr"]), group["momentum"]
            by_shape: dict[torch.Size, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                by_shape.setdefault(param.shape, []).append((param, update))
            for shape, pairs in by_shape.items():
                updates = orthogonalized(torch.stack([u for _, u in pairs]), group["ns_coefficients"],
                                         group["ns_steps"], group["eps"])
                adjusted = _adjust_lr(lr, group["adjust_lr_fn"], shape)
                for (param, _), update in zip(pairs, updates):
                    param.mul_(1 - lr * group["weight_decay"])
                    param.add_(update, alpha=-adjusted)
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer made of an AdamW and a Muon over disjoint parameters (see the module doc)."""

    def __init__(self, adamw_groups: list[dict[str, Any]], muon_groups: list[dict[str, Any]], *, lr: float,
                 betas: tuple[float, float], eps: float, momentum: float):
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps)
        self.muon = StackedMuon(muon_groups, lr=lr, momentum=momentum, adjust_lr_fn="match_rms_adamw")
        # The inner optimizers' own group dicts: the scheduler's changes reach them directly.
        super().__init__(self.adamw.param_groups + self.muon.param_groups, {})

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.adamw.step()
        self.muon.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        self.param_groups = self.adamw.param_groups + self.muon.param_groups  # loading made new dicts


def built_optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer Trainer built, by name ("Muon + AdamW" for ``optim: muon``)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it in an AcceleratedOptimizer
    if isinstance(inner, MuonWithAdamW):
        return "Muon + AdamW"
    fused = inner.defaults.get("fused") if isinstance(getattr(inner, "defaults", None), dict) else None
    return type(inner).__name__ + (" (fused)" if fused else "")


class MuonFactory:
    """Trainer's optimizer-factory hook (``optimizer_cls_and_kwargs``): called with the model."""

    def __call__(self, model: PreTrainedModel, *, args: TrainingArguments, muon_learning_rate: float | None,
                 momentum: float) -> MuonWithAdamW:
        adamw, muon = muon_parameter_groups(model, args, muon_learning_rate)
        return MuonWithAdamW(adamw, muon, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                             eps=args.adam_epsilon, momentum=momentum)
