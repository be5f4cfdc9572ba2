"""``hf-clm plan``: what a recipe's run needs (parameters, memory per device, checkpoint size, tokens,
time) without training or downloading anything. The model is the one train builds, on the ``meta``
device (:mod:`hf_clm.planning.meta`), so the parameters are counted exactly and no weights are
allocated; the launch and the device come from :mod:`hf_clm.planning.launch`.

Memory per device, in bytes (P = trainable parameters):

* ``weights``, ``gradients``, ``optimizer``: accelerate's ``estimate_training_usage`` (what ``accelerate
  estimate-memory`` prints as "Training using Adam"), on the trainable parameters: fp32 training holds
  fp32 weights (4P), fp32 gradients (4P) and AdamW's two fp32 states (8P). Mixed precision (``bf16``/
  ``fp16``), as Trainer and accelerate run it, keeps the fp32 weights, gradients and states and adds
  a 16-bit copy of the weights that autocast casts for the matmuls and caches for the backward pass
  (2P; accelerate counts it with the gradients, the plan shows it as ``compute_copy``). A checkpoint
  stored in 16 bits (transformers loads a pretrained model in its own dtype) trains in it: weights,
  gradients and optimizer states are 16-bit and there is no copy. Other optimizers, by their state:
  Muon 1 momentum buffer for the hidden matrices + AdamW's 2 for the rest; 8-bit optimizers 1 byte
  per state + one fp32 scale per 256-value block; Adafactor (as Trainer builds it, no first moment)
  one row and one column vector per matrix; Lion, Adagrad, RMSprop 1 state; SGD (momentum 0) none.
* LoRA: the frozen base weights in their dtype (QLoRA: 4 bits per quantized weight + one fp32 scale
  per 64-value block, a quarter of that with double quantization; embeddings, head and norms are
  not quantized and ``prepare_model_for_kbit_training`` keeps them in fp32); adapters as above.
* Parallelism: DDP replicates everything and its reducer adds one more copy of the gradients
  (``gradient_as_bucket_view`` is off). FSDP full shard divides weights, gradients and optimizer by
  the processes, shard_grad_op gradients and optimizer; DeepSpeed ZeRO-1 divides the optimizer,
  ZeRO-2 also the gradients, ZeRO-3 also the weights. Where the weights are sharded, the 16-bit
  copy becomes the layers being gathered: two of accelerate's largest layer (the one computing and
  the one prefetched).
* ``activations`` (per layer, bytes per token, Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", eq. 2 without sequence parallelism): (34·d + 5·h·T)
  bytes at 2 bytes per element, d the hidden size, h the heads, T the block; scaled by (bytes per
  element / 2) in the dtype the run computes in: 2 bytes under autocast or for a checkpoint stored
  in 16 bits, 4 in fp32. 34·d is 15·d for the attention block and the layer norms plus
  19·d for a 4·d MLP (3·d + 4·I for an MLP of width I; a gated MLP such as Llama's keeps 2·d + 8·I).
  5·h·T is the attention scores and their softmax; sdpa and flash attention never store them, only
  ``eager`` does. Gradient checkpointing keeps each layer's input (2·d bytes per token at 2 bytes per
  element) plus one layer's full activations, recomputed in the backward pass. Then the logits:
  batch·T·vocab in fp32 three times, at the start of the backward pass, when every layer's
  activations are still alive: the log-probabilities cross-entropy saved, the gradient the loss
  hands back for them and the gradient of the logits computed from it (transformers' loss upcasts
  the logits to fp32 in any precision; the forward pass holds less: the logits, 16-bit under mixed
  precision, their fp32 copy and the log-probabilities). Measured on CPU with PyTorch's profiler,
  fp32, 4 x 256 GPT-2 of 50,257 tokens at batch 2 x 256: the peak is at that point, one fp32 copy of
  the logits above the two the plan counted before.
* ``fits``: the total against the device's memory less 10% for the CUDA context, NCCL's buffers and
  the caching allocator's fragmentation.

Time to finish = tokens x FLOPs per token / (MFU x peak FLOP/s x processes), FLOPs per token being
the one definition :func:`hf_clm.training.throughput.flops_per_token` uses for MFU; the MFU is 40% unless
``--mfu`` says otherwise (nanoGPT and litgpt report 35-50% for bf16 dense GPT training on A100/H100).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hf_clm.planning.launch import Launch
from hf_clm.recipe.schema import Recipe

STATE_FILE_BYTES = 16 * 1024  # scheduler.pt, trainer_state.json, training_args.bin, one rng_state per process
LOGITS_FP32_COPIES = 3  # in the loss's backward: the saved log-probabilities and the two gradients
QUANT_BLOCK, OPTIMIZER_8BIT_BLOCK = 64, 256  # values per fp32 scale: bitsandbytes' 4-bit weights, 8-bit states


class Shape(NamedTuple):
    """Everything the memory terms depend on; a change of plan is a ``_replace``."""
    trainable_bytes: int  # the trainable parameters in their dtype
    trainable_fp32: bool
    frozen_bytes: int
    optimizer_bytes: int
    largest_layer_bytes: int  # accelerate's largest layer, as stored
    layers: int
    hidden: int
    heads: int
    mlp_width: int
    gated_mlp: bool
    vocab: int
    batch: int
    block: int
    checkpointing: bool
    eager_attention: bool
    mixed: bool
    element: int  # bytes of one activation element, in the dtype the run computes in
    launch: Launch


# ---- memory terms ----

def quantized_names(lm) -> set[str]:
    """Weights bitsandbytes stores in 4 bits: every linear layer (GPT-2's Conv1D too) but the head."""
    from transformers.pytorch_utils import Conv1D

    head = lm.get_output_embeddings()
    return {f"{name}.weight" for name, module in lm.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head}


def frozen_bytes(lm, recipe: Recipe) -> int:
    model = recipe.model_args
    frozen = [(n.removeprefix("base_model.model."), p) for n, p in lm.named_parameters() if not p.requires_grad]
    if not model.load_in_4bit:
        return sum(p.numel() * p.element_size() for _, p in frozen)
    quantized = quantized_names(lm.get_base_model())
    scale = 4 / QUANT_BLOCK / (4 if model.bnb_4bit_use_double_quant else 1)
    return int(sum(p.numel() * (0.5 + scale if n in quantized else 4) for n, p in frozen))


def optimizer_bytes(lm, recipe: Recipe) -> int:
    """Unsharded optimizer state of the trainable parameters (see the module doc)."""
    from accelerate.commands.estimate import estimate_training_usage

    from hf_clm.training.optimizer import hidden_matrix_names

    params = [(n, p) for n, p in lm.named_parameters() if p.requires_grad]
    name = str(getattr(recipe.training_args.optim, "value", recipe.training_args.optim)).lower()
    if recipe.uses_muon():
        hidden = set(hidden_matrix_names(lm))
        return sum(p.numel() * p.element_size() * (1 if n in hidden else 2) for n, p in params)
    if "8bit" in name:
        states = 1 if "lion" in name else 2
        return int(sum(p.numel() for _, p in params) * states * (1 + 4 / OPTIMIZER_8BIT_BLOCK))
    if "adafactor" in name:
        return sum((p.numel() // p.shape[-1] // p.shape[-2] * (p.shape[-1] + p.shape[-2]) if p.ndim >= 2
                    else p.numel()) * 4 for _, p in params)
    if name == "sgd":
        return 0
    if "lion" in name or name.startswith(("adagrad", "rmsprop")):
        return sum(p.numel() * p.element_size() for _, p in params)
    if all(p.dtype == torch.float32 for _, p in params):
        return estimate_training_usage(sum(p.numel() for _, p in params) * 4, "float32")["optimizer"]
    return sum(2 * p.numel() * p.element_size() for _, p in params)


def mlp_shape(config) -> tuple[int, bool]:
    hidden = config.hidden_size
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    gated = getattr(config, "hidden_act", "") in ("silu", "swiglu") and hasattr(config, "intermediate_size")
    return width, gated


def model_shape(lm, config, recipe: Recipe, launch: Launch) -> Shape:
    from accelerate.utils import calculate_maximum_sizes

    from hf_clm.planning.meta import compute_element_bytes

    args = recipe.training_args
    trainable = [p for p in lm.parameters() if p.requires_grad]
    width, gated = mlp_shape(config)
    return Shape(
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        trainable_fp32=all(p.dtype == torch.float32 for p in trainable),
        frozen_bytes=frozen_bytes(lm, recipe), optimizer_bytes=optimizer_bytes(lm, recipe),
        largest_layer_bytes=calculate_maximum_sizes(lm)[1][0], layers=config.num_hidden_layers,
        hidden=config.hidden_size, heads=config.num_attention_heads, mlp_width=width, gated_mlp=gated,
        vocab=config.vocab_size, batch=args.per_device_train_batch_size, block=recipe.data_args.block_size,
        checkpointing=bool(args.gradient_checkpointing or launch.activation_checkpointing),
        eager_attention=recipe.model_args.attn_implementation == "eager", mixed=bool(args.bf16 or args.fp16),
        element=compute_element_bytes(lm, recipe), launch=launch)


def training_terms(shape: Shape) -> dict[str, int]:
    """Unsharded weights, 16-bit compute copy and gradients of the trainable parameters: accelerate's
    estimate for fp32 parameters; 16-bit parameters train in 16 bits, without a copy."""
    from accelerate.commands.estimate import estimate_training_usage

    if not shape.trainable_fp32:
        return {"weights": shape.trainable_bytes, "compute_copy": 0, "gradients": shape.trainable_bytes}
    usage = estimate_training_usage(shape.trainable_bytes, "bfloat16" if shape.mixed else "float32")
    return {"weights": usage["model"], "compute_copy": usage["gradients"] - usage["model"],
            "gradients": usage["model"]}


def activation_bytes(shape: Shape) -> int:
    """Activations kept for the backward pass of one micro-batch (see the module doc)."""
    element = shape.element
    mlp = 2 * shape.hidden + 8 * shape.mlp_width if shape.gated_mlp else 3 * shape.hidden + 4 * shape.mlp_width
    per_layer = (15 * shape.hidden + mlp + (5 * shape.heads * shape.block if shape.eager_attention else 0)) \
        * element / 2
    tokens = shape.batch * shape.block
    if shape.checkpointing:
        layers = shape.layers * shape.hidden * element + per_layer
    else:
        layers = shape.layers * per_layer
    logits = shape.vocab * 4 * LOGITS_FP32_COPIES
    return int(tokens * (layers + logits))


def memory_per_device(shape: Shape) -> dict[str, int]:
    terms = training_terms(shape)
    launch, n = shape.launch, shape.launch.processes
    terms["weights"] += shape.frozen_bytes
    terms["optimizer"] = shape.optimizer_bytes
    if launch.parallelism == "ddp" and n > 1:
        terms["gradients"] *= 2  # the reducer's buckets: a second copy
    for term in ("weights", "gradients", "optimizer"):
        if launch.sharded(term):
            terms[term] = -(-terms[term] // n)
    if launch.sharded("weights"):
        terms["compute_copy"] = 2 * shape.largest_layer_bytes * (2 if shape.mixed else 4) // 4
    terms["activations"] = activation_bytes(shape)
    order = ("weights", "compute_copy", "gradients", "optimizer", "activations")
    return {**{key: terms[key] for key in order}, "total": sum(terms[key] for key in order)}
