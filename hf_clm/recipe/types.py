"""Each recipe value checked against its key's declared type and choices: coerced where YAML or a flag
spells it otherwise, one line naming the key, the value and the type when it cannot be."""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
import types
import typing
from typing import Any

from hf_clm.errors import HfClmError
from hf_clm.recipe.ranges import RANGES
from hf_clm.recipe.schema import MUON, recipe_classes, recipe_fields


@functools.cache
def field_types(classes: tuple[type, ...] | None = None) -> dict[str, Any]:
    """Each recipe key's declared type (from the annotations: HfArgumentParser narrows ``Field.type``),
    of every recipe class or of ``classes`` only (the data classes: no TrainingArguments, no torch)."""
    classes = classes or recipe_classes()
    hints: dict[str, Any] = {}
    for cls in classes:
        hints.update(typing.get_type_hints(cls))
    return {f.name: hints[f.name] for f in recipe_fields(classes)}

def type_members(kind) -> tuple:
    origin = typing.get_origin(kind)
    return typing.get_args(kind) if origin in (typing.Union, types.UnionType) else (kind,)

def is_optional(kind) -> bool:
    return type(None) in type_members(kind)

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
    elif origin is list and typing.get_origin((typing.get_args(kind) or (None,))[0]) is dict:
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            return value  # a list of mappings (mixture:), each checked by its own key's rules
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
    if origin is list and typing.get_origin((typing.get_args(kind) or (None,))[0]) is dict:
        return "a list of mappings"
    if origin is list or kind is list:
        return "text or a list of text"
    if origin is dict or kind is dict:
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text"}.get(kind, str(kind))

def shown_value(value: Any) -> str:
    return "an empty value" if value is None else repr(value)

def checked_value(key: str, value: Any, name: str | None = None, classes: tuple[type, ...] | None = None) -> Any:
    """The recipe value converted to the key's type; HfClmError naming the key (as the recipe spells it,
    ``name``), the value and what is allowed. ``classes``: the dataclasses the key is one of (default:
    every recipe class)."""
    name = name or key
    if key == "optim" and value == MUON:  # not one of transformers' OptimizerNames: the package's own
        return value
    members = type_members(field_types(classes)[key])
    if any(isinstance(m, type) and issubclass(m, enum.Enum) for m in members):
        members = tuple(m for m in members if m is not str)  # `IntervalStrategy | str`: the str is a member's name
    if isinstance(value, bool):  # true/false means a bool where the key takes one
        members = sorted(members, key=lambda m: m is not bool)
    for member in members:
        try:
            return within_choices(key, coerce_value(value, member), name, classes)
        except ValueError:
            continue
    if value is None:
        raise HfClmError(f"{name} has no value; give {kind_words(members[0])} or remove the line")
    allowed = " or ".join(dict.fromkeys(kind_words(m) for m in members))
    ranged = f" ({RANGES[key].allowed})" if key in RANGES else ""
    unset = "; remove the line for its default" if isinstance(value, str) and value.strip().lower() in (
        "none", "null") else ""
    raise HfClmError(f"{name} must be {allowed}, not {shown_value(value)}{ranged}{unset}")

@functools.cache
def field_choices(classes: tuple[type, ...] | None = None) -> dict[str, list]:
    """The keys whose values are declared on their field (``metadata={"choices": [...]}``)."""
    return {f.name: f.metadata["choices"] for f in recipe_fields(classes) if "choices" in f.metadata}

def within_choices(key: str, value: Any, name: str, classes: tuple[type, ...] | None = None) -> Any:
    """The value, when its field declares choices and it is one of them (or unset)."""
    choices = field_choices(classes).get(key)
    if value is not None and choices is not None and value not in choices:
        raise HfClmError(f"{name} must be one of {', '.join(map(str, choices))}, not {value!r}")
    return value


def field_defaults(*classes: type) -> dict[str, Any]:
    """Each field's own default (its ``default_factory``'s value where it has one), of ``classes``."""
    return {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            for cls in classes for f in dataclasses.fields(cls)}
