"""The recipe: one typed description of a run.

Four dataclasses: :class:`ModelArguments`, :class:`DataArguments`, transformers' own
``TrainingArguments`` (never re-declared here) and :class:`RunArguments` (what the run does around
training), held together by :class:`Recipe`, which also owns the values derived from them (the
global batch, the tokens of a step). Reading a recipe from YAML and flags, and checking it, is
:mod:`hf_clm.recipe.parser`'s job. Precedence, lowest first: dataclass defaults <
:data:`PACKAGE_DEFAULTS` < YAML < CLI flags.
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from transformers import TrainingArguments

from hf_clm.run.artifacts import write_text_atomic
from hf_clm.run.files import RECIPE_FILENAME

# A time-budget run's max_steps: Trainer needs a step count to loop on; the budget's callback stops it
# long before.
UNBOUNDED_STEPS = 1 << 40


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
                          "each document). Recorded in the model's config.json; evaluation follows it.",
                  "choices": ["block", "document"]},
    )
    peft_method: str | None = field(
        default=None,
        metadata={"help": "Parameter-efficient fine-tuning of model_name_or_path through peft: 'lora'. "
                          "In YAML also as a section, peft: {method: lora, r: 8, ...}.", "choices": ["lora"]},
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
                          "pip install 'hf-clm[qlora]') and train LoRA adapters on it; needs peft_method lora."},
    )
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type.", "choices": ["nf4", "fp4"]})
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16", metadata={"help": "dtype of the matmuls on the 4-bit weights.",
                                     "choices": ["bfloat16", "float16", "float32"]}
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
                          ".py files, without test suites; one document per file).", "choices": ["python-stdlib"]},
    )
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Training files: paths, globs or directories of text files of any suffix (README, "
                          ".md, .py, no suffix: UTF-8 text) or of .json, .jsonl, .csv or .parquet tables (one "
                          "format per split)."},
    )
    validation_files: list[str] | None = field(
        default=None, metadata={"help": "Validation files, same forms as train_files."}
    )
    text_column: str = field(
        default="text",
        metadata={"help": "Column holding the text. A missing column is an error listing the columns there are."},
    )
    sample_by: str = field(
        default="document",
        metadata={"help": "How .txt files become documents: 'document' (one per file), 'paragraph' "
                          "(split on blank lines) or 'line' (one per non-blank line, EOS in place of the newline).",
                  "choices": ["document", "paragraph", "line"]},
    )
    validation_split_percentage: int = field(
        default=10,
        metadata={"help": "When there is no validation split: N%% (1 to 99) of the training documents are "
                          "held out, those with the smallest CRC-32 of their text, whatever their order and the "
                          "same on every machine; both splits keep the corpus's order (python-stdlib: about N%% "
                          "of the files, chosen by a hash of their path)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training documents."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation documents."}
    )
    block_size: int = field(
        default=128, metadata={"help": "Tokens per training block. Larger than the model's context is an error."}
    )
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
        metadata={"help": "Training budget in tokens instead of max_steps (setting both is an error): max_steps "
                          "becomes max_tokens / (global batch x block_size), rounded up. The recipe records "
                          "max_tokens, so a resumed run derives the same steps and its learning-rate schedule "
                          "matches the checkpoint's."},
    )
    max_train_seconds: float | None = field(
        default=None,
        metadata={"help": "Training budget in seconds instead of max_steps/max_tokens (setting another length "
                          "too is an error; evaluation and saving "
                          "excluded, continued on resume): training ends when another step would pass it, and "
                          "the learning-rate schedule (warm-up, decay) follows the fraction of the budget used, "
                          "so a run ends its decay on any machine. warmup_steps is then a fraction (< 1)."},
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
        metadata={"help": "Train into an output_dir that holds a finished run or checkpoints, replacing them. "
                          "Without it, such an output_dir is an error."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "After LoRA training, also write the adapter merged into the base model to "
                          "output_dir/merged (loads with AutoModelForCausalLM, without peft)."},
    )
    license: str | None = field(
        default=None, metadata={"help": "License of the trained model, for its Hub model card (e.g. apache-2.0); "
                                           "push_to_hub requires it."}
    )
    peak_tflops: float | None = field(
        default=None,
        metadata={"help": "Peak dense TFLOP/s of one device, for model FLOPs utilisation (MFU); known "
                          "NVIDIA GPUs (H100, H200, A100, L4, ...; bf16 data-sheet figures) are looked up when unset."},
    )
    rehearse: int | None = field(
        default=None,
        metadata={"help": "Rehearse the run on this machine instead of training it: K optimizer steps of the "
                          "recipe's model and batch on the head of its (local) data, a checkpoint, a resume from "
                          "it, one evaluation of a few batches, then measured step time and peak memory beside "
                          "the plan's (hf-clm plan); written to OUTPUT_DIR-rehearsal, nothing marked finished. At "
                          "least 1."},
    )


class Recipe(NamedTuple):
    model_args: ModelArguments
    data_args: DataArguments
    training_args: TrainingArguments
    run_args: RunArguments
    # TrainingArguments values as the recipe gave them (before __post_init__ rewrites them), where
    # they differ from the package's defaults: what `recipe.yaml` records.
    training_values: dict[str, Any]

    def global_batch_blocks(self, processes: int | None = None) -> int:
        """Blocks of one optimizer step: batch x accumulation x processes (the launch's, unless the
        processes that actually ran are given)."""
        args = self.training_args
        return (args.per_device_train_batch_size * args.gradient_accumulation_steps
                * (args.world_size if processes is None else processes))

    def tokens_per_step(self, processes: int | None = None) -> int:
        """Training tokens of one optimizer step: the global batch in blocks x block_size."""
        return self.global_batch_blocks(processes) * self.data_args.block_size

    def uses_muon(self) -> bool:
        return str(self.training_values.get("optim")) == MUON


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

# attention_scope: document needs a kernel whose mask transformers derives from restarting
# position_ids for any batch size; flash_attention_2/3 split only a batch of one flattened row.
DOCUMENT_SCOPE_KERNELS = ("sdpa", "eager", "flex_attention")
MUON = "muon"  # optim: muon, the package's own addition to TrainingArguments' optimizers
WSD = "warmup_stable_decay"
# The keys that say where the corpus comes from, and those of them that name a source on their own:
# a source given as a flag replaces all of the recipe's corpus keys.
CORPUS_KEYS = ("dataset_name", "dataset_config_name", "builtin_corpus", "train_files", "validation_files")
SOURCE_KEYS = ("dataset_name", "train_files", "builtin_corpus")
# A tokenizer choice given as a flag replaces the recipe's; so does model_name_or_path (a pretrained
# model keeps the tokenizer it was trained with).
TOKENIZER_KEYS = ("tokenizer_name_or_path", "train_tokenizer")
# Recipe keys that name local files or folders, and keys that name a local path or a Hub id.
PATH_KEYS = ("train_files", "validation_files", "prepared_dataset", "output_dir", "resume_from_checkpoint",
             "deepspeed", "fsdp_config", "accelerator_config")
PATH_OR_HUB_KEYS = ("model_name_or_path", "tokenizer_name_or_path", "dataset_name")
# The YAML `peft:` section and the recipe keys its entries stand for.
PEFT_SECTION = {"method": "peft_method", "r": "lora_r", "lora_alpha": "lora_alpha",
                "lora_dropout": "lora_dropout", "target_modules": "lora_target_modules",
                "modules_to_save": "lora_modules_to_save"}


def recipe_fields() -> list[dataclasses.Field]:
    return [f for cls in RECIPE_CLASSES for f in dataclasses.fields(cls) if f.init]


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """Every model/data value and the TrainingArguments the recipe set; itself a valid recipe,
    so `hf-clm train RUN_DIR/recipe.yaml` repeats the run."""
    values = {**dataclasses.asdict(recipe.model_args), **dataclasses.asdict(recipe.data_args),
              **dataclasses.asdict(recipe.run_args)}
    values.update((key, value) for key, value in recipe.training_values.items()
                  if key != "hub_token")  # a secret never goes into a run's files
    values["output_dir"] = recipe.training_args.output_dir
    return values


def rerun_command(output_dir: str | Path) -> str:
    """A command that repeats the run as printed: into a new folder beside it (the run's own
    output_dir holds a finished run, which train refuses to overwrite unasked)."""
    output_dir = Path(output_dir)
    return (f"hf-clm train {shlex.quote(str(output_dir / RECIPE_FILENAME))} --output_dir "
            f"{shlex.quote(str(output_dir.with_name(output_dir.name + '-rerun')))}")


def save_recipe(recipe: Recipe, output_dir: str | Path) -> Path:
    path = Path(output_dir) / RECIPE_FILENAME
    header = ("# Resolved recipe of this run (paths absolute: it runs from any directory). Repeat it into a "
              "new folder with:\n# " + rerun_command(output_dir) + "\n")
    return write_text_atomic(header + yaml.safe_dump(resolved_recipe(recipe), sort_keys=False), path)
