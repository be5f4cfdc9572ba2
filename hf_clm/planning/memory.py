"""``hf-clm plan``: what a recipe's run needs (parameters, memory per device, checkpoint size, tokens,
time) without training or downloading anything. The model is built on the ``meta`` device from its
config (a local folder's ``config.json``, a Hub model's cached config, else the recipe's shape keys),
so the parameters are counted exactly and no weights are allocated.

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
  bytes at 2 bytes per element, d the hidden size, h the heads, T the block; scaled by
  (bytes per element / 2) for fp32. 34·d is 15·d for the attention block and the layer norms plus
  19·d for a 4·d MLP (3·d + 4·I for an MLP of width I; a gated MLP such as Llama's keeps 2·d + 8·I).
  5·h·T is the attention scores and their softmax; sdpa and flash attention never store them, only
  ``eager`` does. Gradient checkpointing keeps each layer's input (2·d bytes per token at 2 bytes per
  element) plus one layer's full activations, recomputed in the backward pass. Then the logits:
  batch·T·vocab in fp32 twice (the logits the loss upcasts and the log-probabilities cross-entropy
  saves; mixed precision adds the 16-bit logits the head produced), all alive while the loss runs.
* ``fits``: the total against the device's memory less 10% for the CUDA context, NCCL's buffers and
  the caching allocator's fragmentation.

Time to finish = tokens x FLOPs per token / (MFU x peak FLOP/s x processes), FLOPs per token being
the one definition :func:`hf_clm.training.throughput.flops_per_token` uses for MFU; the MFU is 40% unless
``--mfu`` says otherwise (nanoGPT and litgpt report 35-50% for bf16 dense GPT training on A100/H100).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml

from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.schema import Recipe
from hf_clm.run.gpus import DEFAULT_MFU, GPUS, gpus_with_memory  # noqa: F401 (DEFAULT_MFU: the rehearsal reads it here)

USABLE_FRACTION = 0.9  # of a device's memory; the rest: CUDA context, NCCL buffers, fragmentation
GIB = 2**30
STATE_FILE_BYTES = 16 * 1024  # scheduler.pt, trainer_state.json, training_args.bin, one rng_state per process
LOGITS_FP32_COPIES = 2
QUANT_BLOCK, OPTIMIZER_8BIT_BLOCK = 64, 256  # values per fp32 scale: bitsandbytes' 4-bit weights, 8-bit states
# Which memory terms each kind of launch divides by the processes.
SHARDED_TERMS = {
    "none": (), "ddp": (), "fsdp full_shard": ("weights", "gradients", "optimizer"),
    "fsdp shard_grad_op": ("gradients", "optimizer"), "deepspeed zero-0": (), "deepspeed zero-1": ("optimizer",),
    "deepspeed zero-2": ("gradients", "optimizer"), "deepspeed zero-3": ("weights", "gradients", "optimizer"),
}


class Launch(NamedTuple):
    processes: int
    parallelism: str  # a key of SHARDED_TERMS
    activation_checkpointing: bool = False  # asked for by an FSDP accelerate config

    def sharded(self, term: str) -> bool:
        return term in SHARDED_TERMS[self.parallelism]


class Device(NamedTuple):
    name: str
    memory_bytes: int
    peak_flops: float | None

    def usable_bytes(self) -> int:
        return int(self.memory_bytes * USABLE_FRACTION)


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
    launch: Launch


def known_gpus() -> dict[str, Any]:
    return gpus_with_memory()


def normalized(name: str) -> str:
    name = name.lower().replace("nvidia", "").replace("geforce", "")
    return "".join(c for c in name if c.isalnum())


def named_device(name: str) -> Device:
    gpus = {normalized(key): (key, gpu) for key, gpu in GPUS.items()}
    key, gpu = gpus.get(normalized(name), (None, None))
    if gpu is None or not gpu.memory_bytes:
        sizes = [k for k in known_gpus() if k.startswith(key + " ")] if key else []
        hint = f"{key} comes in several sizes: name one of {', '.join(sizes)}" if sizes else \
            f"unknown --gpu {name!r}; known: {', '.join(known_gpus())}"
        raise HfClmError(f"{hint} (or give --gpu_memory_gb X --gpu_tflops Y)")
    return Device(key, gpu.memory_bytes, gpu.peak_bf16_flops)


def planned_device(gpu: str | None, memory_gb: float | None, tflops: float | None) -> Device | None:
    if gpu and (memory_gb or tflops):
        raise HfClmError("give --gpu NAME or --gpu_memory_gb X --gpu_tflops Y, not both")
    if gpu:
        return named_device(gpu)
    if memory_gb is None:
        if tflops is not None:
            raise HfClmError("--gpu_tflops needs --gpu_memory_gb (the device's memory in GiB)")
        return None
    if not (memory_gb > 0 and (tflops is None or tflops > 0)):
        raise HfClmError(f"--gpu_memory_gb and --gpu_tflops must be numbers > 0, not {memory_gb} and {tflops}")
    return Device(f"{memory_gb:g} GiB device", int(memory_gb * GIB), tflops * 1e12 if tflops else None)


# ---- the launch ----

def accelerate_parallelism(config: dict) -> tuple[str | None, bool]:
    """(parallelism, activation checkpointing) of an accelerate config file's distributed_type."""
    kind = str(config.get("distributed_type", "NO")).upper()
    if kind == "FSDP":
        fsdp = config.get("fsdp_config") or {}
        strategy = str(fsdp.get("fsdp_sharding_strategy", "")).upper()
        reshard = fsdp.get("fsdp_reshard_after_forward", True)
        grad_op = strategy in ("SHARD_GRAD_OP", "2") or str(reshard).upper() in ("FALSE", "SHARD_GRAD_OP")
        no_shard = strategy in ("NO_SHARD", "3")
        parallelism = "ddp" if no_shard else "fsdp shard_grad_op" if grad_op else "fsdp full_shard"
        return parallelism, bool(fsdp.get("fsdp_activation_checkpointing", False))
    if kind == "DEEPSPEED":
        deepspeed = config.get("deepspeed_config") or {}
        if deepspeed.get("deepspeed_config_file"):
            return f"deepspeed zero-{zero_stage(deepspeed['deepspeed_config_file'])}", False
        return f"deepspeed zero-{int(deepspeed.get('zero_stage', 0))}", False
    return None, False


def read_accelerate_config(path: str) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise HfClmError(f"--accelerate_config {path}: {first_line(err)}") from None
    if not isinstance(config, dict):
        raise HfClmError(f"--accelerate_config {path} is not an accelerate config (a mapping of keys)")
    return config


def zero_stage(deepspeed: str | dict) -> int:
    """The ZeRO stage of a DeepSpeed config (a JSON file or a dict)."""
    if isinstance(deepspeed, str) and not deepspeed.lstrip().startswith("{"):
        try:
            deepspeed = json.loads(Path(deepspeed).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise HfClmError(f"deepspeed config {deepspeed}: {first_line(err)}") from None
    elif isinstance(deepspeed, str):
        deepspeed = json.loads(deepspeed)
    return int((deepspeed.get("zero_optimization") or {}).get("stage", 0))


def recipe_fsdp(recipe: Recipe) -> str | None:
    args = recipe.training_args
    if not args.fsdp:
        return None
    options = {str(getattr(o, "value", o)) for o in args.fsdp} if isinstance(args.fsdp, (list, tuple)) else set()
    if "no_shard" in options:
        return "ddp"
    reshard = (args.fsdp_config or {}).get("reshard_after_forward", True)
    grad_op = options & {"shard_grad_op", "hybrid_shard_zero2"} or str(reshard).lower() in ("false", "shard_grad_op")
    return "fsdp shard_grad_op" if grad_op else "fsdp full_shard"


def planned_launch(recipe: Recipe, processes: int | None, accelerate_config: str | None,
                   deepspeed: Any) -> Launch:
    """Processes: --processes, else the accelerate config's num_processes, else 1. Parallelism: the
    recipe's deepspeed (its ZeRO stage) or fsdp, else the accelerate config's, else DDP over several
    processes."""
    if processes is not None and processes < 1:
        raise HfClmError(f"--processes must be at least 1, not {processes}")
    config = read_accelerate_config(accelerate_config) if accelerate_config else {}
    processes = processes or int(config.get("num_processes") or 1)
    parallelism, checkpointing = accelerate_parallelism(config)
    if deepspeed:
        parallelism = f"deepspeed zero-{zero_stage(deepspeed)}"
    parallelism = recipe_fsdp(recipe) or parallelism or ("ddp" if processes > 1 else "none")
    if parallelism not in SHARDED_TERMS:
        raise HfClmError(f"{parallelism}: ZeRO stages are 0 to 3")
    return Launch(processes, parallelism, checkpointing)


# ---- the model, on the meta device ----

def model_config(recipe: Recipe) -> tuple[Any, str]:
    """The config the run's model is built from, and where it came from, in words."""
    from transformers import AutoConfig

    model = recipe.model_args
    if model.model_name_or_path:
        name = model.model_name_or_path
        try:
            return AutoConfig.from_pretrained(name, local_files_only=True), f"the config of {name}"
        except (OSError, ValueError) as err:
            if Path(name).exists():
                raise HfClmError(f"cannot read the config of {name}: {first_line(err)}") from None
        return scratch_config(recipe), (f"the recipe's n_layer/n_head/n_embd ({name}'s config is not in the local "
                                        f"cache: a GPT-2 of those shapes stands for it)")
    vocab, source = scratch_vocab(model)
    return scratch_config(recipe, vocab), f"GPT-2 from the recipe's shape keys, vocabulary {vocab:,} ({source})"


def scratch_vocab(model) -> tuple[int, str]:
    from hf_clm.data.tokenizer import UnreadableTokenizer, read_tokenizer

    if model.tokenizer_name_or_path and not model.train_tokenizer:
        try:
            return len(read_tokenizer(model.tokenizer_name_or_path)), f"the tokenizer {model.tokenizer_name_or_path}"
        except UnreadableTokenizer:
            return model.vocab_size, (f"vocab_size: the tokenizer {model.tokenizer_name_or_path} is not in the "
                                      f"local cache; give --vocab_size N for its size")
    return model.vocab_size, "vocab_size, the most a trained tokenizer gets"


def scratch_config(recipe: Recipe, vocab: int | None = None):
    from transformers import GPT2Config

    model, block = recipe.model_args, recipe.data_args.block_size
    return GPT2Config(vocab_size=vocab or model.vocab_size, n_positions=max(model.n_positions or block, block),
                      n_layer=model.n_layer, n_head=model.n_head, n_embd=model.n_embd, bos_token_id=None,
                      eos_token_id=None)


def meta_model(recipe: Recipe, config):
    """The model on the meta device: shapes and dtypes, no memory. (accelerate's init_empty_weights
    unties GPT-2's tied head, doubling its embedding; the meta device keeps the tie.)"""
    from transformers import AutoModelForCausalLM

    dtype = getattr(config, "dtype", None) if recipe.model_args.model_name_or_path else None
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32,
                                                attn_implementation=recipe.model_args.attn_implementation)


def with_adapter(lm, recipe: Recipe):
    from hf_clm.model.build import with_lora_adapter

    if recipe.model_args.peft_method != "lora":
        return lm
    model_logger = logging.getLogger("hf_clm.model.build")
    level = model_logger.level
    model_logger.setLevel(logging.WARNING)  # its "LoRA r=... trainable" line is about a run, not a plan
    try:
        with torch.device("meta"):
            return with_lora_adapter(lm, dataclasses.replace(recipe.model_args, load_in_4bit=False))
    finally:
        model_logger.setLevel(level)


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
        launch=launch)


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
    element = 2 if shape.mixed else 4
    mlp = 2 * shape.hidden + 8 * shape.mlp_width if shape.gated_mlp else 3 * shape.hidden + 4 * shape.mlp_width
    per_layer = (15 * shape.hidden + mlp + (5 * shape.heads * shape.block if shape.eager_attention else 0)) \
        * element / 2
    tokens = shape.batch * shape.block
    if shape.checkpointing:
        layers = shape.layers * shape.hidden * element + per_layer
    else:
        layers = shape.layers * per_layer
    logits = shape.vocab * (4 * LOGITS_FP32_COPIES + (element if shape.mixed else 0))
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
