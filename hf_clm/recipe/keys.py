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

OWN_CLASSES = ("ModelArguments", "DataArguments", "RunArguments")
# The YAML `peft:` section: its keys are not flags.
PEFT_SECTION_KEY = "peft"


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


def unknown_key_message(key: str, where: str) -> str:
    close = difflib.get_close_matches(key, recipe_key_names(), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see 'hf-clm train --help' for the keys"
    return f"unknown recipe key '{key}' in {where}{hint}"


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
    return [key for key in values if key != PEFT_SECTION_KEY] if isinstance(values, dict) else []


def unknown_key_problems(argv: list[str]) -> list[str]:
    """The flags and recipe-file keys of ``train``/``prepare`` that are no recipe key."""
    if "--" in argv:
        return ["'--' is not a recipe key (nothing ends the flags): drop it, and give the recipe file first, "
                "e.g. 'hf-clm train RECIPE.yaml --key value'"]
    known = {*recipe_key_names(), "help"}
    problems = [unknown_key_message(key, "the command line") for key in map(flag_key, argv)
                if key is not None and key not in known]
    for arg in argv:
        if not arg.startswith("-") and arg.lower().endswith((".yaml", ".yml")):
            problems += [unknown_key_message(str(key), str(Path(arg))) for key in yaml_keys(Path(arg))
                         if key not in known]
    return problems
