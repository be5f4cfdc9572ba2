"""Reading a recipe: YAML file and command-line flags -> a checked :class:`~hf_clm.recipe.schema.Recipe`.

``HfArgumentParser`` builds the flags from the recipe's dataclasses (types, help and the choices
declared on the fields); the YAML file's values, checked by :mod:`hf_clm.recipe.checks`, become
the parser's defaults, so flags override them. Paths are resolved once, here.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.aliases import ALIASES, PYTHON_CONFIG, is_python_config, renamed_flags
from hf_clm.recipe.checks import (
    integration_problems,
    recipe_problems,
    recipe_range_problems,
    rehearse_problem,
    tracker_names,
)
from hf_clm.recipe.keys import unknown_key_message
from hf_clm.recipe.paths import check_relative_paths, resolve_paths
from hf_clm.recipe.ranges import RANGES
from hf_clm.recipe.schema import (
    CORPUS_KEYS,
    MUON,
    SOURCE_KEYS,
    TOKENIZER_KEYS,
    UNBOUNDED_STEPS,
    Recipe,
    package_defaults,
    recipe_classes,
)
from hf_clm.recipe.types import field_defaults, field_types, is_optional
from hf_clm.recipe.yaml_file import read_recipe_yaml
from hf_clm.run.artifacts import output_folder_problem
from hf_clm.run.files import REHEARSAL_FILENAME

logger = logging.getLogger(__name__)

# `--key none` (or null, or '') unsets an optional key; report_to's 'none' is a value of its own.
NULLABLE_EXCEPTIONS = {"report_to"}
UNSET = ("none", "null")  # `--key none`: the key's default, as if the recipe did not give it
# Values of the package's own that TrainingArguments' flags do not list.
PACKAGE_VALUES = {"optim": (MUON,)}
RECIPE_USAGE = "%(prog)s [RECIPE] [--key value ...]"
RECIPE_EPILOG = ("resume_from_checkpoint also takes 'auto': the newest complete checkpoint in output_dir, or a "
                 "fresh start when there is none; 'none' (the default): start fresh. optim also takes 'muon' "
                 "(Muon for the hidden weight matrices, AdamW for the rest).")


class RecipeArgumentParser(HfArgumentParser):
    def error(self, message: str):
        # argparse would print the whole usage block; one line that names the key and value is enough.
        raise HfClmError(flag_error_message(message))


def flag_error_message(message: str) -> str:
    """argparse's complaint about a flag, as `KEY must be WHAT, not VALUE`."""
    kinds = {"int": "an integer", "float": "a number", "string_to_bool": "true or false"}
    bad = re.match(r"argument --([\w-]+)[^:]*: invalid (\w+) value: (.*)$", message)
    if bad:
        key, kind, value = bad.groups()
        key = key.replace('-', '_')
        return f"{key} must be {kinds.get(kind, kind)}, not {value}{range_words(key)}"
    choice = re.match(r"argument --([\w-]+)[^:]*: invalid choice: (.*?) \(choose from (.*)\)$", message)
    if choice:
        key, value, allowed = choice.groups()
        key = key.replace("-", "_")
        allowed = ", ".join([allowed.replace("'", ""), *PACKAGE_VALUES.get(key, ())])
        return f"{key} must be one of {allowed}, not {value}"
    truthy = re.match(r"argument --([\w-]+)[^:]*: Truthy value expected: got (.*?) but", message)
    if truthy:
        return f"{truthy.group(1).replace('-', '_')} must be true or false, not '{truthy.group(2)}'"
    missing = re.match(r"argument --([\w-]+)[^:]*: expected (.*)$", message)
    if missing:
        return f"--{missing.group(1).replace('-', '_')} needs a value (expected {missing.group(2)})"
    return f"invalid recipe value: {message}"


def range_words(key: str) -> str:
    """' (an integer >= 1, or -1 to train num_train_epochs)': what a key with a range takes, or nothing."""
    return f" ({RANGES[key].allowed}; '--{key} none' gives its default)" if key in RANGES else ""


@functools.cache
def all_key_defaults() -> dict[str, Any]:
    """Every recipe key's value when no recipe or flag gives it: its field's default, or the package's."""
    return vars(recipe_parser().parse_args([]))


def key_defaults(classes: tuple[type, ...] | None = None) -> dict[str, Any]:
    """The defaults of ``classes``' keys (default: every recipe key's); the data classes' without
    building Trainer's parser."""
    if classes is None:
        return all_key_defaults()
    return field_defaults(*classes)


def package_values(flags: list[str], classes: tuple[type, ...] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Flag values argparse cannot take as they are, taken out of ``flags`` and returned as values:
    ``--key none`` (or null) unsets a key, whatever the recipe file said: it gets the value a recipe
    without it gets (``--max_steps none``: -1; ``--max_train_samples none``: unset); ``--key ''`` empties
    an optional key; ``--optim muon`` names the package's own optimizer. ``classes``: the dataclasses
    whose keys the flags set (default: all four)."""
    types = field_types(classes)
    optional = {key for key, kind in types.items() if is_optional(kind)}
    unsettable = set(types) - NULLABLE_EXCEPTIONS
    kept: list[str] = []
    values: dict[str, Any] = {}
    index = 0
    while index < len(flags):
        arg = flags[index]
        name, has_value, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not has_value and index + 1 < len(flags):
            value = flags[index + 1]
        taken = 1 if has_value else 2
        given = has_value or index + 1 < len(flags)
        if name in unsettable and given and value.strip().lower() in UNSET:
            values[name] = key_defaults(classes)[name]
        elif name in optional - NULLABLE_EXCEPTIONS and given and not value.strip():
            values[name] = None
        elif name in PACKAGE_VALUES and value in PACKAGE_VALUES[name]:
            values[name] = value
        else:
            kept.append(arg)
            taken = 1
        index += taken
    return kept, values


def recipe_parser(command: str = "train") -> HfArgumentParser:
    parser = RecipeArgumentParser(recipe_classes(), prog=f"hf-clm {command}", usage=RECIPE_USAGE,
                                  description=COMMAND_DESCRIPTIONS[command], epilog=RECIPE_EPILOG)
    parser.set_defaults(**package_defaults())
    return parser


COMMAND_DESCRIPTIONS = {
    "train": "Train a causal LM. RECIPE (a YAML file, first or after the flags) gives values; flags override "
             "them; a corpus flag (--dataset_name, --train_files, --builtin_corpus) replaces the recipe's whole "
             "corpus source; '--key none' unsets an optional key.",
    "prepare": "Tokenize a recipe's corpus and cut it into blocks once, into its prepared_dataset folder. "
               "RECIPE and flags as for 'hf-clm train'. Its own flags: --shard I --num_shards N prepares the I-th "
               "of N parts of the training documents (one machine or process each, side by side); "
               "--tokenizer_only trains (or copies) the tokenizer into the folder, once, before the shards. "
               "--executor local|slurm|ray --tasks N runs the N parts as a datatrove pipeline (the keys below "
               "under 'PrepareArguments', also a prepare: section of the recipe); a rerun skips finished tasks.",
    "plan": "Size a recipe's run without running it. RECIPE and flags as for 'hf-clm train'.",
    "perplexity": "The documents a recipe's training validates on.",
}
# The commands that run a recipe: they write into its folder and need its optional packages. plan sizes
# a run for another machine and perplexity --recipe reads the recipe's validation documents: neither.
RUNNING_COMMANDS = ("train", "prepare")


def canonical_flag(arg: str) -> str:
    """`--train-files=x` -> `--train_files=x`: argparse accepts both spellings, and the logic that
    looks at flag names (corpus sources, the default recipe) sees one."""
    if not arg.startswith("--"):
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("-", "_").replace("__", "--", 1) + sep + value


def flag_names(flags: list[str]) -> set[str]:
    """The keys the flags give, run_clm.py's names (``--train_file``) as this package's."""
    return {ALIASES.get(name, name) for name in (a[2:].split("=")[0] for a in flags if a.startswith("--"))}


def is_recipe_path(arg: str) -> bool:
    return not arg.startswith("-") and arg.lower().endswith((".yaml", ".yml"))


def split_recipe_argv(argv: list[str], command: str = "train") -> tuple[str | None, list[str]]:
    """`[RECIPE] [--flag value ...]` or `[--flag value ...] RECIPE` -> (recipe path or None, flags)."""
    argv = [canonical_flag(a) for a in argv]
    if argv and not argv[0].startswith("-"):
        return argv[0], argv[1:]
    # A recipe after the flags: the one leftover .yaml that no flag took as its value.
    _, leftover = recipe_parser(command).parse_known_args(package_values(argv)[0])
    recipes = [a for a in leftover if is_recipe_path(a)]
    if len(recipes) > 1:
        raise HfClmError(f"several recipe files given ({', '.join(recipes)}); give one")
    if recipes:
        position = len(argv) - 1 - argv[::-1].index(recipes[0])
        return recipes[0], argv[:position] + argv[position + 1:]
    return None, argv


def setting_flags(flags: list[str]) -> list[str]:
    """The flags that give a key a value: not ``--key none``, which unsets it."""
    kept, index = [], 0
    while index < len(flags):
        arg = flags[index]
        name, has_value, value = arg.partition("=")
        if not has_value and index + 1 < len(flags) and not flags[index + 1].startswith("--"):
            value = flags[index + 1]
        if not (arg.startswith("--") and value.strip().lower() in UNSET):
            kept.append(arg)
        index += 1
    return kept


def replaced_sources(values: dict[str, Any], flags: list[str]) -> dict[str, Any]:
    """The recipe's values without those a source flag replaces: a corpus flag drops the recipe's
    whole corpus source; a tokenizer or model_name_or_path flag drops its tokenizer choice."""
    given = flag_names(setting_flags(flags))
    dropped: set[str] = set()
    if given & set(SOURCE_KEYS):
        dropped |= set(CORPUS_KEYS)
    if given & {"model_name_or_path", *TOKENIZER_KEYS}:
        dropped |= set(TOKENIZER_KEYS)
    return {key: value for key, value in values.items() if key not in dropped or key in given}


def recipe_defaults(*classes: type) -> dict[str, Any]:
    """Each key's default as this package sets it (what a recipe without the key gets), of the
    recipe's dataclasses ``classes`` (default: all four)."""
    defaults = all_key_defaults()
    return {f.name: defaults[f.name] for cls in classes or recipe_classes() for f in dataclasses.fields(cls) if f.init}


def training_defaults() -> dict[str, Any]:
    """Every TrainingArguments key's default as this package sets it."""
    return recipe_defaults(recipe_classes()[2])


def parse_recipe(argv: list[str] | None = None, default_recipe: str | Path | None = None,
                 command: str = "train", rehearsal: Callable[[dict, set], dict] | None = None) -> Recipe:
    """Parse `[RECIPE.yaml] [--flag value ...]` into a validated :class:`Recipe`. ``rehearsal`` rewrites
    the values of a recipe that sets ``rehearse`` (``train --rehearse K``) before they are checked."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path, flags = split_recipe_argv(argv, command)
    path = path or default_recipe
    parser = recipe_parser(command)
    file_values: dict[str, Any] = {}
    notes: list[str] = []
    if path is not None:
        # Values from the file become the parser's defaults, so flags override them.
        file_values = read_recipe_yaml(path, notes=notes)
        parser.set_defaults(**replaced_sources(file_values, flags))
    pretrained = bool(file_values.get("model_name_or_path")) or "model_name_or_path" in flag_names(flags)
    flags, flag_notes = renamed_flags(flags, pretrained)
    for note in dict.fromkeys(notes + flag_notes):
        logger.info("%s", note)
    flags_given = flag_names(flags)
    flags, flag_values = package_values(flags)
    namespace, remaining = parser.parse_known_args(flags)
    if remaining:
        flag = next((s for s in remaining if s.startswith("--")), None)
        if flag is None and is_python_config(remaining[0]):
            raise HfClmError(f"{remaining[0]}: {PYTHON_CONFIG}")
        if flag is None:
            raise HfClmError(f"unexpected argument '{remaining[0]}'; the recipe file must end in .yaml or .yml")
        raise HfClmError(unknown_key_message(flag.lstrip("-").split("=")[0], "the command line"))
    given_paths = {**vars(namespace), **flag_values}
    values = resolve_paths(given_paths)
    values["report_to"] = tracker_names(values["report_to"])
    if rehearsal is not None and (values["rehearse"] or 0) >= 1:  # below 1: a range problem, reported below
        if problem := rehearse_problem(values):
            raise HfClmError(problem)
        values = rehearsal(values, flags_given)
    writes = command in RUNNING_COMMANDS
    problems = recipe_range_problems(values) + (output_dir_problems(values, command) if writes else [])
    if packages := integration_problems(values) if writes else []:
        raise HfClmError("invalid recipe: " + "; ".join(problems + packages))
    if writes:
        check_relative_paths(given_paths)
    given = {**values, **training_rewrites(values)}
    try:
        model_args, data_args, training_args, run_args = (
            cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if f.init}) for cls in recipe_classes())
    except ValueError as err:
        raise HfClmError("invalid recipe: " + "; ".join(problems or [first_line(err)])) from None
    defaults = training_defaults()
    training_values = {key: values[key] for key in defaults if values[key] != defaults[key]}
    recipe = Recipe(model_args, data_args, training_args, run_args, training_values)
    problems += recipe_problems(recipe)
    if problems:
        raise HfClmError("invalid recipe: " + "; ".join(problems))
    apply_token_budget(recipe)
    if recipe.run_args.max_train_seconds is None:
        apply_decay_ratio(recipe)
    else:  # the clock ends training; Trainer loops on a step count it never reaches
        recipe.training_args.max_steps = UNBOUNDED_STEPS
    return recipe


def output_dir_problems(values: dict[str, Any], command: str) -> list[str]:
    """The folder the command writes into (train: output_dir, prepare: prepared_dataset) must be one."""
    key = "prepared_dataset" if command == "prepare" else "output_dir"
    folder = values.get(key)
    if folder in (None, "") and key == "output_dir":
        return ["output_dir is empty; give the folder the run is written to"]
    if folder and any(char in folder for char in "\n\r"):
        return [f"{key} {folder!r} holds a line break; choose a folder name without one"]
    problem = output_folder_problem(Path(folder)) if folder else None
    if problem is None and key == "output_dir" and not values.get("rehearse") and \
            (Path(folder) / REHEARSAL_FILENAME).is_file():
        return [f"output_dir {folder} is a rehearsal's folder ({REHEARSAL_FILENAME}: trained at a constant rate, "
                f"on the head of the data); train the run into its own output_dir"]
    return [f"{key} {folder} {problem}; choose another folder"] if problem else []


def training_rewrites(values: dict[str, Any]) -> dict[str, Any]:
    """What TrainingArguments is given instead of the recipe's own value: the AdamW half of
    ``optim: muon`` (Trainer gets the combined optimizer from :mod:`hf_clm.training.optimizer`), and
    ``use_cpu`` for bf16 on a machine without a GPU (transformers asks for it; autocast then
    runs on the CPU)."""
    import torch
    from transformers.utils import is_torch_bf16_gpu_available

    rewrites: dict[str, Any] = {}
    if str(values["optim"]) == MUON:
        rewrites["optim"] = "adamw_torch"
    if values["bf16"] and not values["use_cpu"] and not torch.cuda.is_available() \
            and not is_torch_bf16_gpu_available():
        rewrites["use_cpu"] = True
    return rewrites


def apply_token_budget(recipe: Recipe) -> None:
    """``max_tokens`` -> ``max_steps``, rounded up; the same steps on resume (same batch, same
    processes), so the LR schedule, built from max_steps, agrees with the checkpoint's."""
    if recipe.run_args.max_tokens is not None:
        recipe.training_args.max_steps = -(-recipe.run_args.max_tokens // recipe.tokens_per_step())


def apply_decay_ratio(recipe: Recipe) -> None:
    """``lr_scheduler_kwargs: {decay_ratio: r}`` for warmup_stable_decay -> ``num_decay_steps``
    = r x max_steps, so the decay phase follows a budget given in tokens."""
    kwargs = recipe.training_args.lr_scheduler_kwargs
    if isinstance(kwargs, dict) and "decay_ratio" in kwargs:  # a new dict: the recipe keeps decay_ratio
        steps = round(float(kwargs["decay_ratio"]) * recipe.training_args.max_steps)
        recipe.training_args.lr_scheduler_kwargs = {**{k: v for k, v in kwargs.items() if k != "decay_ratio"},
                                                    "num_decay_steps": steps}


