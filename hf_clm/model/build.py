"""Model: a GPT-2-style decoder sized by the recipe, or any pretrained ``AutoModelForCausalLM``
(full fine-tune, LoRA, or QLoRA: LoRA on a 4-bit base through bitsandbytes).

A pretrained model keeps its vocabulary and embeddings: nothing is resized, so a LoRA adapter
saves the LoRA matrices (and any ``modules_to_save``) only, and a merged model matches its base
model's tokenizer."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from hf_clm.data.attention import check_document_isolation, record_attention_scope
from hf_clm.data.sources import MODEL_ALTERNATIVE, offline_hint, require_hub
from hf_clm.data.tokenizer import UnreadableTokenizer, read_tokenizer
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.schema import ModelArguments
from hf_clm.run.artifacts import damaged_weights
from hf_clm.run.files import ADAPTER_CONFIG, TOKENIZER_FILE

logger = logging.getLogger(__name__)

CONTEXT_ATTRIBUTES = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def context_length(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position embeddings (or rotary table) are built for."""
    for name in CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def scratch_config(model: ModelArguments, block_size: int, vocab_size: int,
                   special_ids: dict[str, int | None] | None = None) -> GPT2Config:
    """The GPT-2 a recipe trains from scratch: the one config train builds and plan sizes.
    ``special_ids``: the tokenizer's (:func:`special_token_ids`); plan sizes the model without them."""
    n_positions = model.n_positions or block_size
    if n_positions < block_size:
        raise HfClmError(f"block_size {block_size} is larger than n_positions {n_positions}; "
                         f"raise n_positions or lower block_size")
    return GPT2Config(
        vocab_size=vocab_size, n_positions=n_positions, n_layer=model.n_layer, n_head=model.n_head,
        n_embd=model.n_embd, resid_pdrop=model.dropout, embd_pdrop=model.dropout, attn_pdrop=model.dropout,
        **(special_ids or {"bos_token_id": None, "eos_token_id": None}))


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """BOS (EOS where the tokenizer has none), EOS and pad ids for a model's config."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return {"bos_token_id": bos, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}


def check_context_holds_block(config: PretrainedConfig, block_size: int) -> None:
    """A block no longer than the model's context: the one check train and plan make."""
    context = context_length(config)
    if context is not None and block_size > context:
        raise HfClmError(f"block_size {block_size} is larger than the model's context of {context} "
                         f"tokens; lower block_size to at most {context}")


def check_4bit_possible(model: ModelArguments) -> None:
    """QLoRA needs bitsandbytes and a CUDA GPU; say so before any data is read."""
    if not model.load_in_4bit:
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise HfClmError("load_in_4bit needs bitsandbytes, which is not installed: pip install 'hf-clm[qlora]' "
                         "(or drop load_in_4bit to train LoRA on the full-precision model)")
    if not torch.cuda.is_available():
        raise HfClmError("load_in_4bit needs a CUDA GPU and this machine has none; drop load_in_4bit to train "
                         "LoRA on the full-precision model")


def quantization_config(model: ModelArguments):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=model.bnb_4bit_quant_type,
                              bnb_4bit_compute_dtype=getattr(torch, model.bnb_4bit_compute_dtype),
                              bnb_4bit_use_double_quant=model.bnb_4bit_use_double_quant)


def check_weights_files(path: Path) -> None:
    """A damaged weights file (cut short by a full disk or a kill) as one line naming it, before
    transformers fails on it somewhere inside."""
    if damaged := damaged_weights(path):
        weights, problem = damaged
        raise HfClmError(f"{weights} is damaged ({problem}); train or download the model again")


def load_pretrained(model: ModelArguments) -> PreTrainedModel:
    check_weights_files(Path(model.model_name_or_path))  # its Hub name and 4-bit support: train's preflight
    extra = {"quantization_config": quantization_config(model)} if model.load_in_4bit else {}
    try:
        return AutoModelForCausalLM.from_pretrained(model.model_name_or_path,
                                                    attn_implementation=model.attn_implementation, **extra)
    except (OSError, ValueError) as err:
        raise HfClmError(f"cannot load a causal LM from '{model.model_name_or_path}': "
                         f"{first_line(err)}{offline_hint(MODEL_ALTERNATIVE)}") from None


def check_embeddings_fit_tokenizer(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Every token id must have an embedding row; the embeddings are never resized."""
    rows = lm.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise HfClmError(f"the tokenizer has {len(tokenizer)} tokens but the model's embeddings only "
                         f"{rows}; use the tokenizer the model was trained with")


def sync_special_token_ids(lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """EOS, and a pad id for ``generate`` (EOS where the tokenizer has no pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for config in (lm.config, lm.generation_config):
        if config is not None:
            config.pad_token_id = pad
            config.eos_token_id = tokenizer.eos_token_id


def adaptable_layer_names(lm: PreTrainedModel) -> list[str]:
    """Names (last path component) of the layers a LoRA adapter can wrap: linear and GPT-2's Conv1D."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in lm.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D)) and name})


def module_names(lm: PreTrainedModel) -> list[str]:
    """Names (last path component) of every named submodule, for ``modules_to_save``."""
    return sorted({name.rsplit(".", 1)[-1] for name, _ in lm.named_modules() if name})


def check_lora_names(lm: PreTrainedModel, model: ModelArguments) -> None:
    available = adaptable_layer_names(lm)
    missing = [name for name in model.lora_target_modules if name not in available]
    if missing:
        raise HfClmError(f"lora target_modules {', '.join(missing)} match no layer of {type(lm).__name__}; "
                         f"its adaptable layers are: {', '.join(available)}")
    modules = module_names(lm)
    missing = [name for name in model.lora_modules_to_save or [] if name not in modules]
    if missing:
        raise HfClmError(f"lora modules_to_save {', '.join(missing)} match no module of {type(lm).__name__}; "
                         f"its modules are: {', '.join(modules)}")


def with_lora_adapter(lm: PreTrainedModel, model: ModelArguments) -> PreTrainedModel:
    """The pretrained model with LoRA adapters on ``lora_target_modules``; only those (and
    ``lora_modules_to_save``) train, and only those are saved."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_lora_names(lm, model)
    targets = [m for n, m in lm.named_modules() if n.rsplit(".", 1)[-1] in model.lora_target_modules]
    config = LoraConfig(task_type="CAUSAL_LM", r=model.lora_r, lora_alpha=model.lora_alpha,
                        lora_dropout=model.lora_dropout, target_modules=list(model.lora_target_modules),
                        modules_to_save=list(model.lora_modules_to_save) if model.lora_modules_to_save else None,
                        fan_in_fan_out=any(isinstance(m, Conv1D) for m in targets))  # Conv1D stores W transposed
    if model.load_in_4bit:
        lm = prepare_model_for_kbit_training(lm)
    adapted = get_peft_model(lm, config)
    trainable, total = adapted.get_nb_trainable_parameters()
    logger.info("LoRA r=%d on %s: %s trainable of %s parameters (%.3f%%)", model.lora_r,
                ", ".join(model.lora_target_modules), f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return adapted


def build_model(model: ModelArguments, tokenizer: PreTrainedTokenizerBase, block_size: int) -> PreTrainedModel:
    """The model to train, checked against the tokenizer and the block size."""
    if model.model_name_or_path:
        lm = load_pretrained(model)
        check_embeddings_fit_tokenizer(lm, tokenizer)
    else:
        config = scratch_config(model, block_size, len(tokenizer), special_token_ids(tokenizer))
        lm = AutoModelForCausalLM.from_config(config, attn_implementation=model.attn_implementation)
    check_context_holds_block(lm.config, block_size)
    sync_special_token_ids(lm, tokenizer)
    record_attention_scope(lm, model.attention_scope)
    if model.attention_scope == "document":
        check_document_isolation(lm)
    logger.info("Model: %s, %.2fM parameters", type(lm).__name__, lm.num_parameters() / 1e6)
    return with_lora_adapter(lm, model) if model.peft_method == "lora" else lm


def is_adapter_dir(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def load_adapter_model(path: Path, **kwargs) -> PreTrainedModel:
    from peft import AutoPeftModelForCausalLM

    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if isinstance(base, str) and base.startswith(("/", "./", "../", "~")) and not Path(base).expanduser().exists():
        raise HfClmError(f"the base model folder {base} named in {path / ADAPTER_CONFIG} is missing (moved or "
                         f"deleted); put the base model back there, or set base_model_name_or_path in "
                         f"{ADAPTER_CONFIG} to where it is now")
    try:
        return AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise HfClmError(f"cannot load the base model '{base}' of the adapter in {path}: "
                         f"{first_line(err)}") from None


DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def default_device() -> str:
    """The accelerator when there is one (CUDA, then Apple's MPS), else the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def inference_device(name: str | None) -> torch.device:
    name = name or default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HfClmError(f"--device {name} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HfClmError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise HfClmError(f"--device {name}: Apple's MPS backend is not available here; use --device cpu")
    return device


def check_dtype_runs(dtype_name: str, device: torch.device) -> None:
    """Refuse a dtype the device cannot compute in, before loading any weights."""
    if dtype_name not in DTYPES:
        raise HfClmError(f"--dtype {dtype_name} is not one of {', '.join(DTYPES)}")
    if dtype_name == "auto":
        return
    if device.type == "cuda" and DTYPES[dtype_name] is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise HfClmError(f"--dtype bfloat16: the GPU {torch.cuda.get_device_name(device)} cannot compute in "
                         f"bfloat16; use --dtype float16 or float32")
    try:
        probe = torch.ones(4, 4, dtype=DTYPES[dtype_name], device=device)
        torch.nn.functional.softmax(probe @ probe, dim=-1).sum().item()
    except (RuntimeError, TypeError) as err:
        raise HfClmError(f"--dtype {dtype_name} cannot run on {device}: {first_line(err)}; "
                         f"use --dtype float32") from None


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def unreachable_hint(name_or_path: str) -> str:
    return (f"'{name_or_path}' is not a local folder and could not be fetched from the Hub (offline, or "
            f"HF_HUB_OFFLINE=1 is set); pass a local folder, or download it where the Hub is reachable "
            f"('hf download {name_or_path} --local-dir DIR')")


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in (TOKENIZER_FILE, "tokenizer_config.json"))


def missing_model_files(path: Path) -> list[str]:
    """What a local model folder lacks to be loaded (nothing for a complete one): a folder an
    interrupted training or merge left holds some of the files only."""
    if is_adapter_dir(path):
        return [] if any(path.glob("adapter_model.*")) else ["adapter weights (adapter_model.safetensors)"]
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        missing.append("model weights (*.safetensors)")
    return missing + ([] if has_tokenizer(path) else ["tokenizer (tokenizer.json)"])


def load_tokenizer_for(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    path = Path(name_or_path)
    source = name_or_path
    if path.is_dir() and not has_tokenizer(path):
        if not is_adapter_dir(path):
            raise HfClmError(f"{path} holds no tokenizer (tokenizer.json); pass a finished run directory")
        source = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    try:
        return read_tokenizer(source)
    except UnreadableTokenizer as err:
        hint = unreachable_hint(str(source)) if not Path(str(source)).exists() else \
            f"{err.damaged} is damaged ({err.reason})" if err.damaged else err.reason
        raise HfClmError(f"cannot load a tokenizer from {source}: {hint}") from None


def load_for_inference(name_or_path: str, device: str | None = None, dtype: str = "auto"
                       ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model (evaluation mode, on ``device``, in ``dtype``) and tokenizer of a run directory, a LoRA
    adapter directory, or anything ``from_pretrained`` accepts (a Hub id such as ``gpt2``). The one
    way commands load a model."""
    target = inference_device(device)
    check_dtype_runs(dtype, target)
    path = Path(name_or_path).expanduser()
    if path.exists() and not path.is_dir():
        raise HfClmError(f"{name_or_path} is not a directory; pass a run directory or a model id")
    require_hub("MODEL", name_or_path, "pass a local run or model directory")
    if path.is_dir() and (missing := missing_model_files(path)):
        raise HfClmError(f"{name_or_path} is not a complete model: no {', no '.join(missing)}; pass a finished run "
                         f"directory (a folder left by an interrupted training or merge is not one: run it again)")
    tokenizer = load_tokenizer_for(path if path.exists() else name_or_path)
    check_weights_files(path)
    try:
        if path.exists() and is_adapter_dir(path):
            model = load_adapter_model(path, dtype=DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(str(path) if path.exists() else name_or_path,
                                                         dtype=DTYPES[dtype])
    except (OSError, ValueError) as err:
        hint = first_line(err) if path.exists() else unreachable_hint(name_or_path)
        raise HfClmError(f"cannot load a causal LM from {name_or_path}: {hint}") from None
    model.to(target).eval()
    return model, tokenizer
