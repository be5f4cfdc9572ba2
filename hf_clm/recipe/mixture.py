"""The recipe's ``mixture:``: a list of corpora, each with its share of the training blocks.

Each source is one of a Hub (or local ``datasets``) dataset, local files, or a folder written by
``hf-clm prepare``; its ``weight`` is its share. Read and checked here, before any data work; the
data itself is :mod:`hf_clm.data.mixture`'s.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_clm.errors import HfClmError

# Exactly one of these names a source's corpus.
SOURCE_CORPUS_KEYS = ("dataset_name", "train_files", "prepared_dataset")
SOURCE_OPTION_KEYS = ("dataset_config_name", "weight", "name", "text_column", "sample_by")
SAMPLE_BY = ("document", "paragraph", "line")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
RESERVED_NAMES = ("validation", "train")


@dataclass(frozen=True)
class MixtureSource:
    name: str
    weight: float  # its share, normalised: the weights of a mixture sum to 1
    given_weight: float
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_files: tuple[str, ...] | None = None
    prepared_dataset: str | None = None
    text_column: str | None = None
    sample_by: str | None = None

    @property
    def corpus(self) -> str:
        """The source's corpus in words."""
        if self.prepared_dataset:
            return f"prepared {Path(self.prepared_dataset).name}"
        if self.train_files:
            return ", ".join(Path(f).name for f in self.train_files)
        return " ".join(filter(None, (self.dataset_name, self.dataset_config_name)))


def mixture_list(value: list | str | None) -> list[dict[str, Any]] | None:
    """The recipe's ``mixture`` as a list of mappings (a command-line value is JSON)."""
    if value is None or isinstance(value, list):
        return value
    try:
        value = json.loads(value)
    except ValueError:
        raise HfClmError("mixture on the command line must be JSON, e.g. '[{\"train_files\": \"a.txt\", \"weight\": "
                         "0.75}, {\"dataset_name\": \"wikitext\", \"weight\": 0.25}]'") from None
    if not isinstance(value, list):
        raise HfClmError("mixture must be a list of sources, e.g. [{train_files: a.txt, weight: 0.75}, ...]")
    return value


def source_weight(spec: dict[str, Any], where: str) -> float:
    weight = spec.get("weight")
    if weight is None:
        raise HfClmError(f"{where} has no weight; give its share of the training blocks, e.g. weight: 0.25")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise HfClmError(f"{where}: weight must be a number (its share of the training blocks), not {weight!r}")
    if weight < 0:
        raise HfClmError(f"{where}: weight must be 0 or more (its share of the training blocks), not {weight:g}")
    return float(weight)


def source_corpus(spec: dict[str, Any], where: str) -> str:
    """The one key naming the source's corpus."""
    named = [key for key in SOURCE_CORPUS_KEYS if spec.get(key)]
    if len(named) != 1:
        got = f" (got {', '.join(named)}; a mixture of two corpora is two sources)" if named else ""
        raise HfClmError(f"{where} must name exactly one corpus: dataset_name, train_files or prepared_dataset{got}")
    return named[0]


def default_name(spec: dict[str, Any], corpus_key: str) -> str:
    value = spec[corpus_key]
    first = value[0] if isinstance(value, list) else str(value)
    if corpus_key == "dataset_name":
        name = Path(first).name if Path(first).is_absolute() else first.split("/")[-1]
        name = "-".join(filter(None, (name, spec.get("dataset_config_name"))))
    else:
        path = Path(first.rstrip("/"))
        name = path.name if corpus_key == "prepared_dataset" or path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_") or "source"


def source_name(spec: dict[str, Any], corpus_key: str, where: str, taken: set[str]) -> str:
    if "name" in spec:
        name = spec["name"]
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED_NAMES:
            raise HfClmError(f"{where}: name {name!r} must be letters, digits, _ or - (and not validation or train)")
        if name in taken:
            raise HfClmError(f"{where}: name '{name}' is another source's; give each source its own name")
        return name
    name, number = default_name(spec, corpus_key), 2
    base = name if name not in RESERVED_NAMES else f"{name}-source"
    name = base
    while name in taken:
        name, number = f"{base}-{number}", number + 1
    return name


def checked_source(spec: Any, index: int, taken: set[str]) -> tuple[dict[str, Any], str]:
    where = f"mixture source {index + 1}"
    if not isinstance(spec, dict):
        raise HfClmError(f"{where} must be a mapping such as {{train_files: a.txt, weight: 0.5}}, not {spec!r}")
    unknown = sorted(set(spec) - set(SOURCE_CORPUS_KEYS) - set(SOURCE_OPTION_KEYS))
    if unknown:
        raise HfClmError(f"{where}: unknown key {', '.join(map(str, unknown))}; a source takes "
                         f"{', '.join(SOURCE_CORPUS_KEYS + SOURCE_OPTION_KEYS)}")
    corpus_key = source_corpus(spec, where)
    if spec.get("sample_by") is not None and spec["sample_by"] not in SAMPLE_BY:
        raise HfClmError(f"{where}: sample_by must be one of {', '.join(SAMPLE_BY)}, not {spec['sample_by']!r}")
    if corpus_key == "prepared_dataset" and (extra := [k for k in ("text_column", "sample_by", "dataset_config_name")
                                                       if k in spec]):
        raise HfClmError(f"{where}: {', '.join(extra)} does not apply to a prepared_dataset (its blocks are made)")
    return spec, source_name(spec, corpus_key, f"{where} ({spec[corpus_key]})", taken)


def mixture_sources(value: list | str | None) -> list[MixtureSource]:
    """The recipe's mixture as checked sources whose weights sum to 1; HfClmError at the first problem."""
    specs = mixture_list(value)
    if not specs:
        raise HfClmError("mixture must list at least one source, e.g. [{train_files: a.txt, weight: 1}]")
    taken: set[str] = set()
    checked = []
    for index, spec in enumerate(specs):
        spec, name = checked_source(spec, index, taken)
        taken.add(name)
        checked.append((spec, name, source_weight(spec, f"mixture source {index + 1} ({name})")))
    total = sum(weight for _, _, weight in checked)
    if total == 0:
        raise HfClmError("mixture: every weight is 0; give each source its share of the training blocks")
    files = lambda spec: tuple([spec["train_files"]] if isinstance(spec["train_files"], str) else spec["train_files"])
    return [MixtureSource(name, weight / total, weight, spec.get("dataset_name"), spec.get("dataset_config_name"),
                          files(spec) if spec.get("train_files") else None, spec.get("prepared_dataset"),
                          spec.get("text_column"), spec.get("sample_by"))
            for spec, name, weight in checked]


def normalisation_note(sources: list[MixtureSource]) -> str | None:
    """One line when the given weights do not sum to 1 (the shares used are them over their sum)."""
    total = sum(s.given_weight for s in sources)
    if math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-9):
        return None
    shares = ", ".join(f"{s.name} {s.weight:.4g}" for s in sources)
    return f"mixture: the weights sum to {total:g}, not 1; normalised to {shares}"


def resolved_mixture(value: list | str | None, absolute_path) -> list[dict[str, Any]] | None:
    """The mixture as a list, each source's local paths made absolute by ``absolute_path`` (the
    recipe's rule), so the saved recipe repeats the run from any directory."""
    specs = mixture_list(value)
    if specs is None:
        return None
    resolved = []
    for spec in specs:
        if isinstance(spec, dict):
            spec = dict(spec)
            if isinstance(spec.get("train_files"), (str, list)):
                files = [spec["train_files"]] if isinstance(spec["train_files"], str) else spec["train_files"]
                spec["train_files"] = [absolute_path(f) if isinstance(f, str) else f for f in files]
            if isinstance(spec.get("prepared_dataset"), str):
                spec["prepared_dataset"] = absolute_path(spec["prepared_dataset"])
            if isinstance(spec.get("dataset_name"), str) and Path(spec["dataset_name"]).expanduser().exists():
                spec["dataset_name"] = absolute_path(spec["dataset_name"])
        resolved.append(spec)
    return resolved
