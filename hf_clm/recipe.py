"""The recipe: one typed description of a run, read from YAML and overridden by CLI flags.

Four dataclasses are parsed together by ``HfArgumentParser``: :class:`ModelArguments`,
:class:`DataArguments`, transformers' own ``TrainingArguments`` (never re-declared here) and
:class:`RunArguments` (what the run does around training).
Precedence, lowest first: dataclass defaults < :data:`PACKAGE_DEFAULTS` < YAML < CLI flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

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
        default=8192, metadata={"help": "Vocabulary size of the trained tokenizer (train_tokenizer: true)."}
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
                          "(split on blank lines) or 'line'."},
    )
    validation_split_percentage: int = field(
        default=10,
        metadata={"help": "When there is no validation split: the last N%% of the training documents "
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


@dataclass
class RunArguments:
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
    # they differ from transformers' defaults: what `recipe.yaml` records.
    training_values: dict[str, Any]


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
}

SAMPLE_BY_CHOICES = ("document", "paragraph", "line")
BUILTIN_CORPORA = ("python-stdlib",)


class _RecipeParser(HfArgumentParser):
    def error(self, message: str):
        # argparse would print the whole usage block; one line that names the value is enough.
        raise HfClmError(f"invalid recipe value: {message}")


def recipe_parser() -> HfArgumentParser:
    parser = _RecipeParser((ModelArguments, DataArguments, TrainingArguments, RunArguments), prog="hf-clm train",
                              description="Train a causal LM. RECIPE (a YAML file) gives values; "
                                          "flags override it.")
    parser.set_defaults(**PACKAGE_DEFAULTS)
    return parser


def recipe_keys() -> list[str]:
    return [f.name for cls in (ModelArguments, DataArguments, TrainingArguments, RunArguments)
            for f in dataclasses.fields(cls) if f.init]


def list_keys() -> set[str]:
    return {f.name for cls in (ModelArguments, DataArguments, TrainingArguments, RunArguments)
            for f in dataclasses.fields(cls) if f.init and str(f.type).startswith(("list[", "list |", "typing.List"))}


def unknown_key_message(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, recipe_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see 'hf-clm train --help' for the keys"
    return f"unknown recipe key '{key}' in {where}{hint}"


# The YAML `peft:` section and the recipe keys its entries stand for.
PEFT_SECTION = {"method": "peft_method", "r": "lora_r", "lora_alpha": "lora_alpha",
                "lora_dropout": "lora_dropout", "target_modules": "lora_target_modules"}
PEFT_METHODS = ("lora",)


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


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HfClmError(f"recipe file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise HfClmError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise HfClmError(f"recipe {path} must be a mapping of key: value, not {type(values).__name__}")
    values = flatten_peft_section(values, path)
    for key in list_keys() & set(values):
        if isinstance(values[key], str):  # `train_files: data.txt` means a list of one
            values[key] = [values[key]]
    known = set(recipe_keys())
    problems = [unknown_key_message(key, str(path)) for key in values if key not in known]
    if problems:
        raise HfClmError("; ".join(problems))
    return values


def split_recipe_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """`[RECIPE] [--flag value ...]` -> (recipe path or None, flags)."""
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    return None, list(argv)


def parse_recipe(argv: list[str] | None = None, default_recipe: str | Path | None = None) -> Recipe:
    """Parse `[RECIPE.yaml] [--flag value ...]` into a validated :class:`Recipe`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path, flags = split_recipe_argv(argv)
    path = path or default_recipe
    parser = recipe_parser()
    if path is not None:
        # argparse converts string defaults with the field's type, so YAML's `3e-4` (a string to
        # PyYAML) becomes a float exactly as the same text on the command line would.
        parser.set_defaults(**read_recipe_yaml(path))
    namespace, remaining = parser.parse_known_args(flags)
    if remaining:
        flag = next((s for s in remaining if s.startswith("--")), remaining[0])
        raise HfClmError(unknown_key_message(flag.lstrip("-").split("=")[0], "the command line"))
    values = vars(namespace)
    try:
        model, data, training, run = (cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init})
                                 for cls in (ModelArguments, DataArguments, TrainingArguments, RunArguments))
    except ValueError as err:
        raise HfClmError(f"invalid recipe: {str(err).strip().splitlines()[0]}") from None
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(TrainingArguments) if f.init}
    training_values = {key: values[key] for key in defaults if values[key] != defaults[key]}
    recipe = Recipe(model, data, training, run, training_values)
    validate_recipe(recipe)
    return recipe


def recipe_problems(recipe: Recipe) -> list[str]:
    model, data = recipe.model, recipe.data
    problems = []
    sources = [name for name in ("dataset_name", "train_files", "builtin_corpus") if getattr(data, name)]
    if len(sources) != 1:
        problems.append("set exactly one of dataset_name, train_files or builtin_corpus"
                        + (f" (got {', '.join(sources)})" if sources else ""))
    if data.builtin_corpus and data.builtin_corpus not in BUILTIN_CORPORA:
        problems.append(f"builtin_corpus '{data.builtin_corpus}' is not one of {', '.join(BUILTIN_CORPORA)}")
    if data.sample_by not in SAMPLE_BY_CHOICES:
        problems.append(f"sample_by must be one of {', '.join(SAMPLE_BY_CHOICES)}, not '{data.sample_by}'")
    if data.block_size < 2:
        problems.append(f"block_size must be at least 2 (one input and one target), not {data.block_size}")
    if not 0 <= data.validation_split_percentage < 100:
        problems.append("validation_split_percentage must be in [0, 100)")
    if model.train_tokenizer and model.tokenizer_name_or_path:
        problems.append("set train_tokenizer: true or tokenizer_name_or_path, not both")
    if not (model.train_tokenizer or model.tokenizer_name_or_path or model.model_name_or_path):
        problems.append("no tokenizer: set train_tokenizer: true, tokenizer_name_or_path or model_name_or_path")
    if model.train_tokenizer and model.vocab_size < 260:
        problems.append(f"vocab_size must be at least 260 (256 bytes + special tokens), not {model.vocab_size}")
    if data.streaming and recipe.training.max_steps <= 0:
        problems.append("streaming: true needs max_steps (a stream has no length to count epochs by)")
    if data.streaming and data.prepared_dataset:
        problems.append("set streaming: true or prepared_dataset, not both")
    if model.peft_method and model.peft_method not in PEFT_METHODS:
        problems.append(f"peft method must be one of {', '.join(PEFT_METHODS)}, not '{model.peft_method}'")
    if model.peft_method and not model.model_name_or_path:
        problems.append("peft fine-tunes a pretrained model: set model_name_or_path (a checkpoint or Hub id)")
    if recipe.run.merge_adapter and not model.peft_method:
        problems.append("merge_adapter: true needs a peft adapter (peft: {method: lora})")
    if data.shuffle_buffer_size < 1:
        problems.append(f"shuffle_buffer_size must be at least 1, not {data.shuffle_buffer_size}")
    if not model.model_name_or_path and model.n_embd % model.n_head:
        problems.append(f"n_embd ({model.n_embd}) must be divisible by n_head ({model.n_head})")
    return problems


def validate_recipe(recipe: Recipe) -> None:
    problems = recipe_problems(recipe)
    if problems:
        raise HfClmError("invalid recipe: " + "; ".join(problems))


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
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Resolved recipe of this run. Repeat it with: hf-clm train " + str(path) + "\n"
    path.write_text(header + yaml.safe_dump(resolved_recipe(recipe), sort_keys=False), encoding="utf-8")
    return path
