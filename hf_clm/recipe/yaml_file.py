"""A recipe file read: UTF-8 text, YAML with each key once (line and column in every complaint), the
``peft:`` section flattened, run_clm.py's key names read as this package's, each value checked
against its key's type."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.aliases import PYTHON_CONFIG, is_python_config, renamed_values
from hf_clm.recipe.keys import PREPARE_SECTION_KEY, recipe_key_names, unknown_key_message
from hf_clm.recipe.paths import from_current_directory
from hf_clm.recipe.schema import PEFT_SECTION
from hf_clm.recipe.types import checked_value


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
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise HfClmError(f"line {key_node.start_mark.line + 1}: the merge key '<<' is not supported in a "
                                 f"recipe; write the keys out")
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


YAML_KEY_LIMIT = 1024  # PyYAML's longest simple key


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's complaint in one line, with the line and column it points at (and a hint for a tab)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or first_line(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if "'\\t'" in problem:
        problem += " (a tab: YAML indents and separates with spaces only)"
    elif mark is not None and mark.column > YAML_KEY_LIMIT and "mapping values" in problem:
        problem = f"a key of more than {YAML_KEY_LIMIT:,} characters (YAML's limit for a key; a lost line break?)"
    return f"{where}{problem[:200]}"


def recipe_mapping(path: str | Path) -> dict[str, Any]:
    """The recipe file as YAML read it: a mapping, each key once."""
    path = Path(path)
    if is_python_config(str(path)):
        raise HfClmError(f"{path}: {PYTHON_CONFIG}")
    if not path.is_file():
        raise HfClmError(f"recipe file {path} does not exist{from_current_directory(str(path))}")
    text = read_recipe_text(path)
    try:
        values = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise HfClmError(f"recipe {path} is not valid YAML: {yaml_problem(err)}") from None
    except HfClmError as err:
        raise HfClmError(f"recipe {path}: {err}") from None
    if not isinstance(values, dict):
        raise HfClmError(f"recipe {path} must be a mapping of key: value, not {type(values).__name__}")
    return values


def read_recipe_yaml(path: str | Path, classes: tuple[type, ...] | None = None,
                     notes: list[str] | None = None) -> dict[str, Any]:
    """The recipe file's values, each checked against its key's type; with ``classes`` (the data
    classes), only those classes' keys are checked and the others are left as read; run_clm.py's
    names read as this package's keys, their notes added to ``notes``. The ``prepare`` section is
    ``hf-clm prepare``'s (:func:`hf_clm.recipe.data_recipe.prepare_section`)."""
    path = Path(path)
    values = recipe_mapping(path)
    values.pop(PREPARE_SECTION_KEY, None)
    raw_keys = set(values)
    values = flatten_peft_section(values, path)
    values, renamed = renamed_values(values, str(path))
    if notes is not None:
        notes += renamed
    known = set(recipe_key_names())
    problems = [unknown_key_message(str(key), str(path)) for key in values if key not in known]
    if problems:
        raise HfClmError("; ".join(problems))
    names = {flat: f"peft {key}" for key, flat in PEFT_SECTION.items()} if "peft" in raw_keys else {}
    checked = None if classes is None else {f.name for cls in classes for f in dataclasses.fields(cls)}
    try:
        return {key: checked_value(key, value, names.get(key), classes) if checked is None or key in checked
                else value for key, value in values.items()}
    except HfClmError as err:
        raise HfClmError(f"recipe {path}: {err}") from None
