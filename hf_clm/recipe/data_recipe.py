"""The recipe as ``hf-clm prepare`` reads it: the corpus and tokenizer keys, and how to run the
preparation (``prepare:``), without transformers' ``TrainingArguments`` and so without torch.

The keys of :class:`~hf_clm.recipe.schema.ModelArguments` and :class:`~hf_clm.recipe.schema.DataArguments`
are parsed and checked as :func:`hf_clm.recipe.parser.parse_recipe` checks them (types, choices,
ranges, paths, the corpus and tokenizer rules); any other recipe key (training's) is accepted by
name, as train would, and its value left to train. :class:`PrepareArguments` are the
``prepare:`` section of a recipe file and ``hf-clm prepare``'s flags (flags win).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from hf_clm.errors import HfClmError
from hf_clm.recipe.checks import corpus_problems, recipe_range_problems
from hf_clm.recipe.keys import PREPARE_SECTION_KEY, flag_key, recipe_key_names, unknown_key_message
from hf_clm.recipe.parser import (
    COMMAND_DESCRIPTIONS,
    RECIPE_USAGE,
    RecipeArgumentParser,
    canonical_flag,
    is_recipe_path,
    output_dir_problems,
    package_values,
    replaced_sources,
)
from hf_clm.recipe.paths import resolve_paths
from hf_clm.recipe.ranges import at_least, range_problems
from hf_clm.recipe.schema import DATA_CLASSES, PATH_KEYS, DataArguments, ModelArguments
from hf_clm.recipe.types import checked_value
from hf_clm.recipe.yaml_file import read_recipe_yaml, recipe_mapping

EXECUTORS = ("local", "slurm", "ray")


@dataclass
class PrepareArguments:
    executor: str = field(
        default="local",
        metadata={"help": "What runs the preparation's tasks: 'local' (processes on this machine), 'slurm' (a job "
                          "array, sbatch) or 'ray' (a Ray cluster); through datatrove (pip install "
                          "'hf-clm[cluster]').", "choices": list(EXECUTORS)},
    )
    tasks: int = field(
        default=1,
        metadata={"help": "Parts the training documents are prepared in, one datatrove task each, side by side "
                          "into prepared_dataset (train-0000I-of-0000N/). 1 with the local executor: one "
                          "preparation in this process, as before."},
    )
    workers: int | None = field(
        default=None,
        metadata={"help": "Tasks running at once (local: processes; slurm: array tasks; ray: Ray tasks). Default: "
                          "local, preprocessing_num_workers or 1; slurm and ray, all tasks."},
    )
    logging_dir: str | None = field(
        default=None,
        metadata={"help": "datatrove's folder of task logs and completion files (completions/0000I: a rerun "
                          "skips the finished tasks). Default: PREPARED_DATASET/.pipeline. On a cluster, on a "
                          "file system every node sees."},
    )
    partition: str | None = field(default=None, metadata={"help": "slurm: the partition the job array runs in "
                                                                    "(default: the cluster's default partition)."})
    time: str = field(default="01:00:00", metadata={"help": "slurm: time limit of one task, HH:MM:SS."})
    cpus_per_task: int = field(default=1, metadata={"help": "slurm and ray: CPUs of one task."})
    mem_per_cpu_gb: int | None = field(
        default=None, metadata={"help": "slurm and ray: memory per CPU, in whole GB (default: the cluster's default)."})
    sbatch_args: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "slurm: more #SBATCH options, {name: value} (e.g. {account: lm, qos: high}); on the "
                          "command line as JSON."},
    )
    ray_address: str | None = field(
        default=None,
        metadata={"help": "ray: the address of the cluster to join (ray://HOST:10001 or HOST:6379); default: the "
                          "cluster this process already joined, else a Ray started on this machine."},
    )


PREPARE_KEYS = tuple(f.name for f in dataclasses.fields(PrepareArguments))
PREPARE_CLASSES = (PrepareArguments,)
RANGES = {key: at_least(1, "an integer >= 1") for key in ("tasks", "workers", "cpus_per_task", "mem_per_cpu_gb")}


class DataRecipe(NamedTuple):
    """What ``hf-clm prepare`` needs of a recipe: the same ``model_args`` and ``data_args`` a full
    :class:`~hf_clm.recipe.schema.Recipe` holds, and how to run the preparation."""

    model_args: ModelArguments
    data_args: DataArguments
    prepare_args: PrepareArguments


def data_parser() -> argparse.ArgumentParser:
    """Flags of the data classes and of :class:`PrepareArguments`; training's keys (every other
    recipe key) are taken by name with whatever values follow, and not used."""
    parser = RecipeArgumentParser((*DATA_CLASSES, PrepareArguments), prog="hf-clm prepare", usage=RECIPE_USAGE,
                                  description=COMMAND_DESCRIPTIONS["prepare"])
    own = {f.name for cls in (*DATA_CLASSES, PrepareArguments) for f in dataclasses.fields(cls)}
    for key in recipe_key_names():
        if key not in own:
            parser.add_argument(f"--{key}", dest=key, nargs="*", default=None, help=argparse.SUPPRESS)
    return parser


# Keys whose value may be a .yaml file: a .yaml right after one of these flags is that flag's value.
YAML_VALUED = {key for key in PATH_KEYS if key not in ("train_files", "validation_files", "prepared_dataset")}


def split_recipe_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """``[RECIPE] [--flag value ...]``, the recipe anywhere: the one ``.yaml`` no YAML-valued flag takes."""
    argv = [canonical_flag(a) for a in argv]
    candidates = [i for i, arg in enumerate(argv) if is_recipe_path(arg)
                  and not (i > 0 and flag_key(argv[i - 1]) in YAML_VALUED)]
    if len(candidates) > 1:
        raise HfClmError(f"several recipe files given ({', '.join(argv[i] for i in candidates)}); give one")
    if not candidates:
        return None, argv
    return argv[candidates[0]], argv[:candidates[0]] + argv[candidates[0] + 1:]


def prepare_section(path: str | Path | None) -> dict[str, Any]:
    """The recipe file's ``prepare:`` section, each key checked."""
    if path is None:
        return {}
    section = recipe_mapping(path).get(PREPARE_SECTION_KEY) or {}
    if not isinstance(section, dict):
        raise HfClmError(f"recipe {path}: prepare must be a mapping such as {{executor: slurm, tasks: 8}}")
    values = {}
    for key, value in section.items():
        if key not in PREPARE_KEYS:
            import difflib

            close = difflib.get_close_matches(str(key), PREPARE_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; keys: {', '.join(PREPARE_KEYS)}"
            raise HfClmError(f"unknown key '{key}' in the prepare section of {path}{hint}")
        try:
            values[key] = checked_value(key, value, f"prepare {key}", PREPARE_CLASSES)
        except HfClmError as err:
            raise HfClmError(f"recipe {path}: {err}") from None
    return values


def prepare_problems(values: dict[str, Any]) -> list[str]:
    problems = range_problems(RANGES, values)
    sbatch = values.get("sbatch_args")
    if isinstance(sbatch, str):
        try:
            values["sbatch_args"] = json.loads(sbatch)
        except ValueError:
            problems.append(f"sbatch_args must be a JSON mapping on the command line, e.g. '{{\"account\": "
                            f"\"lm\"}}', not {sbatch!r}")
    if values.get("sbatch_args") is not None and not isinstance(values["sbatch_args"], dict):
        problems.append("sbatch_args must be a mapping of #SBATCH option: value")
    return problems


def parse_data_recipe(argv: list[str]) -> DataRecipe:
    """``[RECIPE.yaml] [--flag value ...]`` -> the recipe's model and data keys and the preparation's
    settings, checked as ``parse_recipe`` checks them, without importing torch."""
    path, flags = split_recipe_path(list(argv))
    parser = data_parser()
    if path is not None:
        parser.set_defaults(**replaced_sources(read_recipe_yaml(path, DATA_CLASSES), flags),
                            **prepare_section(path))
    flags, flag_values = package_values(flags, (*DATA_CLASSES, PrepareArguments))
    namespace, remaining = parser.parse_known_args(flags)
    if remaining:
        flag = next((s for s in remaining if s.startswith("--")), None)
        if flag is None:
            raise HfClmError(f"unexpected argument '{remaining[0]}'; the recipe file must end in .yaml or .yml")
        raise HfClmError(unknown_key_message(flag.lstrip("-").split("=")[0], "the command line"))
    values = resolve_paths({**vars(namespace), **flag_values})
    own = {f.name for cls in DATA_CLASSES for f in dataclasses.fields(cls)}
    problems = (recipe_range_problems({key: value for key, value in values.items() if key in own})
                + output_dir_problems(values, "prepare") + prepare_problems(values))
    if problems:
        raise HfClmError("invalid recipe: " + "; ".join(problems))
    model_args, data_args, prepare_args = (cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.init})
                                           for cls in (*DATA_CLASSES, PrepareArguments))
    if problems := corpus_problems(model_args, data_args):
        raise HfClmError("invalid recipe: " + "; ".join(problems))
    return DataRecipe(model_args, data_args, prepare_args)
