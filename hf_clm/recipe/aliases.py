"""Keys of other trainers: run_clm.py's names read as this package's keys (each with a one-line
note), and the keys of axolotl, litgpt and nanoGPT answered with their equivalent here.

Imports no library: the command line's key check runs before torch and transformers are imported.
"""

from __future__ import annotations

from typing import Any

from hf_clm.errors import HfClmError

# run_clm.py's single-file keys: read as this package's, which also take several files, globs and folders.
ALIASES = {"train_file": "train_files", "validation_file": "validation_files"}
# run_clm.py's model_type: from scratch this package builds a GPT-2-style model, the only type it takes.
MODEL_TYPE, SCRATCH_MODEL_TYPE = "model_type", "gpt2"
# TrainingArguments keys run_clm.py needs and hf-clm accepts, though they change nothing here.
NOTED = {
    "do_train": "do_train changes nothing here: hf-clm train always trains (a finished run trains no further)",
    "do_eval": "do_eval changes nothing here: hf-clm train always evaluates the final weights and writes "
               "perplexity.json; eval_strategy: no turns off the evaluations during training",
}
# Keys of other trainers' configs: (whose, the equivalent here).
FOREIGN: dict[str, tuple[str, str]] = {
    "base_model": ("axolotl's", "model_name_or_path"),
    "micro_batch_size": ("axolotl's and litgpt's", "per_device_train_batch_size"),
    "sequence_len": ("axolotl's", "block_size"),
    "num_epochs": ("axolotl's and litgpt's", "num_train_epochs"),
    "val_set_size": ("axolotl's", "validation_split_percentage (a percentage from 1 to 99, not a fraction)"),
    "datasets": ("axolotl's", "dataset_name (a Hub dataset) or train_files (local files)"),
    "lr_scheduler": ("axolotl's", "lr_scheduler_type"),
    "wandb_project": ("axolotl's", "report_to: wandb, with the project in WANDB_PROJECT"),
    "out_dir": ("litgpt's and nanoGPT's", "output_dir"),
    "global_batch_size": ("litgpt's", "per_device_train_batch_size x gradient_accumulation_steps x processes"),
    "precision": ("litgpt's", "bf16: true or fp16: true"),
    "checkpoint_dir": ("litgpt's", "model_name_or_path"),
    "batch_size": ("nanoGPT's", "per_device_train_batch_size"),
    "max_iters": ("nanoGPT's", "max_steps"),
    "lr_decay_iters": ("nanoGPT's", "max_steps (the schedule decays over the whole run)"),
    "warmup_iters": ("nanoGPT's", "warmup_steps"),
    "eval_interval": ("nanoGPT's", "eval_steps"),
    "eval_iters": ("nanoGPT's", "max_eval_samples (documents, not batches)"),
    "log_interval": ("nanoGPT's", "logging_steps"),
    "grad_clip": ("nanoGPT's", "max_grad_norm"),
    "beta1": ("nanoGPT's", "adam_beta1"),
    "beta2": ("nanoGPT's", "adam_beta2"),
    "min_lr": ("nanoGPT's", "lr_scheduler_type: cosine_with_min_lr with lr_scheduler_kwargs: {min_lr: ...}"),
    "init_from": ("nanoGPT's", "model_name_or_path"),
    "compile": ("nanoGPT's", "torch_compile"),
    "dtype": ("nanoGPT's", "bf16: true or fp16: true"),
    "dataset": ("nanoGPT's", "dataset_name (a Hub dataset) or train_files (local files)"),
    "wandb_log": ("nanoGPT's", "report_to: wandb"),
    "tokenizer_name": ("run_clm.py's", "tokenizer_name_or_path"),
    "config_name": ("run_clm.py's", "none: with model_name_or_path unset a GPT-2-style model is built from "
                                    "n_layer, n_head, n_embd"),
    "config_overrides": ("run_clm.py's", "n_layer, n_head, n_embd, n_positions, dropout"),
    "keep_linebreaks": ("run_clm.py's", "sample_by (document, paragraph or line)"),
}
PYTHON_CONFIG = ("recipes are YAML; nanoGPT-style Python configs are not read: write its values as a YAML "
                 "recipe of key: value lines (e.g. batch_size = 12 becomes per_device_train_batch_size: 12)")


def foreign_key_hint(key: str) -> str | None:
    """'that is axolotl's key: here model_name_or_path', for a key another trainer's config uses."""
    if key not in FOREIGN:
        return None
    whose, equivalent = FOREIGN[key]
    return f"that is {whose} key: here {equivalent}"


def is_python_config(arg: str) -> bool:
    return not arg.startswith("-") and arg.lower().endswith(".py")


def model_type_note(value: Any, pretrained: bool) -> str:
    """The note on run_clm.py's model_type: gpt2 is what hf-clm builds from scratch; any other type is refused."""
    if pretrained:
        return f"model_type {value} is ignored: the checkpoint's own config (model_name_or_path) decides the model"
    if str(value).lower() != SCRATCH_MODEL_TYPE:
        raise HfClmError(f"model_type {value}: from scratch hf-clm builds a GPT-2-style model only (sized by "
                         f"n_layer, n_head, n_embd); drop model_type, or fine-tune a {value} checkpoint with "
                         f"model_name_or_path")
    return "model_type gpt2: hf-clm builds a GPT-2-style model from scratch anyway (n_layer, n_head, n_embd)"


def alias_note(alias: str) -> str:
    return f"{alias} is run_clm.py's name: read as {ALIASES[alias]}"


def renamed_values(values: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """A recipe file's values with run_clm.py's aliases under this package's names (and model_type taken
    out, its note given); the notes to log."""
    values, notes = dict(values), []
    for alias, key in ALIASES.items():
        if alias in values:
            if key in values:
                raise HfClmError(f"{where} gives both {alias} and {key}; keep {key}")
            values[key] = values.pop(alias)
            notes.append(alias_note(alias))
    if MODEL_TYPE in values:
        notes.append(model_type_note(values.pop(MODEL_TYPE), bool(values.get("model_name_or_path"))))
    return values, notes + [NOTED[key] for key in NOTED if key in values]


def renamed_flags(flags: list[str], pretrained: bool) -> tuple[list[str], list[str]]:
    """Command-line flags with run_clm.py's aliases renamed and ``--model_type VALUE`` taken out; the notes."""
    kept, notes, index = [], [], 0
    while index < len(flags):
        arg = flags[index]
        name, has_value, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in ALIASES:
            kept.append(f"--{ALIASES[name]}" + (f"={value}" if has_value else ""))
            notes.append(alias_note(name))
        elif name == MODEL_TYPE:
            if not has_value:
                if index + 1 >= len(flags):
                    raise HfClmError("--model_type needs a value (expected one argument)")
                index, value = index + 1, flags[index + 1]
            notes.append(model_type_note(value, pretrained))
        else:
            if name in NOTED:
                notes.append(NOTED[name])
            kept.append(arg)
        index += 1
    return kept, notes
