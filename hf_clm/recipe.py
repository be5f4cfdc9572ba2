"""The recipe: one typed description of a run, read from YAML and overridden by CLI flags.

Four dataclasses are parsed together by ``HfArgumentParser``: :class:`ModelArguments`,
:class:`DataArguments`, transformers' own ``TrainingArguments`` (never re-declared here) and
:class:`RunArguments` (what the run does around training).
Precedence, lowest first: dataclass defaults < :data:`PACKAGE_DEFAULTS` < YAML < CLI flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import is_torch_bf16_gpu_available

from hf_clm.artifacts import write_text_atomic
from hf_clm.errors import HfClmError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
RECIPE_FILENAME = "recipe.yaml"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained AutoModelForCausalLM checkpoint (local path or Hub id). "
                          "Leave unset to train a GPT-2-style model from scratch."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Pretrained tokenizer (local path or Hub id). Defaults to "
                          "model_name_or_path when that is set."},
    )
    train_tokenizer: bool = field(
        default=False,
        metadata={"help": "Train a byte-level BPE tokenizer on the training split."},
    )
    vocab_size: int = field(
        default=8192, metadata={"help": "Largest vocabulary of the trained tokenizer (train_tokenizer: true); a "
                                        "small corpus may give fewer tokens."}
    )
    n_layer: int = field(default=4, metadata={"help": "Transformer blocks (from-scratch model)."})
    n_head: int = field(default=4, metadata={"help": "Attention heads per block (from-scratch model)."})
    n_embd: int = field(default=128, metadata={"help": "Hidden size (from-scratch model)."})
    n_positions: int | None = field(
        default=None,
        metadata={"help": "Context length of a from-scratch model; defaults to block_size."},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "Dropout on residual, embedding and attention (from-scratch model)."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "Attention kernel: sdpa, eager or flash_attention_2."}
    )
    attention_scope: str = field(
        default="block",
        metadata={"help": "What a token of a packed block attends to: 'block' (every earlier token of the "
                          "block) or 'document' (earlier tokens of its own document; positions restart at "
                          "each document). Recorded in the model's config.json; evaluation follows it."},
    )
    peft_method: str | None = field(
        default=None,
        metadata={"help": "Parameter-efficient fine-tuning of model_name_or_path through peft: 'lora'. "
                          "In YAML also as a section, peft: {method: lora, r: 8, ...}."},
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (peft: r)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator, scale = alpha / r (peft: lora_alpha)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path (peft: lora_dropout)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["c_attn"],
        metadata={"help": "Names of the layers that get adapters (peft: target_modules); GPT-2's fused "
                          "attention projection c_attn by default, as in the LoRA paper."},
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={"help": "Modules trained in full and saved with the adapter (peft: modules_to_save), "
                          "e.g. lm_head; by default the adapter holds the LoRA matrices only."},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load model_name_or_path quantized to 4 bits (bitsandbytes, CUDA only; "
                          "pip install 'hf-clm[qlora]') and train LoRA adapters on it."},
    )
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4."})
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16", metadata={"help": "dtype of the matmuls on the 4-bit weights: bfloat16, float16 or float32."}
    )
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantize the quantization constants too (about 0.4 bits per parameter saved)."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id (or local dataset folder) for datasets.load_dataset."}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of dataset_name, e.g. wikitext-2-raw-v1."}
    )
    builtin_corpus: str | None = field(
        default=None,
        metadata={"help": "A corpus every Python has: 'python-stdlib' (the standard library's own "
                          ".py files, without test suites; one document per file)."},
    )
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Training files: paths, globs or directories of .txt, .json, .jsonl, "
                          ".csv or .parquet (one format per split)."},
    )
    validation_files: list[str] | None = field(
        default=None, metadata={"help": "Validation files, same forms as train_files."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    sample_by: str = field(
        default="document",
        metadata={"help": "How .txt files become documents: 'document' (one per file), 'paragraph' "
                          "(split on blank lines) or 'line' (one per non-blank line, EOS in place of the newline)."},
    )
    validation_split_percentage: int = field(
        default=10,
        metadata={"help": "When there is no validation split: the last N%% (1 to 99) of the training documents "
                          "are held out, in order (python-stdlib: about N%% of the files, chosen by a "
                          "hash of their path)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training documents."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation documents."}
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per training block."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenization (datasets.map num_proc)."}
    )
    tokenize_batch_size: int = field(
        default=1000, metadata={"help": "Documents per datasets.map batch while tokenizing."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the training split (datasets IterableDataset): tokenized and cut into "
                          "blocks on the fly, never stored whole. Needs max_steps."},
    )
    shuffle_buffer_size: int = field(
        default=10_000, metadata={"help": "Blocks in the shuffle buffer of a streamed training split."}
    )
    prepared_dataset: str | None = field(
        default=None,
        metadata={"help": "Folder of blocks written by 'hf-clm prepare RECIPE'; train reads it instead of "
                          "tokenizing the corpus."},
    )
    eval_sets: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "More named evaluation sets besides the validation split, evaluated at every "
                          "evaluation and reported by name: {NAME: FILES} (any text files, one document "
                          "per file, or json/jsonl/csv/parquet) or {NAME: {dataset_name: ..., "
                          "dataset_config_name: ..., split: validation, text_column: text}}; on the "
                          "command line as JSON."},
    )


@dataclass
class RunArguments:
    max_tokens: int | None = field(
        default=None,
        metadata={"help": "Training budget in tokens instead of max_steps: max_steps becomes max_tokens / "
                          "(global batch x block_size), rounded up."},
    )
    muon_learning_rate: float | None = field(
        default=None,
        metadata={"help": "optim: muon: learning rate of the Muon group (the 2-D hidden weight matrices), "
                          "scaled per matrix to AdamW's update size; defaults to learning_rate, which the "
                          "AdamW group (embeddings, head, biases, norms) keeps."},
    )
    muon_momentum: float = field(default=0.95, metadata={"help": "optim: muon: Muon's Nesterov momentum."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds a finished run or checkpoints, replacing them."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "After LoRA training, also write the adapter merged into the base model to "
                          "output_dir/merged (loads with AutoModelForCausalLM, without peft)."},
    )
    license: str | None = field(
        default=None, metadata={"help": "License of the trained model, for its Hub model card (e.g. apache-2.0)."}
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Peak dense TFLOP/s of one device, for model FLOPs utilisation (MFU); known "
                          "NVIDIA GPUs are looked up when unset."},
    )


class Recipe(NamedTuple):
    model: ModelArguments
    data: DataArguments
    training: TrainingArguments
    run: RunArguments
    # TrainingArguments values as the recipe gave them (before __post_init__ rewrites them), where
    # they differ from the package's defaults: what `recipe.yaml` records.
    training_values: dict[str, Any]


RECIPE_CLASSES = (ModelArguments, DataArguments, TrainingArguments, RunArguments)

# The package's own defaults for Trainer, where the library's suit a causal-LM run poorly.
PACKAGE_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/default",
    "eval_strategy": "steps",
    "eval_steps": 100,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "report_to": "none",
    "include_num_input_tokens_seen": True,
    # GPT-style models use every parameter in every step: DDP's search for unused ones is an extra
    # autograd traversal per step that finds nothing.
    "ddp_find_unused_parameters": False,
    "dataloader_pin_memory": torch.cuda.is_available(),  # pinning is only useful for host-to-GPU copies
    "disable_tqdm": False,  # the training bar stays while the libraries' logs are quiet (Trainer ties it to them)
}

SAMPLE_BY_CHOICES = ("document", "paragraph", "line")
ATTENTION_SCOPES = ("block", "document")
# attention_scope: document needs a kernel whose mask transformers derives from restarting
# position_ids for any batch size; flash_attention_2/3 split only a batch of one flattened row.
DOCUMENT_SCOPE_KERNELS = ("sdpa", "eager", "flex_attention")
MUON = "muon"  # optim: muon, the package's own addition to TrainingArguments' optimizers
WSD = "warmup_stable_decay"
BUILTIN_CORPORA = ("python-stdlib",)
# The keys that say where the corpus comes from, and those of them that name a source on their own:
# a source given as a flag replaces all of the recipe's corpus keys.
CORPUS_KEYS = ("dataset_name", "dataset_config_name", "builtin_corpus", "train_files", "validation_files")
SOURCE_KEYS = ("dataset_name", "train_files", "builtin_corpus")
# A tokenizer choice given as a flag replaces the recipe's; so does model_name_or_path (a pretrained
# model keeps the tokenizer it was trained with).
TOKENIZER_KEYS = ("tokenizer_name_or_path", "train_tokenizer")
# `--key none` (or null, or '') unsets an optional key; report_to's 'none' is a value of its own.
NULL_SPELLINGS = ("none", "null", "")
NULLABLE_EXCEPTIONS = {"report_to"}
RECIPE_USAGE = "%(prog)s [RECIPE] [--key value ...]"
RESUME_HELP = (" 'auto': the newest complete checkpoint in output_dir, or a fresh start when there is none; "
               "'none' (the default): start fresh.")


class _RecipeParser(HfArgumentParser):
    def error(self, message: str):
        # argparse would print the whole usage block; one line that names the key and value is enough.
        raise HfClmError(flag_error_message(message))


def flag_error_message(message: str) -> str:
    """argparse's complaint about a flag, as `KEY must be WHAT, not VALUE`."""
    kinds = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}
    bad = re.match(r"argument --([\w-]+)[^:]*: invalid (\w+) value: (.*)$", message)
    if bad:
        key, kind, value = bad.groups()
        return f"{key.replace('-', '_')} must be {kinds.get(kind, kind)}, not {value}"
    choice = re.match(r"argument --([\w-]+)[^:]*: invalid choice: (.*?) \(choose from (.*)\)$", message)
    if choice:
        key, value, allowed = choice.groups()
        return f"{key.replace('-', '_')} must be one of {allowed.replace(chr(39), '')}, not {value}"
    truthy = re.match(r"argument --([\w-]+)[^:]*: Truthy value expected: got (.*?) but", message)
    if truthy:
        return f"{truthy.group(1).replace('-', '_')} must be true or false, not '{truthy.group(2)}'"
    missing = re.match(r"argument --([\w-]+)[^:]*: expected (.*)$", message)
    if missing:
        return f"--{missing.group(1).replace('-', '_')} needs a value (expected {missing.group(2)})"
    return f"invalid recipe value: {message}"


def nullable(kind):
    """Wrap a flag's type so that `none`, `null` and '' unset the key."""
    def convert(text: str):
        return None if text.strip().lower() in NULL_SPELLINGS else kind(text)
    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def recipe_parser(command: str = "train") -> HfArgumentParser:
    parser = _RecipeParser(RECIPE_CLASSES, prog=f"hf-clm {command}", usage=RECIPE_USAGE,
                           description=COMMAND_DESCRIPTIONS[command])
    parser.set_defaults(**PACKAGE_DEFAULTS)
    types = field_types()
    for action in parser._actions:
        if action.dest == "resume_from_checkpoint":
            action.help = (action.help or "").rstrip() + RESUME_HELP
        if (action.dest in types and is_optional(types[action.dest]) and action.dest not in NULLABLE_EXCEPTIONS
                and action.type is not None):
            action.type = nullable(action.type)
    parser._option_string_actions["--optim"].choices.append(MUON)
    return parser


COMMAND_DESCRIPTIONS = {
    "train": "Train a causal LM. RECIPE (a YAML file, first or after the flags) gives values; flags override "
             "them; a corpus flag (--dataset_name, --train_files, --builtin_corpus) replaces the recipe's whole "
             "corpus source; '--key none' unsets an optional key.",
    "prepare": "Tokenize a recipe's corpus and cut it into blocks once, into its prepared_dataset folder. "
               "RECIPE and flags as for 'hf-clm train'.",
}


def recipe_keys() -> list[str]:
    return [f.name for cls in RECIPE_CLASSES for f in dataclasses.fields(cls) if f.init]


@functools.cache
def field_types() -> dict[str, Any]:
    """Each recipe key's declared type (from the annotations: HfArgumentParser narrows ``Field.type``)."""
    hints: dict[str, Any] = {}
    for cls in RECIPE_CLASSES:
        hints.update(typing.get_type_hints(cls))
    return {key: hints[key] for key in recipe_keys()}


def type_members(kind) -> tuple:
    origin = typing.get_origin(kind)
    return typing.get_args(kind) if origin in (typing.Union, types.UnionType) else (kind,)


def is_optional(kind) -> bool:
    return type(None) in type_members(kind)


def list_keys() -> set[str]:
    return {key for key, kind in field_types().items()
            if any(typing.get_origin(m) is list for m in type_members(kind))}


def coerce_value(value: Any, kind) -> Any:
    """``value`` as the type member ``kind`` accepts it, or ValueError. Strings are read as on the
    command line (PyYAML reads `3e-4` as text)."""
    origin = typing.get_origin(kind)
    if kind is type(None):
        if value is None:
            return None
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        choices = [member.value for member in kind]
        if value is False and "no" in choices:  # YAML 1.1 reads an unquoted `no` as false
            return "no"
        if isinstance(value, str) and value in choices:
            return value
    elif origin is typing.Literal:
        if value in typing.get_args(kind):
            return value
    elif origin is list or kind is list:
        items = [value] if isinstance(value, str) else value  # `train_files: data.txt` means a list of one
        if isinstance(items, list) and items and all(
                isinstance(item, (str, int, float)) and not isinstance(item, bool) for item in items):
            return [str(item) for item in items]
    elif origin is dict or kind is dict:
        if isinstance(value, dict):
            return value
    else:
        return value  # a type the recipe does not check (e.g. accelerate's ParallelismConfig)
    raise ValueError(value)


def kind_words(kind) -> str:
    origin = typing.get_origin(kind)
    if kind is type(None):
        return "null"
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return "one of " + ", ".join(str(member.value) for member in kind)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(kind)))
    if origin is list or kind is list:
        return "text or a list of text"
    if origin is dict or kind is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(kind, str(kind))


def shown_value(value: Any) -> str:
    return "an empty value" if value is None else repr(value)


def checked_value(key: str, value: Any, name: str | None = None) -> Any:
    """The recipe value converted to the key's type; HfClmError naming the key (as the recipe spells it,
    ``name``), the value and what is allowed."""
    name = name or key
    if key == "optim" and value == MUON:  # not one of transformers' OptimizerNames: the package's own
        return value
    members = type_members(field_types()[key])
    if any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
        members = tuple(m for m in members if m is not str)  # `IntervalStrategy | str`: the str is a member's name
    if isinstance(value, bool):  # true/false means a bool where the key takes one
        members = sorted(members, key=lambda m: m is not bool)
    for member in members:
        try:
            return coerce_value(value, member)
        except ValueError:
            continue
    if value is None:
        raise HfClmError(f"{name} has no value; give {kind_words(members[0])} or remove the line")
    allowed = " or ".join(dict.fromkeys(kind_words(m) for m in members))
    raise HfClmError(f"{name} must be {allowed}, not {shown_value(value)}")


def finite(value: float) -> bool:
    return not (math.isnan(value) or math.isinf(value))


# Range of each numeric key the recipe checks: (accepts the value, what is allowed, in words).
# Checked on the parsed values before any dataclass is built, so before any data work.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: (lambda v: v >= 1, "an integer >= 1") for key in (
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "n_layer",
        "n_head", "n_embd", "tokenize_batch_size", "shuffle_buffer_size", "max_train_samples", "max_eval_samples",
        "preprocessing_num_workers", "lora_r", "save_total_limit")},
    "block_size": (lambda v: v >= 2, "an integer >= 2 (one input and one target)"),
    "n_positions": (lambda v: v >= 2, "an integer >= 2"),
    "vocab_size": (lambda v: v >= 1, "an integer >= 1"),
    "validation_split_percentage": (lambda v: 1 <= v <= 99, "an integer from 1 to 99 (perplexity needs held-out "
                                                            "text; to train on every document give validation_files)"),
    "max_steps": (lambda v: v == -1 or v >= 1, "an integer >= 1, or -1 to train num_train_epochs"),
    "num_train_epochs": (lambda v: finite(v) and v > 0, "a number > 0"),
    "learning_rate": (lambda v: finite(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: finite(v) and v >= 0, "a number >= 0"),
    "max_grad_norm": (lambda v: finite(v) and v >= 0, "a number >= 0 (0 = no clipping)"),
    "warmup_steps": (lambda v: finite(v) and v >= 0, "a number >= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "adam_epsilon": (lambda v: finite(v) and v > 0, "a number > 0"),
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lora_dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "lora_alpha": (lambda v: v > 0, "an integer > 0"),
    "logging_steps": (lambda v: finite(v) and v > 0, "a number > 0 (below 1: a fraction of the training steps)"),
    "eval_steps": (lambda v: finite(v) and v > 0, "a number > 0 (below 1: a fraction of the training steps)"),
    "save_steps": (lambda v: finite(v) and v > 0, "a number > 0 (below 1: a fraction of the training steps)"),
    "dataloader_num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "peak_tflops": (lambda v: finite(v) and v > 0, "a number > 0"),
    "max_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "muon_learning_rate": (lambda v: finite(v) and v > 0, "a number > 0"),
    "muon_momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}


def range_problems(values: dict[str, Any]) -> list[str]:
    return [f"{key} must be {allowed}, not {values[key]!r}" for key, (accepts, allowed) in RANGES.items()
            if values.get(key) is not None and not accepts(values[key])]


def unknown_key_message(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, recipe_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see 'hf-clm train --help' for the keys"
    return f"unknown recipe key '{key}' in {where}{hint}"


# The YAML `peft:` section and the recipe keys its entries stand for.
PEFT_SECTION = {"method": "peft_method", "r": "lora_r", "lora_alpha": "lora_alpha",
                "lora_dropout": "lora_dropout", "target_modules": "lora_target_modules",
                "modules_to_save": "lora_modules_to_save"}
PEFT_METHODS = ("lora",)
BNB_4BIT_QUANT_TYPES = ("nf4", "fp4")
BNB_4BIT_COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


def flatten_peft_section(values: dict[str, Any], path: Path) -> dict[str, Any]:
    section = values.pop("peft", None)
    if section is None:
        return values
    if not isinstance(section, dict):
        raise HfClmError(f"recipe {path}: peft must be a mapping such as {{method: lora, r: 8}}")
    for key, value in section.items():
        if key not in PEFT_SECTION:
            close = difflib.get_close_matches(key, PEFT_SECTION, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; keys: {', '.join(PEFT_SECTION)}"
            raise HfClmError(f"unknown key '{key}' in the peft section of {path}{hint}")
        values[PEFT_SECTION[key]] = value
    return values


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (not: the last wins)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise HfClmError(f"key '{key}' appears twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_recipe_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise HfClmError(f"recipe {path} is not UTF-8 text (byte {err.start}, 0x{err.object[err.start]:02x}); "
                         f"save it as UTF-8") from None


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """The recipe file's values, each checked against its key's type."""
    path = Path(path)
    if not path.is_file():
        raise HfClmError(f"recipe file {path} does not exist")
    text = read_recipe_text(path)
    try:
        values = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise HfClmError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except HfClmError as err:
        raise HfClmError(f"recipe {path}: {err}") from None
    if not isinstance(values, dict):
        raise HfClmError(f"recipe {path} must be a mapping of key: value, not {type(values).__name__}")
    raw_keys = set(values)
    values = flatten_peft_section(values, path)
    known = set(recipe_keys())
    problems = [unknown_key_message(str(key), str(path)) for key in values if key not in known]
    if problems:
        raise HfClmError("; ".join(problems))
    names = {flat: f"peft {key}" for key, flat in PEFT_SECTION.items()} if "peft" in raw_keys else {}
    try:
        return {key: checked_value(key, value, names.get(key)) for key, value in values.items()}
    except HfClmError as err:
        raise HfClmError(f"recipe {path}: {err}") from None


# Recipe keys that name local files or folders, and keys that name a local path or a Hub id.
PATH_KEYS = ("train_files", "validation_files", "prepared_dataset", "output_dir", "resume_from_checkpoint",
             "deepspeed", "fsdp_config", "accelerator_config")
PATH_OR_HUB_KEYS = ("model_name_or_path", "tokenizer_name_or_path", "dataset_name")
NOT_A_PATH = {"auto"}  # resume_from_checkpoint: auto


def looks_local(value: str) -> bool:
    """A path rather than a Hub id: written as one, or naming something that exists here (the
    rule ``from_pretrained`` and ``load_dataset`` follow: an existing local folder wins)."""
    return value.startswith(("~", "/", "./", "../")) or value in (".", "..") or Path(value).expanduser().exists()


def absolute_path(value: str) -> str:
    """``~`` expanded, then relative to the current directory; globs kept (``*.txt`` stays a glob)."""
    return str(Path(os.path.abspath(os.path.expanduser(value))))


def resolve_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Every path key resolved once, the same way, at parse time: ``~`` expanded and relative
    paths taken from the current directory, made absolute. The saved ``recipe.yaml`` therefore
    holds absolute paths and repeats the run from any directory."""
    values = dict(values)
    for key in PATH_KEYS + PATH_OR_HUB_KEYS:
        value = values.get(key)
        if isinstance(value, (list, tuple)):
            values[key] = [absolute_path(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str) and value and value not in NOT_A_PATH and not value.lstrip().startswith("{") \
                and (key in PATH_KEYS or looks_local(value)):
            values[key] = absolute_path(value)
    return values


def canonical_flag(arg: str) -> str:
    """`--train-files=x` -> `--train_files=x`: argparse accepts both spellings, and the logic that
    looks at flag names (corpus sources, the default recipe) sees one."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("-", "_").replace("__", "--", 1) + sep + value


def flag_names(flags: list[str]) -> set[str]:
    return {a[2:].split("=")[0] for a in flags if a.startswith("--")}


def is_recipe_path(arg: str) -> bool:
    return not arg.startswith("-") and arg.lower().endswith((".yaml", ".yml"))


def split_recipe_argv(argv: list[str], command: str = "train") -> tuple[str | None, list[str]]:
    """`[RECIPE] [--flag value ...]` or `[--flag value ...] RECIPE` -> (recipe path or None, flags)."""
    argv = [canonical_flag(a) for a in argv]
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    # A recipe after the flags: the one leftover .yaml that no flag took as its value.
    _, leftover = recipe_parser(command).parse_known_args(argv)
    recipes = [a for a in leftover if is_recipe_path(a)]
    if len(recipes) > 1:
        raise HfClmError(f"several recipe files given ({', '.join(recipes)}); give one")
    if recipes:
        position = len(argv) - 1 - argv[::-1].index(recipes[0])
        return recipes[0], argv[:position] + argv[position + 1:]
    return None, argv


def replaced_sources(values: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    """The recipe's values without those a source flag replaces: a corpus flag drops the recipe's
    whole corpus source; a tokenizer or model_name_or_path flag drops its tokenizer choice."""
    given = flag_names(flags)
    dropped: set[str] = set()
    if given & set(SOURCE_KEYS):
        dropped |= set(CORPUS_KEYS)
    if given & {"model_name_or_path", *TOKENIZER_KEYS}:
        dropped |= set(TOKENIZER_KEYS)
    return {key: value for key, value in values.items() if key not in dropped or key in given}


def package_defaults() -> dict[str, Any]:
    """Every TrainingArguments key's default as this package sets it (what a recipe without the key gets)."""
    parsed = vars(recipe_parser().parse_args([]))
    return {f.name: parsed[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}


def parse_recipe(argv: list[str] | None = None, default_recipe: str | Path | None = None,
                 command: str = "train") -> Recipe:
    """Parse `[RECIPE.yaml] [--flag value ...]` into a validated :class:`Recipe`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path, flags = split_recipe_argv(argv, command)
    path = path or default_recipe
    parser = recipe_parser(command)
    if path is not None:
        # Values from the file become the parser's defaults, so flags override them.
        parser.set_defaults(**replaced_sources(read_recipe_yaml(path), flags))
    namespace, remaining = parser.parse_known_args(flags)
    if remaining:
        flag = next((s for s in remaining if s.startswith("--")), None)
        if flag is None:
            raise HfClmError(f"unexpected argument '{remaining[0]}'; the recipe file must end in .yaml or .yml")
        raise HfClmError(unknown_key_message(flag.lstrip("-").split("=")[0], "the command line"))
    values = resolve_paths({key: None if isinstance(value, list) and value and all(v is None for v in value) else value
              for key, value in vars(namespace).items()})  # `--train_files none`
    problems = range_problems(values)
    given = {**values, **training_rewrites(values)}
    try:
        model, data, training, run = (cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.init})
                                      for cls in RECIPE_CLASSES)
    except ValueError as err:
        raise HfClmError("invalid recipe: " + "; ".join(problems or [str(err).strip().splitlines()[0]])) from None
    defaults = package_defaults()
    training_values = {key: values[key] for key in defaults if values[key] != defaults[key]}
    recipe = Recipe(model, data, training, run, training_values)
    problems += recipe_problems(recipe)
    if problems:
        raise HfClmError("invalid recipe: " + "; ".join(problems))
    apply_token_budget(recipe)
    apply_decay_ratio(recipe)
    return recipe


def training_rewrites(values: dict[str, Any]) -> dict[str, Any]:
    """What TrainingArguments is given instead of the recipe's own value: the AdamW half of
    ``optim: muon`` (Trainer gets the combined optimizer from :mod:`hf_clm.optimizer`), and
    ``use_cpu`` for bf16 on a machine without a GPU (transformers asks for it; autocast then
    runs on the CPU)."""
    rewrites: dict[str, Any] = {}
    if str(values["optim"]) == MUON:
        rewrites["optim"] = "adamw_torch"
    if values["bf16"] and not values["use_cpu"] and not torch.cuda.is_available() \
            and not is_torch_bf16_gpu_available():
        rewrites["use_cpu"] = True
    return rewrites


def uses_muon(recipe: Recipe) -> bool:
    return str(recipe.training_values.get("optim")) == MUON


def tokens_per_step(recipe: Recipe) -> int:
    """Training tokens of one optimizer step: the global batch in blocks x block_size."""
    args = recipe.training
    return (args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            * recipe.data.block_size)


def apply_token_budget(recipe: Recipe) -> None:
    """``max_tokens`` -> ``max_steps``, rounded up; the same steps on resume (same batch, same
    processes), so the LR schedule, built from max_steps, agrees with the checkpoint's."""
    if recipe.run.max_tokens is not None:
        recipe.training.max_steps = -(-recipe.run.max_tokens // tokens_per_step(recipe))


def apply_decay_ratio(recipe: Recipe) -> None:
    """``lr_scheduler_kwargs: {decay_ratio: r}`` for warmup_stable_decay -> ``num_decay_steps``
    = r x max_steps, so the decay phase follows a budget given in tokens."""
    kwargs = recipe.training.lr_scheduler_kwargs
    if isinstance(kwargs, dict) and "decay_ratio" in kwargs:  # a new dict: the recipe keeps decay_ratio
        steps = round(float(kwargs["decay_ratio"]) * recipe.training.max_steps)
        recipe.training.lr_scheduler_kwargs = {**{k: v for k, v in kwargs.items() if k != "decay_ratio"},
                                               "num_decay_steps": steps}


def recipe_problems(recipe: Recipe) -> list[str]:
    model, data = recipe.model, recipe.data
    problems = []
    sources = [name for name in ("dataset_name", "train_files", "builtin_corpus") if getattr(data, name)]
    if len(sources) != 1:
        problems.append("set exactly one of dataset_name, train_files or builtin_corpus"
                        + (f" (got {', '.join(sources)}; unset one with --KEY none)" if sources else ""))
    if data.builtin_corpus and data.builtin_corpus not in BUILTIN_CORPORA:
        problems.append(f"builtin_corpus '{data.builtin_corpus}' is not one of {', '.join(BUILTIN_CORPORA)}")
    if data.sample_by not in SAMPLE_BY_CHOICES:
        problems.append(f"sample_by must be one of {', '.join(SAMPLE_BY_CHOICES)}, not '{data.sample_by}'")
    if model.train_tokenizer and model.tokenizer_name_or_path:
        problems.append("set train_tokenizer: true or tokenizer_name_or_path, not both")
    if model.train_tokenizer and model.model_name_or_path:
        problems.append(f"train_tokenizer: true with model_name_or_path '{model.model_name_or_path}': a pretrained "
                        f"model only works with the tokenizer it was trained with; drop train_tokenizer (or "
                        f"model_name_or_path, to train from scratch)")
    if not (model.train_tokenizer or model.tokenizer_name_or_path or model.model_name_or_path):
        problems.append("no tokenizer: set train_tokenizer: true, tokenizer_name_or_path or model_name_or_path")
    if model.train_tokenizer and model.vocab_size < 260:
        problems.append(f"vocab_size must be at least 260 (256 bytes + special tokens), not {model.vocab_size}")
    if data.streaming and recipe.training.max_steps <= 0 and recipe.run.max_tokens is None:
        problems.append("streaming: true needs max_steps or max_tokens (a stream has no length to count epochs by)")
    if data.streaming and data.prepared_dataset:
        problems.append("set streaming: true or prepared_dataset, not both")
    if model.peft_method and model.peft_method not in PEFT_METHODS:
        problems.append(f"peft method must be one of {', '.join(PEFT_METHODS)}, not '{model.peft_method}'")
    if model.peft_method and not model.model_name_or_path:
        problems.append("peft fine-tunes a pretrained model: set model_name_or_path (a checkpoint or Hub id)")
    if model.load_in_4bit and model.peft_method != "lora":
        problems.append("load_in_4bit trains LoRA adapters on a 4-bit base (QLoRA): add peft: {method: lora}")
    if model.bnb_4bit_quant_type not in BNB_4BIT_QUANT_TYPES:
        problems.append(f"bnb_4bit_quant_type must be one of {', '.join(BNB_4BIT_QUANT_TYPES)}, "
                        f"not '{model.bnb_4bit_quant_type}'")
    if model.bnb_4bit_compute_dtype not in BNB_4BIT_COMPUTE_DTYPES:
        problems.append(f"bnb_4bit_compute_dtype must be one of {', '.join(BNB_4BIT_COMPUTE_DTYPES)}, "
                        f"not '{model.bnb_4bit_compute_dtype}'")
    if recipe.run.merge_adapter and not model.peft_method:
        problems.append("merge_adapter: true needs a peft adapter (peft: {method: lora})")
    if not model.model_name_or_path and model.n_head > 0 and model.n_embd % model.n_head:
        problems.append(f"n_embd ({model.n_embd}) must be divisible by n_head ({model.n_head})")
    problems += training_switch_problems(recipe)
    return problems


def training_switch_problems(recipe: Recipe) -> list[str]:
    """Attention scope, optimizer, schedule and token budget."""
    model, training, run = recipe.model, recipe.training, recipe.run
    problems = []
    if model.attention_scope not in ATTENTION_SCOPES:
        problems.append(f"attention_scope must be one of {', '.join(ATTENTION_SCOPES)}, not '{model.attention_scope}'")
    elif model.attention_scope == "document" and model.attn_implementation not in DOCUMENT_SCOPE_KERNELS:
        problems.append(f"attention_scope: document cannot be honoured by attn_implementation "
                        f"{model.attn_implementation} (it attends across documents in a batch of blocks); use one "
                        f"of {', '.join(DOCUMENT_SCOPE_KERNELS)}")
    if model.attention_scope == "document" and training.use_cache:
        problems.append("attention_scope: document needs use_cache: false (with a KV cache transformers ignores "
                        "the document boundaries)")
    if uses_muon(recipe) and (training.fsdp or training.deepspeed):
        problems.append("optim: muon needs whole weight matrices: not with fsdp or deepspeed (use DDP)")
    if run.max_tokens is not None and training.max_steps > 0:
        problems.append(f"set max_tokens or max_steps, not both (max_tokens {run.max_tokens:,} gives the steps "
                        f"from the global batch)")
    if training.lr_scheduler_type == WSD:
        kwargs = training.lr_scheduler_kwargs if isinstance(training.lr_scheduler_kwargs, dict) else {}
        if not {"num_decay_steps", "decay_ratio"} & set(kwargs):
            problems.append("lr_scheduler_type: warmup_stable_decay needs lr_scheduler_kwargs with decay_ratio "
                            "(fraction of the steps spent decaying, e.g. {decay_ratio: 0.2}) or num_decay_steps")
        elif "decay_ratio" in kwargs and training.max_steps <= 0 and run.max_tokens is None:
            problems.append("lr_scheduler_kwargs decay_ratio needs max_steps or max_tokens")
    return problems


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """Every model/data value and the TrainingArguments the recipe set; itself a valid recipe,
    so `hf-clm train RUN_DIR/recipe.yaml` repeats the run."""
    values = {**dataclasses.asdict(recipe.model), **dataclasses.asdict(recipe.data), **dataclasses.asdict(recipe.run)}
    values.update((key, value) for key, value in recipe.training_values.items()
                  if key != "hub_token")  # a secret never goes into a run's files
    values["output_dir"] = recipe.training.output_dir
    return values


def save_recipe(recipe: Recipe, output_dir: str | Path) -> Path:
    path = Path(output_dir) / RECIPE_FILENAME
    header = ("# Resolved recipe of this run (paths absolute: it runs from any directory). Repeat it with: "
              "hf-clm train " + str(path) + "\n")
    return write_text_atomic(header + yaml.safe_dump(resolved_recipe(recipe), sort_keys=False), path)
