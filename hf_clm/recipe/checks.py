"""Recipe checks: each value against its key's type, choices and range, then the keys against
each other. Every problem is a message naming the key, the value and what is allowed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hf_clm.errors import HfClmError
from hf_clm.recipe.mixture import mixture_sources
from hf_clm.recipe.ranges import RANGES, range_problems
from hf_clm.recipe.schema import DOCUMENT_SCOPE_KERNELS, WSD, Recipe
from hf_clm.recipe.types import field_defaults
from hf_clm.run.files import ADAPTER_CONFIG

# A rehearsal measures a few steps; more than this is a real run started by mistake.
REHEARSE_MAX_STEPS = 10_000


def rehearse_problem(values: dict[str, Any]) -> str | None:
    """``rehearse`` K above the recipe's own max_steps, or above REHEARSE_MAX_STEPS: not a rehearsal."""
    steps, own = values["rehearse"], values.get("max_steps")
    if isinstance(own, int) and own > 0 and steps > own:
        return (f"rehearse {steps:,} is more steps than the run itself trains (max_steps {own:,}); rehearse at "
                f"most {own:,} steps (a rehearsal measures a few)")
    if steps > REHEARSE_MAX_STEPS:
        return (f"rehearse must be at most {REHEARSE_MAX_STEPS:,} steps, not {steps:,}: a rehearsal measures a "
                f"few steps; train the run itself without --rehearse")
    return None


def recipe_range_problems(values: dict[str, Any]) -> list[str]:
    return range_problems(RANGES, values)


def recipe_problems(recipe: Recipe) -> list[str]:
    model, data = recipe.model_args, recipe.data_args
    problems = corpus_problems(model, data)
    if data.streaming and recipe.training_args.max_steps <= 0 and recipe.run_args.max_tokens is None \
            and recipe.run_args.max_train_seconds is None:
        problems.append("streaming: true needs max_steps, max_tokens or max_train_seconds (a stream has no length to "
                        "count epochs by)")
    if data.mixture is not None and recipe.training_args.max_steps <= 0 and recipe.run_args.max_tokens is None:
        problems.append("mixture: needs max_steps or max_tokens (its interleaved order is laid out for the budget)")
    problems += model_problems(recipe)
    problems += training_switch_problems(recipe) + inapplicable_key_problems(recipe)
    return problems


def corpus_problems(model, data) -> list[str]:
    """The corpus and tokenizer keys against each other: what ``hf-clm prepare`` checks of a recipe."""
    problems = []
    sources = [name for name in ("dataset_name", "train_files", "builtin_corpus") if getattr(data, name)]
    if data.mixture is not None:
        if sources:
            problems.append(f"mixture: names its sources itself; unset {', '.join(sources)} (--KEY none)")
        if data.streaming:
            problems.append("mixture: is not streamed; drop streaming: true")
        try:
            mixture_sources(data.mixture)
        except HfClmError as err:
            problems.append(str(err))
    elif data.mixture_exhausted != "repeat":
        problems.append(f"mixture_exhausted: {data.mixture_exhausted} applies to a mixture only; add mixture: or unset it")
    if data.mixture is None and len(sources) != 1:
        problems.append("set exactly one of dataset_name, train_files or builtin_corpus"
                        + (f" (got {', '.join(sources)}; unset one with --KEY none)" if sources else ""))
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
    if data.streaming and data.prepared_dataset:
        problems.append("set streaming: true or prepared_dataset, not both")
    return problems


def model_problems(recipe: Recipe) -> list[str]:
    model = recipe.model_args
    problems = []
    if model.model_name_or_path and (Path(model.model_name_or_path) / ADAPTER_CONFIG).is_file():
        problems.append(f"model_name_or_path {model.model_name_or_path} is a LoRA adapter ({ADAPTER_CONFIG}), not a "
                        f"model; merge it into its base model first (hf-clm merge {model.model_name_or_path}) and "
                        f"train from the merged folder")
    if model.peft_method and not model.model_name_or_path:
        problems.append("peft fine-tunes a pretrained model: set model_name_or_path (a checkpoint or Hub id)")
    if model.load_in_4bit and model.peft_method != "lora":
        problems.append("load_in_4bit trains LoRA adapters on a 4-bit base (QLoRA): add peft: {method: lora}")
    if recipe.run_args.merge_adapter and not model.peft_method:
        problems.append("merge_adapter: true needs a peft adapter (peft: {method: lora})")
    if not model.model_name_or_path and model.n_head > 0 and model.n_embd % model.n_head:
        problems.append(f"n_embd ({model.n_embd}) must be divisible by n_head ({model.n_head})")
    return problems


def training_switch_problems(recipe: Recipe) -> list[str]:
    """Attention scope, optimizer, schedule and token budget."""
    model, training, run = recipe.model_args, recipe.training_args, recipe.run_args
    problems = []
    if model.attention_scope == "document" and model.attn_implementation not in DOCUMENT_SCOPE_KERNELS:
        problems.append(f"attention_scope: document cannot be honoured by attn_implementation "
                        f"{model.attn_implementation} (it attends across documents in a batch of blocks); use one "
                        f"of {', '.join(DOCUMENT_SCOPE_KERNELS)}")
    if model.attention_scope == "document" and training.use_cache:
        problems.append("attention_scope: document needs use_cache: false (with a KV cache transformers ignores "
                        "the document boundaries)")
    if training.fsdp and training.deepspeed:
        problems.append(FSDP_AND_DEEPSPEED)
    if recipe.uses_muon() and (training.fsdp or training.deepspeed):
        problems.append("optim: muon needs whole weight matrices: not with fsdp or deepspeed (use DDP)")
    if run.max_tokens is not None and training.max_steps > 0:
        problems.append(f"set max_tokens or max_steps, not both (max_tokens {run.max_tokens:,} gives the steps "
                        f"from the global batch)")
    if training.lr_scheduler_type == WSD:
        kwargs = training.lr_scheduler_kwargs if isinstance(training.lr_scheduler_kwargs, dict) else {}
        if not {"num_decay_steps", "decay_ratio"} & set(kwargs):
            problems.append("lr_scheduler_type: warmup_stable_decay needs lr_scheduler_kwargs with decay_ratio "
                            "(fraction of the steps spent decaying, e.g. {decay_ratio: 0.2}) or num_decay_steps")
        elif "decay_ratio" in kwargs and training.max_steps <= 0 and run.max_tokens is None \
                and run.max_train_seconds is None:
            problems.append("lr_scheduler_kwargs decay_ratio needs max_steps, max_tokens or max_train_seconds")
    problems += time_budget_problems(recipe)
    return problems


def changed_keys(values: Any, keys: tuple[str, ...]) -> list[str]:
    """The keys whose value differs from their field's default."""
    defaults = field_defaults(type(values))
    return [key for key in keys if getattr(values, key) != defaults[key]]


def inapplicable_key_problems(recipe: Recipe) -> list[str]:
    """Keys set for an optimizer or method the recipe does not use: refused rather than ignored."""
    model, run = recipe.model_args, recipe.run_args
    problems = []
    if not recipe.uses_muon() and (muon := changed_keys(run, MUON_KEYS)):
        problems.append(f"{', '.join(muon)} applies to optim: muon only; set optim: muon or unset it")
    if not model.peft_method and (lora := changed_keys(model, LORA_KEYS)):
        problems.append(f"{', '.join(lora)} applies to peft: {{method: lora}} only; add the peft section or unset it")
    if not model.load_in_4bit and (bnb := changed_keys(model, BNB_KEYS)):
        problems.append(f"{', '.join(bnb)} applies to load_in_4bit: true only; set it or unset {', '.join(bnb)}")
    return problems


FSDP_AND_DEEPSPEED = ("set fsdp or deepspeed, not both: each shards the model its own way (FSDP through torch, "
                      "ZeRO through DeepSpeed's engine); drop one")
MUON_KEYS = ("muon_learning_rate", "muon_momentum")
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_modules_to_save")
BNB_KEYS = ("bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "bnb_4bit_use_double_quant")
# Optional integrations: the package each needs, and how to install it.
TRACKER_PACKAGES = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",),
                    "trackio": ("trackio",), "comet_ml": ("comet_ml",), "clearml": ("clearml",),
                    "neptune": ("neptune",), "dvclive": ("dvclive",), "swanlab": ("swanlab",),
                    "codecarbon": ("codecarbon",), "azure_ml": ("azureml",), "flyte": ("flytekit",),
                    "dagshub": ("dagshub",)}
PIP_NAMES = {"tensorboard": "tensorboard", "azureml": "azureml-core", "flytekit": "flytekit"}
KERNEL_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"), "flash_attention_3": ("flash_attn_3", "flash-attn-3")}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def tracker_names(value: Any) -> str | list[str]:
    """``report_to`` as Trainer takes it: 'none', 'all', or a list of trackers, whichever way it was
    spelt (``tensorboard,wandb``, ``[tensorboard]``, a YAML list; '' is 'none')."""
    if isinstance(value, str):
        names = [name.strip().strip("'\"") for name in value.strip().strip("[]").split(",")]
        names = [name for name in names if name]
        if not names:
            return "none"
        return names[0] if len(names) == 1 and names[0] in ("none", "all") else names
    return [str(name) for name in value] if isinstance(value, (list, tuple)) else value


def tracker_problems(report_to: Any) -> list[str]:
    trackers = [report_to] if isinstance(report_to, str) else list(report_to or [])
    unknown = [t for t in trackers if t not in TRACKER_PACKAGES and t not in ("none", "all")]
    if not unknown:
        return []
    return [f"report_to must be none, all, or trackers among {', '.join(sorted(TRACKER_PACKAGES))} (a list, or "
            f"comma-separated), not {', '.join(map(repr, unknown))}"]


def integration_problems(values: dict[str, Any]) -> list[str]:
    """Optional packages the recipe's values need (trackers, DeepSpeed, attention kernels), checked
    before anything is built (TrainingArguments itself imports DeepSpeed), with the line that
    installs each."""
    report_to = values.get("report_to") or []
    if problems := tracker_problems(report_to):
        return problems
    trackers = [report_to] if isinstance(report_to, str) else list(report_to)
    for tracker in trackers:
        packages = TRACKER_PACKAGES.get(tracker)
        if packages and not any(installed(p) for p in packages):
            problems.append(f"report_to: {tracker} needs the {packages[0]} package: pip install "
                            f"{PIP_NAMES.get(packages[0], packages[0])} (or drop {tracker} from report_to)")
    if values.get("deepspeed") and not installed("deepspeed"):
        problems.append(f"deepspeed: {values['deepspeed']} needs the deepspeed package: pip install "
                        f"'hf-clm[deepspeed]'")
    kernel = values.get("attn_implementation")
    if kernel in KERNEL_PACKAGES and not installed(KERNEL_PACKAGES[kernel][0]):
        pip_name = KERNEL_PACKAGES[kernel][1]
        problems.append(f"attn_implementation: {kernel} needs the {pip_name} package (CUDA only): pip install "
                        f"{pip_name}; or use attn_implementation: sdpa")
    return problems


def time_budget_problems(recipe: Recipe) -> list[str]:
    """``max_train_seconds`` is the run's length: not with another length, and the schedule's phases
    as fractions of it."""
    training, run = recipe.training_args, recipe.run_args
    if run.max_train_seconds is None:
        return []
    problems = []
    if training.max_steps > 0 or run.max_tokens is not None:
        given = "max_steps" if training.max_steps > 0 else "max_tokens"
        problems.append(f"set max_train_seconds or {given}, not both (the budget decides when training ends)")
    if training.warmup_steps >= 1:
        problems.append(f"with max_train_seconds, warmup_steps is a fraction of the budget (below 1, e.g. 0.05), "
                        f"not {training.warmup_steps:g} steps")
    kwargs = training.lr_scheduler_kwargs if isinstance(training.lr_scheduler_kwargs, dict) else {}
    if "num_decay_steps" in kwargs:
        problems.append("with max_train_seconds, give lr_scheduler_kwargs decay_ratio (a fraction of the budget), "
                        "not num_decay_steps")
    return problems
