"""What a push publishes: a finished run checked whole, and the model others can load from it.

A run publishes its own model; a LoRA run publishes either its adapter, whose base must then be a
Hub model (the recipe's, or one named with ``--base_model``), or its merged model. The files go up
in a portable form: no path of this machine, the adapter's base named by its Hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from hf_clm.data.tokenizer import UnreadableTokenizer, read_tokenizer
from hf_clm.errors import HfClmError, first_line
from hf_clm.recipe.licenses import license_problem
from hf_clm.recipe.schema import PATH_KEYS, PATH_OR_HUB_KEYS
from hf_clm.run.artifacts import damaged_weights, finished_marker_problem, read_json, weights_files
from hf_clm.run.files import (
    ADAPTER_CONFIG,
    MERGED_DIRNAME,
    MERGED_FROM,
    MODEL_CARD,
    PERPLEXITY_FILENAME,
    RECIPE_FILENAME,
    REPORT_JSON,
    REPORT_MD,
    TOKEN_COUNTS_FILENAME,
    TOKENIZER_FILE,
    TRAINER_STATE,
    TRAINING_ARGS,
)

PORTABLE_RECIPE_HEADER = ("# The recipe of this model. Local paths are given by file name only: point train_files,\n"
                          "# validation_files (and a local model_name_or_path) at your copies before running it.\n")
# What a pushed repository holds: the model, tokenizer, recipe, figures and report; never checkpoints.
UPLOADED = ["*.safetensors", "*.json", "*.txt", RECIPE_FILENAME, REPORT_MD, "*.png", MODEL_CARD]
NOT_UPLOADED = ["checkpoint-*/**", TRAINER_STATE, TRAINING_ARGS, f"{MERGED_DIRNAME}/**", "runs/**", MERGED_FROM,
                ".*", "**/.*"]  # hidden: the lock, temporary files of an interrupted write
# What a merged model's repository takes from the run beside the merged weights: its record and figures.
RUN_RECORD = [RECIPE_FILENAME, PERPLEXITY_FILENAME, TOKEN_COUNTS_FILENAME, REPORT_MD, REPORT_JSON, "curves_by_*.png"]
NO_LICENSE = "none"
RECIPE_KEYS_WITH_LOCAL_FILES = [key for key in PATH_KEYS if key != "output_dir"] + [*PATH_OR_HUB_KEYS, "eval_sets", "mixture"]


@dataclass(frozen=True)
class PublishOptions:
    """What to publish of a run: ``merged`` its merged model, ``base_model`` the Hub id of its base
    model, ``license`` an SPDX id or ``none`` (both override the recipe's)."""
    merged: bool = False
    base_model: str | None = None
    license: str | None = None


@dataclass(frozen=True)
class Publication:
    run_dir: Path  # the finished run: recipe, figures, report
    model_dir: Path  # the folder whose model goes up: the run itself, or its merged folder
    kind: str  # "model", "adapter" or "merged"
    summary: dict[str, Any]
    recipe: dict[str, Any]  # as pushed: no local path, a base given by --base_model in model_name_or_path
    base_model: str | None  # the base model's Hub id, when it has one
    license: str | None  # None: published without a license, as asked
    local_inputs: dict[str, list[str]]  # recipe keys that name files of the author's machine, by file name


def read_recipe(run_dir: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((run_dir / RECIPE_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise HfClmError(f"{run_dir / RECIPE_FILENAME} cannot be read ({first_line(err)})") from None


def check_weights_whole(folder: Path) -> None:
    if damaged := damaged_weights(folder):
        path, problem = damaged
        raise HfClmError(f"{path} is damaged ({problem}); nothing was pushed: train the run again or "
                         f"resume it from a checkpoint")


def check_tokenizer_loads(folder: Path) -> None:
    try:
        read_tokenizer(folder)
    except UnreadableTokenizer as err:
        raise HfClmError(f"the tokenizer in {folder} ({TOKENIZER_FILE}) cannot be loaded "
                         f"({err.reason}); nothing was pushed") from None


def read_finished_run(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A run directory checked before anything is uploaded: the finished-run marker present, valid
    and written for the weights beside it; every weights file whole; the tokenizer loading."""
    run_dir = Path(run_dir)
    needed = [PERPLEXITY_FILENAME, RECIPE_FILENAME, TOKENIZER_FILE]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    has_weights = bool(weights_files(run_dir))
    if missing or not has_weights:
        what = ", ".join(missing + ([] if has_weights else ["*.safetensors"]))
        raise HfClmError(f"{run_dir} is not a finished run ({what} missing); train it to the end first")
    check_weights_whole(run_dir)
    if problem := finished_marker_problem(run_dir):
        raise HfClmError(f"{run_dir} is not a finished run ({problem}); nothing was pushed: finish the run "
                         f"(resume_from_checkpoint: auto) first")
    summary = read_json(run_dir / PERPLEXITY_FILENAME, "train the run to the end first")
    if summary.get("perplexity") is None:
        raise HfClmError(f"{run_dir / PERPLEXITY_FILENAME} holds no finite perplexity "
                         f"({summary.get('non_finite', {})}); a diverged run is not pushed")
    check_tokenizer_loads(run_dir)
    return run_dir, summary, read_recipe(run_dir)


def is_merged_folder(path: Path) -> bool:
    """``RUN/merged`` of a LoRA run: pushed as that run's merged model."""
    return (path.name == MERGED_DIRNAME and not (path / PERPLEXITY_FILENAME).exists()
            and (path.parent / ADAPTER_CONFIG).is_file())


def check_merged_model(run_dir: Path, summary: dict[str, Any]) -> Path:
    """The run's merged folder, checked like the run: complete, weights whole, tokenizer loading,
    and merged from the adapter the run's figures were measured on."""
    merged = run_dir / MERGED_DIRNAME
    if not merged.is_dir():
        raise HfClmError(f"{run_dir} has no merged model ({merged} missing); merge it first: hf-clm merge {run_dir}")
    missing = [name for name in ("config.json", TOKENIZER_FILE) if not (merged / name).is_file()]
    missing += [] if weights_files(merged) else ["*.safetensors"]
    if missing:
        raise HfClmError(f"{merged} is not a complete model ({', '.join(missing)} missing); merge it again: "
                         f"hf-clm merge {run_dir}")
    check_weights_whole(merged)
    recorded = json.loads((merged / MERGED_FROM).read_text()) if (merged / MERGED_FROM).is_file() else {}
    if recorded.get("adapter_sha256") != summary["weights_sha256"]:
        raise HfClmError(f"{merged} was not merged from the run's adapter as it is now ({MERGED_FROM} "
                         f"{'differs' if recorded else 'missing'}); merge it again: hf-clm merge {run_dir}")
    check_tokenizer_loads(merged)
    return merged


def checked_base_model(base_model: str | None, recipe: dict[str, Any]) -> str | None:
    if base_model is None:
        return None
    if not recipe.get("model_name_or_path"):
        raise HfClmError(f"--base_model {base_model}: the run was trained from scratch and has no base model; "
                         f"drop --base_model")
    try:
        validate_repo_id(base_model)
    except HFValidationError as err:
        raise HfClmError(f"--base_model {base_model} is not a Hub model id ({first_line(err)}); give "
                         f"OWNER/NAME, e.g. openai-community/gpt2") from None
    return base_model


def hub_model_id(name: Any) -> str | None:
    """``name`` when it names a Hub model, None for a local folder (recipes hold local paths absolute)."""
    return name if isinstance(name, str) and name and not Path(name).is_absolute() else None


def checked_license(options: PublishOptions, recipe: dict[str, Any]) -> str | None:
    """The license the card states (None: none, as asked); a push without one is refused."""
    license_ = options.license or recipe.get("license")
    if not license_:
        raise HfClmError("no license for the model card: pass --license SPDX-ID (e.g. apache-2.0 or mit; the "
                         "recipe's license key sets it for every push), or --license none to publish without one")
    if license_.lower() == NO_LICENSE:
        return None
    if problem := license_problem(license_):
        raise HfClmError(f"{problem}; pass --license ID (the recipe's license key sets it for every push)")
    return license_


def model_kind(run_dir: Path, options: PublishOptions, recipe: dict[str, Any]) -> str:
    is_adapter = (run_dir / ADAPTER_CONFIG).is_file()
    if options.merged and not is_adapter:
        raise HfClmError(f"--merged applies to a LoRA run, and {run_dir} holds a whole model ({ADAPTER_CONFIG} "
                         f"missing); drop --merged")
    if not is_adapter:
        return "model"
    if options.merged:
        return "merged"
    if not options.base_model and not hub_model_id(recipe.get("model_name_or_path")):
        merge = "" if (run_dir / MERGED_DIRNAME).is_dir() else f"hf-clm merge {run_dir}, then "
        raise HfClmError(f"{run_dir} is a LoRA adapter on the local model {recipe.get('model_name_or_path')}, which "
                         f"nobody else can load: push its merged model ({merge}hf-clm push {run_dir} --merged) or "
                         f"name the base model's Hub id (--base_model OWNER/NAME)")
    return "adapter"


def portable_value(value: Any) -> Any:
    """Local paths as their last component (a pushed file names no folder of this machine)."""
    if isinstance(value, list):
        return [portable_value(v) for v in value]
    if isinstance(value, dict):
        return {key: portable_value(v) for key, v in value.items()}
    return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value


def portable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as pushed: absolute local paths reduced to file and folder names."""
    return {key: portable_value(value) if key in RECIPE_KEYS_WITH_LOCAL_FILES + ["output_dir"] else value
            for key, value in recipe.items()}


def local_paths(value: Any) -> list[str]:
    if isinstance(value, list):
        return [name for v in value for name in local_paths(v)]
    if isinstance(value, dict):
        return [name for v in value.values() for name in local_paths(v)]
    return [Path(value).name] if isinstance(value, str) and Path(value).is_absolute() else []


def local_inputs(recipe: dict[str, Any]) -> dict[str, list[str]]:
    """The recipe keys (of the recipe as pushed) whose files only the author has, with their names."""
    found = {key: local_paths(recipe.get(key)) for key in RECIPE_KEYS_WITH_LOCAL_FILES}
    return {key: names for key, names in found.items() if names}


def recipe_as_published(recipe: dict[str, Any], options: PublishOptions, license_: str | None,
                        base_model: str | None) -> dict[str, Any]:
    """The run's recipe with what the push flags said: the license, the base model's Hub id."""
    changes = {"license": license_} if options.license else {}
    return {**recipe, **changes, **({"model_name_or_path": base_model} if base_model else {})}


def publication(run_dir: str | Path, options: PublishOptions) -> Publication:
    """What pushing ``run_dir`` publishes, checked before any request: a run directory (its model or
    LoRA adapter), or with ``--merged`` (or given as ``RUN/merged``) the run's merged model."""
    run_dir = Path(run_dir)
    if is_merged_folder(run_dir):
        run_dir, options = run_dir.parent, PublishOptions(True, options.base_model, options.license)
    run_dir, summary, recipe = read_finished_run(run_dir)
    base_model = checked_base_model(options.base_model, recipe)
    kind = model_kind(run_dir, options, recipe)
    model_dir = check_merged_model(run_dir, summary) if kind == "merged" else run_dir
    license_ = checked_license(options, recipe)
    local = recipe_as_published(recipe, options, license_, base_model)
    return Publication(run_dir, model_dir, kind, summary, portable_recipe(local),
                       base_model or hub_model_id(recipe.get("model_name_or_path")), license_, local_inputs(local))


def portable_adapter_config(path: Path, base_model: str | None) -> bytes:
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model or portable_value(config.get("base_model_name_or_path"))
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def uploaded_names(pub: Publication) -> dict[str, Path]:
    """path in the repository -> local file: the model folder's files, and for a merged model the
    run's record and figures beside them."""
    folders = [pub.model_dir] + ([pub.run_dir] if pub.kind == "merged" else [])
    found: dict[str, Path] = {}
    for folder in folders:
        names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        allowed = UPLOADED if folder == pub.model_dir else RUN_RECORD
        for name in filter_repo_objects(names, allow_patterns=allowed, ignore_patterns=NOT_UPLOADED):
            found.setdefault(name, folder / name)
    return dict(sorted(found.items()))


def upload_operations(pub: Publication) -> list[CommitOperationAdd]:
    """The files to upload; the recipe and a LoRA adapter's config in their portable form."""
    replaced = {RECIPE_FILENAME: (PORTABLE_RECIPE_HEADER + yaml.safe_dump(pub.recipe, sort_keys=False)).encode()}
    if pub.kind == "adapter":
        replaced[ADAPTER_CONFIG] = portable_adapter_config(pub.model_dir / ADAPTER_CONFIG, pub.base_model)
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=replaced.get(name, str(path)))
            for name, path in uploaded_names(pub).items()]
