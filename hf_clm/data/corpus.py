"""Corpus: the recipe's text as a ``DatasetDict`` with a ``train`` and a ``validation`` split.

Sources: a Hub dataset (``datasets.load_dataset(name, config)``), local files (txt, json, jsonl,
csv, parquet — paths, globs or directories), or the built-in ``python-stdlib`` corpus. Each split
keeps only the text column, renamed to ``text``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sysconfig
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.exceptions import DatasetGenerationError

from hf_clm.data.files import (
    BUILDER_BY_SUFFIX,
    TEXT_BUILDERS,
    builder_for,
    check_utf8,
    expand_files,
    is_visible,
    local_data_files,  # builder_for, expand_files: also read from here by perplexity
    local_reading_bars_off,
    raise_disk_full,
)
from hf_clm.data.heldout import hold_out_by_hash, is_stdlib_validation_file
from hf_clm.data.sources import DATASET_ALTERNATIVE, offline_hint, require_hub
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.schema import DataArguments
from hf_clm.run.artifacts import disk_full_message

logger = logging.getLogger(__name__)

TEXT = "text"
# Standard-library folders that are not ordinary library source: test suites (with deliberately
# mis-encoded files) and installed third-party packages.
STDLIB_EXCLUDED_PARTS = {"test", "tests", "idle_test", "site-packages", "dist-packages"}


def load_dataset_rebuilding_cache(*args, **kwargs):
    """``datasets.load_dataset``; a damaged cached copy (a truncated Arrow file) is rebuilt once
    from the source instead of failing every later run."""
    try:
        return datasets.load_dataset(*args, **kwargs)
    except (pa.ArrowException, OSError) as err:
        # a real I/O failure or an unreachable/missing source (ConnectionError is an OSError), not a torn file
        if isinstance(err, (ConnectionError, FileNotFoundError)) or (isinstance(err, OSError) and err.errno is not None):
            raise
        logger.warning("Rebuilding a damaged datasets cache entry of %s (%s)", args[0], first_line(err))
    try:
        return datasets.load_dataset(*args, download_mode="force_redownload", **kwargs)
    except (pa.ArrowException, ConnectionError, OSError) as err:
        raise HfClmError(f"the datasets cache entry of {args[0]} under {datasets.config.HF_DATASETS_CACHE} is "
                         f"damaged and could not be rebuilt ({first_line(err)}); delete that folder's "
                         f"'{Path(str(args[0])).name}' entry and run again") from None


def load_local_files(data: DataArguments, streaming: bool = False) -> DatasetDict:
    data_files, builders = local_data_files(data)
    for split, files in data_files.items():
        if all(Path(f).stat().st_size == 0 for f in files):
            raise HfClmError(f"the {split} split of the corpus is empty: {', '.join(files)} hold no text")
    builder = builders["train"]
    kwargs = {}
    if builder in TEXT_BUILDERS:
        for files in data_files.values():
            for path in files:
                check_utf8(path)
        kwargs["encoding"] = "utf-8-sig"  # UTF-8, and a byte-order mark opening a file is not text
    if builder == "text":
        # sample_by: line -> one document per line, EOS in place of its newline (blank lines are no document)
        kwargs.update(sample_by=data.sample_by, keep_linebreaks=data.sample_by != "line")
    try:
        with local_reading_bars_off():
            return load_dataset_rebuilding_cache(builder, data_files=data_files, streaming=streaming, **kwargs)
    except DatasetGenerationError as err:
        raise_disk_full(err)
        cause = err.__cause__ or err
        if isinstance(cause, OSError) and (full := disk_full_message(cause)):
            raise HfClmError(f"{full} (the datasets cache, writing the {builder} files as Arrow)") from None
        raise HfClmError(f"cannot read the {builder} files: {first_line(cause)}") from None


def stdlib_files() -> tuple[Path, list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if not STDLIB_EXCLUDED_PARTS & set(p.relative_to(root).parts))
    return root, files


def stdlib_documents(root: str, files: list[str]):
    for name in files:
        yield {TEXT: (Path(root) / name).read_text(encoding="utf-8")}


def load_stdlib(data: DataArguments, streaming: bool = False) -> DatasetDict | dict[str, IterableDataset]:
    root, files = stdlib_files()
    held_out = [f for f in files if is_stdlib_validation_file(f, data.validation_split_percentage)]
    kept = [f for f in files if f not in set(held_out)]
    splits = {}
    for split, names in (("train", kept), ("validation", held_out)):
        # a list in gen_kwargs makes each file a shard of the streamed corpus
        kwargs = {"root": str(root), "files": names}
        splits[split] = (IterableDataset.from_generator(stdlib_documents, gen_kwargs=kwargs) if streaming else
                         Dataset.from_generator(stdlib_documents, gen_kwargs=kwargs, split=datasets.NamedSplit(split)))
    return splits if streaming else DatasetDict(splits)


def load_raw(data: DataArguments, streaming: bool = False):
    if data.builtin_corpus:
        return load_stdlib(data, streaming)
    if data.train_files:
        return load_local_files(data, streaming)
    require_hub("dataset_name", data.dataset_name, DATASET_ALTERNATIVE)
    try:
        return load_dataset_rebuilding_cache(data.dataset_name, data.dataset_config_name, streaming=streaming)
    except (FileNotFoundError, ConnectionError) as err:
        raise HfClmError(f"dataset_name '{data.dataset_name}' could not be loaded: {first_line(err)}"
                         f"{offline_hint(DATASET_ALTERNATIVE)}") from None


def column_kind(feature) -> str | None:
    """What a non-text column holds, in words (None for a text column)."""
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return None
    if dtype == "null":
        return "only nulls, no text"
    if dtype in ("binary", "large_binary"):
        return "bytes, not text (store the text as UTF-8 strings)"
    return f"{dtype} values, not text" if dtype is not None else "lists, not text"


def select_text(split, column: str, name: str):
    if split.column_names is not None and column not in split.column_names:
        raise HfClmError(f"text_column '{column}' is not a column of the {name} split; "
                         f"its columns are: {', '.join(split.column_names)}")
    features = split.features
    kind = column_kind(features[column]) if features is not None and column in features else None
    if kind is not None:
        raise HfClmError(f"text_column '{column}' of the {name} split holds {kind}; set text_column to a "
                         f"column of strings (one document per row)")
    split = split.select_columns([column])
    return split.rename_column(column, TEXT) if column != TEXT else split


HAS_TEXT_BATCH_ROWS = 1 << 16


def has_text(split: Dataset) -> bool:
    """Whether any document has a character: batch by batch, up to the first that does."""
    return any(pc.max(pc.utf8_length(batch[TEXT])).as_py()
               for batch in split.with_format("arrow").iter(HAS_TEXT_BATCH_ROWS))


def load_corpus(data: DataArguments) -> DatasetDict:
    """The recipe's corpus as ``DatasetDict(train, validation)``, each with one ``text`` column."""
    raw = load_raw(data)
    if "train" not in raw:
        raise HfClmError(f"the corpus has no 'train' split; it has: {', '.join(raw)}")
    train = select_text(raw["train"], data.text_column, "train")
    if "validation" in raw:
        validation = select_text(raw["validation"], data.text_column, "validation")
    else:
        train, validation = hold_out_by_hash(train, data.validation_split_percentage,
                                             data.sample_by if data.train_files else None,
                                             data.preprocessing_num_workers)
    if data.max_train_samples is not None:
        train = train.select(range(min(data.max_train_samples, len(train))))
    if data.max_eval_samples is not None:
        validation = validation.select(range(min(data.max_eval_samples, len(validation))))
    for name, split in (("train", train), ("validation", validation)):
        if not has_text(split):
            raise HfClmError(f"the {name} split of the corpus is empty (no documents or only empty ones)")
    return DatasetDict(train=train, validation=validation)


def evaluation_documents(files: list[str], key: str = "--data", column: str | None = None,
                         sample_by: str | None = None) -> Dataset:
    """Any text files (``.py``, ``.md``, no suffix: one UTF-8 document per file, or per paragraph or
    line with ``sample_by``) or json/jsonl/csv/parquet tables (their ``column``, default ``text``), as
    one split; errors name ``key``, the flag the user gave."""
    paths = expand_files(files, key)
    builder = builder_for(paths, key)
    if builder == "text" and column is not None:
        raise HfClmError(f"--text_column {column}: {key} gives text files, one document per file, which have no "
                         f"columns; it applies to json/jsonl/csv/parquet tables")
    if builder != "text" and sample_by is not None:
        raise HfClmError(f"--sample_by {sample_by}: {key} gives {builder} tables, one document per row; it applies "
                         f"to text files")
    if all(Path(f).stat().st_size == 0 for f in paths):
        raise HfClmError(f"{key}: the evaluation text is empty ({', '.join(paths)} hold no text)")
    by = sample_by or "document"
    kwargs = {"sample_by": by, "keep_linebreaks": by != "line"} if builder == "text" else {}
    if builder == "text":
        for path in paths:
            check_utf8(path)
    try:
        split = datasets.load_dataset(builder, data_files={"evaluation": paths}, split="evaluation", **kwargs)
    except DatasetGenerationError as err:
        raise HfClmError(f"{key}: cannot read the {builder} files: {first_line(err.__cause__ or err)}") from None
    return select_text(split, column or TEXT, "evaluation")


def mixed_formats_problem(folder: Path) -> str | None:
    """Why a local dataset folder is ambiguous (None when it is not): data files of several formats,
    of which ``load_dataset`` would read one format and silently skip the others."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_visible(p, folder)
             and p.suffix.lower() in BUILDER_BY_SUFFIX]
    by_format: dict[str, list[str]] = {}
    for path in files:
        by_format.setdefault(BUILDER_BY_SUFFIX[path.suffix.lower()], []).append(str(path.relative_to(folder)))
    if len(by_format) < 2:
        return None
    listed = "; ".join(f"{builder}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                       for builder, names in sorted(by_format.items()))
    return f"its data files mix formats ({listed}) and only one format would be read; keep one format per folder"


def dataset_split(name: str, config: str | None, split: str, column: str) -> Dataset:
    """One split of a Hub (or local ``datasets``) dataset, for evaluation."""
    if Path(name).is_dir() and (problem := mixed_formats_problem(Path(name))):
        raise HfClmError(f"--dataset_name {name}: {problem}")
    require_hub("--dataset_name", name, "give local files with --data")
    try:
        splits = datasets.load_dataset(name, config)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
        from huggingface_hub import constants

        offline = " (HF_HUB_OFFLINE=1 is set: only cached or local datasets load)" if constants.HF_HUB_OFFLINE else ""
        raise HfClmError(f"--dataset_name {name} could not be loaded{offline}: {first_line(err)}") from None
    if split not in splits:
        raise HfClmError(f"--split {split} is not a split of {name}; it has: {', '.join(splits)}")
    return select_text(splits[split], column, split)


def validation_split(data: DataArguments) -> Dataset:
    """The documents a recipe's training validates on: one definition for training and for
    ``hf-clm perplexity --recipe`` (a streamed corpus validates on its head, not its tail)."""
    if data.streaming:
        return load_streaming_corpus(data)[1]
    return load_corpus(data)["validation"]


# Documents held out for validation from the head of a streamed corpus that has no validation split.
STREAMING_EVAL_DOCUMENTS = 1000


def file_names(paths: list[str], shown: int = 3) -> str:
    """Files by name only (a report or a pushed file names no folder of this machine), the first few."""
    names = [Path(p).name + ("/" if Path(p).is_dir() else "") for p in paths]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def validation_text(data: dict[str, Any]) -> str:
    """The documents :func:`validation_split` gives for these data keys (a recipe's), in words."""
    first = data.get("max_eval_samples")
    return validation_source(data) + (f"; the first {first:,}" if first else "")


def validation_source(data: dict[str, Any]) -> str:
    """Where :func:`validation_split`'s documents come from, in words, without ``max_eval_samples``'s cap
    (a run states the cap from the documents it scored)."""
    percentage, first = data.get("validation_split_percentage"), data.get("max_eval_samples")
    head = f"the first {first or STREAMING_EVAL_DOCUMENTS:,} documents of the stream"
    if data.get("builtin_corpus"):
        text = f"{data['builtin_corpus']}, {percentage}% of its files held out"
    elif data.get("train_files"):
        files = data.get("validation_files") or data["train_files"]
        is_text = BUILDER_BY_SUFFIX.get(Path(files[0]).suffix.lower(), "text") == "text"
        unit = {"paragraph": "paragraphs", "line": "lines"}.get(data.get("sample_by"), "documents") \
            if is_text else "rows"
        if data.get("validation_files"):
            text = f"the {unit} of {file_names(files)}"
        elif data.get("streaming"):
            return f"{head} ({unit} of {file_names(files)})"
        else:
            text = f"{percentage}% of the {unit} of {file_names(files)}, held out"
    else:
        name = data.get("dataset_name") or ""
        name = " ".join(filter(None, (Path(name).name if Path(name).is_absolute() else name,
                                      data.get("dataset_config_name"))))
        missing = head.replace("the stream", "train") if data.get("streaming") else f"{percentage}% of train held out"
        text = f"{name}, validation split (or, where it has none, {missing})"
    return text


def head_documents(data_values: dict, split: str, n: int):
    """The first ``n`` documents of a streamed split (a generator, so datasets can cache its output)."""
    stream = load_streaming_corpus_splits(DataArguments(**data_values))[split]
    yield from (stream if n < 0 else stream.take(n))


def load_streaming_corpus_splits(data: DataArguments) -> dict[str, IterableDataset]:
    raw = load_raw(data, streaming=True)
    if "train" not in raw:
        raise HfClmError(f"the corpus has no 'train' split; it has: {', '.join(raw)}")
    splits = {name: select_text(raw[name], data.text_column, name) for name in ("train", "validation") if name in raw}
    if "validation" not in splits:
        n_val = data.max_eval_samples or STREAMING_EVAL_DOCUMENTS
        splits["validation"], splits["train"] = splits["train"].take(n_val), splits["train"].skip(n_val)
    return splits


def materialize_head(data: DataArguments, split: str, n: int | None) -> Dataset:
    """The first ``n`` documents (all when None) of a streamed split, as a cached ``Dataset``."""
    head = Dataset.from_generator(head_documents, gen_kwargs={"data_values": dataclasses.asdict(data), "split": split,
                                                              "n": -1 if n is None else n},
                                  features=datasets.Features({TEXT: datasets.Value("string")}))
    if not has_text(head):
        raise HfClmError(f"the {split} split of the streamed corpus is empty")
    return head


def load_streaming_corpus(data: DataArguments) -> tuple[IterableDataset, Dataset]:
    """(training stream, validation split): validation is small and evaluated often, so it is
    read once into a ``Dataset``; without a validation split, it is the stream's first documents
    (``max_eval_samples``, default 1,000) and training skips them."""
    train = load_streaming_corpus_splits(data)["train"]
    validation = materialize_head(data, "validation", data.max_eval_samples)
    if next(iter(train.take(1)), None) is None:
        head = data.max_eval_samples or f"by default {STREAMING_EVAL_DOCUMENTS:,}"
        raise HfClmError(f"the streamed corpus has no training documents: without a validation split a stream "
                         f"validates on its first documents (max_eval_samples, {head}), and these were all "
                         f"{len(validation):,} of them; lower max_eval_samples, give validation_files, or split the "
                         f"text into more documents (sample_by: paragraph or line)")
    return train, validation


EVAL_SET_KEYS = ("dataset_name", "dataset_config_name", "split", "text_column")


def eval_set_specs(value: dict | str | None) -> dict[str, Any]:
    """The recipe's ``eval_sets`` as a mapping of name -> files or dataset description."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise HfClmError("eval_sets on the command line must be JSON, e.g. "
                             "'{\"docs\": [\"docs/\"]}'") from None
    if not isinstance(value, dict) or not value:
        raise HfClmError("eval_sets must be a mapping of NAME: FILES or NAME: {dataset_name: ...}")
    for name, spec in value.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(name)) or name == "validation":
            raise HfClmError(f"eval_sets name '{name}' must be letters, digits, _ or - (and not 'validation', "
                             f"the default set)")
        if isinstance(spec, dict):
            unknown = set(spec) - set(EVAL_SET_KEYS)
            if unknown or "dataset_name" not in spec:
                raise HfClmError(f"eval_sets.{name}: a dataset is {{dataset_name: ..., dataset_config_name: ..., "
                                 f"split: ..., text_column: ...}}" + (f"; unknown: {', '.join(sorted(unknown))}"
                                                                      if unknown else ""))
        elif not (isinstance(spec, str) or (isinstance(spec, list) and spec and all(isinstance(f, str) for f in spec))):
            raise HfClmError(f"eval_sets.{name} must be files (a path, glob or list of them) or a dataset mapping")
    return value


def load_eval_sets(data: DataArguments) -> dict[str, Dataset]:
    """The recipe's named evaluation sets, each a split of documents with a ``text`` column."""
    sets = {}
    for name, spec in eval_set_specs(data.eval_sets).items():
        if isinstance(spec, dict):
            sets[name] = dataset_split(spec["dataset_name"], spec.get("dataset_config_name"),
                                       spec.get("split", "validation"), spec.get("text_column", TEXT))
        else:
            sets[name] = evaluation_documents([spec] if isinstance(spec, str) else spec, key=f"eval_sets.{name}")
        if not has_text(sets[name]):
            raise HfClmError(f"eval_sets.{name} is empty (no documents or only empty ones)")
    return sets
