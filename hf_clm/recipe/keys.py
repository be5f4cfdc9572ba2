"""Recipe key names, read from the source of the recipe's dataclasses rather than by importing them.

Importing the recipe means importing torch and transformers (seconds); a misspelt flag or YAML key
(``--blok_size``) is reported before that, in a fraction of a second. The names are the annotated
fields of :mod:`hf_clm.recipe.schema`'s own dataclasses and of transformers' ``TrainingArguments`` (the
fields ``HfArgumentParser`` makes flags of); a test keeps them equal to the imported dataclasses'.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

from hf_clm.recipe.aliases import ALIASES, MODEL_TYPE, PYTHON_CONFIG, foreign_key_hint, is_python_config

OWN_CLASSES = ("ModelArguments", "DataArguments", "RunArguments")
# The YAML `peft:` section: its keys are not flags. The `prepare:` section is hf-clm prepare's
# (executor, tasks, workers...), checked by hf_clm.recipe.data_recipe.
PEFT_SECTION_KEY = "peft"
PREPARE_SECTION_KEY = "prepare"


def dataclass_field_names(source: Path, class_names: tuple[str, ...]) -> list[str]:
    """The annotated fields of the named classes in a Python source file."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    return [statement.target.id for node in tree.body
            if isinstance(node, ast.ClassDef) and node.name in class_names
            for statement in node.body
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)]


@functools.cache
def recipe_key_names() -> tuple[str, ...]:
    transformers = importlib.util.find_spec("transformers")
    training_args = Path(transformers.submodule_search_locations[0]) / "training_args.py"
    return tuple(dataclass_field_names(Path(__file__).with_name("schema.py"), OWN_CLASSES)
                 + dataclass_field_names(training_args, ("TrainingArguments",)))


@functools.cache
def prepare_key_names() -> tuple[str, ...]:
    """The keys of ``hf-clm prepare``'s own settings (:class:`hf_clm.recipe.data_recipe.PrepareArguments`)."""
    return tuple(dataclass_field_names(Path(__file__).with_name("data_recipe.py"), ("PrepareArguments",)))


# How alike a misspelt key and a recipe key must be (difflib's ratio) to be suggested: 'blok_size' ->
# 'block_size' is 0.95, 'out_dir' -> 'output_dir' 0.82; axolotl's 'base_model' -> 'save_only_model' (0.64)
# is no misspelling.
SUGGESTION_CUTOFF = 0.8


def unknown_key_message(key: str, where: str) -> str:
    """The unknown key named, with another trainer's equivalent, or the recipe key it is a misspelling of."""
    close = difflib.get_close_matches(key, recipe_key_names(), n=1, cutoff=SUGGESTION_CUTOFF)
    foreign = foreign_key_hint(key)
    hint = f"; {foreign}" if foreign else f"; did you mean '{close[0]}'?" if close else \
        "; see 'hf-clm train --help' for the keys"
    return f"unknown recipe key '{key}' in {where}{hint}"


def accepted_key_names() -> set[str]:
    """Recipe keys, and the run_clm.py names read as one (train_file, validation_file, model_type)."""
    return {*recipe_key_names(), *ALIASES, MODEL_TYPE}


def flag_key(arg: str) -> str | None:
    """``--train-files=x`` -> ``train_files``; None for what is not a flag."""
    if not arg.startswith("--") or arg == "--":
        return None
    return arg[2:].split("=", 1)[0].replace("-", "_")


def yaml_keys(path: Path) -> list[Any]:
    """The top-level keys of a recipe file; none when it cannot be read (the full parser says why)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8-sig")
        if re.search(r"^\s*<<\s*:", text, re.MULTILINE):
            return []  # a merge key: the full parser refuses it, naming its line
        values = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    sections = (PEFT_SECTION_KEY, PREPARE_SECTION_KEY)
    return [key for key in values if key not in sections] if isinstance(values, dict) else []


def unknown_key_problems(argv: list[str], own_flags: tuple[str, ...] = ()) -> list[str]:
    """The flags and recipe-file keys of ``train``/``prepare`` that are no recipe key (nor one of the
    command's ``own_flags``)."""
    if "--" in argv:
        return ["'--' is not a recipe key (nothing ends the flags): drop it, and give the recipe file first, "
                "e.g. 'hf-clm train RECIPE.yaml --key value'"]
    known = {*accepted_key_names(), "help", *own_flags}
    problems = [PYTHON_CONFIG] if argv and is_python_config(argv[0]) else []
    problems += [unknown_key_message(key, "the command line") for key in map(flag_key, argv)
                 if key is not None and key not in known]
    for arg in argv:
        if not arg.startswith("-") and arg.lower().endswith((".yaml", ".yml")):
            problems += [unknown_key_message(str(key), str(Path(arg))) for key in yaml_keys(Path(arg))
                         if key not in known]
    return problems
