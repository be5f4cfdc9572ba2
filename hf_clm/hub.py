"""Hub: a finished run -> a model repository (weights, tokenizer, recipe, report, model card).

Everything goes through ``huggingface_hub`` (``create_repo``, ``create_branch``, ``upload_folder``,
``ModelCard``); the endpoint is the client's own (``HF_ENDPOINT``). Access is checked before any
training starts, and the token is only ever handed to the client: never printed or written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from hf_clm.artifacts import finished_marker_problem, read_json, safetensors_problem, weights_files, write_text_atomic
from hf_clm.errors import HfClmError, first_line
from hf_clm.figures import eval_sets_table, figure_rows, markdown_table
from hf_clm.hub_sources import NETWORK_ERRORS
from hf_clm.recipe import PATH_KEYS, PATH_OR_HUB_KEYS
from hf_clm.run_files import (
    ADAPTER_CONFIG,
    MERGED_DIRNAME,
    MODEL_CARD,
    PERPLEXITY_FILENAME,
    RECIPE_FILENAME,
    REPORT_MD,
    TOKENIZER_FILE,
    TRAINER_STATE,
    TRAINING_ARGS,
)
from hf_clm.tokenizer import UnreadableTokenizer, read_tokenizer

logger = logging.getLogger(__name__)

PORTABLE_RECIPE_HEADER = ("# The recipe of this model. Local paths are given by file name only: point train_files,\n"
                          "# validation_files (and a local model_name_or_path) at your copies before running it.\n")
# What a pushed repository holds: the model, tokenizer, recipe, figures and report; never checkpoints.
UPLOADED = ["*.safetensors", "*.json", "*.txt", RECIPE_FILENAME, REPORT_MD, "*.png", MODEL_CARD]
NOT_UPLOADED = ["checkpoint-*/**", TRAINER_STATE, TRAINING_ARGS, f"{MERGED_DIRNAME}/**", "runs/**",
                ".*", "**/.*"]  # hidden: the lock, temporary files of an interrupted write


@dataclass
class PushTarget:
    repo_id: str
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None


def checked_repo_id(repo_id: str | None) -> str:
    if not repo_id:
        raise HfClmError("no Hub repository given: set hub_model_id: OWNER/NAME (or --repo-id)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HfClmError(f"invalid Hub repository id '{repo_id}': {first_line(err)}") from None
    if repo_id.count("/") != 1:
        raise HfClmError(f"invalid Hub repository id '{repo_id}': use OWNER/NAME")
    return repo_id


def http_status(err: HfHubHTTPError) -> int | str:
    return err.response.status_code if err.response is not None else "no answer"


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the recipe's, else ``HF_TOKEN``, else the stored login."""
    token = token or get_token()
    if not token:
        raise HfClmError("no Hugging Face token: set HF_TOKEN or run 'hf auth login' before pushing")
    return token


def check_hub_access(repo_id: str | None, token: str | None = None) -> tuple[str, str]:
    """Fail fast, before hours of training: a valid repo id and a token the Hub accepts."""
    repo_id = checked_repo_id(repo_id)
    token = resolve_token(token)
    if constants.HF_HUB_OFFLINE:
        raise HfClmError("HF_HUB_OFFLINE=1 is set, and pushing needs the Hugging Face Hub: unset it "
                         "(unset HF_HUB_OFFLINE) and push again")
    try:
        user = HfApi(token=token).whoami()
    except HfHubHTTPError as err:
        raise HfClmError(f"the Hub refused the token (HTTP {http_status(err)}); log in again or set another "
                         f"HF_TOKEN") from None
    except NETWORK_ERRORS as err:
        raise HfClmError(f"cannot reach the Hugging Face Hub ({constants.ENDPOINT}) to check the token: "
                         f"{type(err).__name__}; check the network or HF_ENDPOINT") from None
    logger.info("Hub access checked: pushing to %s as %s", repo_id, user.get("name", "?"))
    return repo_id, token


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
    for path in weights_files(run_dir):
        if problem := safetensors_problem(path):
            raise HfClmError(f"{path} is damaged ({problem}); nothing was pushed: train the run again or "
                             f"resume it from a checkpoint")
    if problem := finished_marker_problem(run_dir):
        raise HfClmError(f"{run_dir} is not a finished run ({problem}); nothing was pushed: finish the run "
                         f"(resume_from_checkpoint: auto) first")
    summary = read_json(run_dir / PERPLEXITY_FILENAME, "train the run to the end first")
    if summary.get("perplexity") is None:
        raise HfClmError(f"{run_dir / PERPLEXITY_FILENAME} holds no finite perplexity "
                         f"({summary.get('non_finite', {})}); a diverged run is not pushed")
    try:
        read_tokenizer(run_dir)
    except UnreadableTokenizer as err:
        raise HfClmError(f"the tokenizer in {run_dir} ({TOKENIZER_FILE}) cannot be loaded "
                         f"({err.reason}); nothing was pushed") from None
    try:
        recipe = yaml.safe_load((run_dir / RECIPE_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise HfClmError(f"{run_dir / RECIPE_FILENAME} cannot be read ({first_line(err)})") from None
    return run_dir, summary, recipe


def portable_name(value: Any) -> Any:
    """A local path as its last component (a pushed file names no folder of this machine)."""
    if isinstance(value, list):
        return [portable_name(v) for v in value]
    return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value


def portable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as pushed: absolute local paths reduced to file and folder names."""
    return {key: portable_name(value) if key in PATH_KEYS + PATH_OR_HUB_KEYS else value
            for key, value in recipe.items()}


def portable_adapter_config(path: Path) -> bytes:
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = portable_name(config.get("base_model_name_or_path"))
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def evaluation_dataset(recipe: dict[str, Any]) -> tuple[str, str]:
    """(type, name) of the validation data, as model-index wants them."""
    if recipe.get("dataset_name"):
        config = recipe.get("dataset_config_name")
        return recipe["dataset_name"], f"{recipe['dataset_name']} {config}" if config else recipe["dataset_name"]
    if recipe.get("builtin_corpus"):
        return recipe["builtin_corpus"], f"{recipe['builtin_corpus']} (held-out files)"
    files = recipe.get("validation_files") or recipe.get("train_files") or []
    return "local-files", "local files: " + ", ".join(Path(f).name for f in files)


def reproduce_command(repo_id: str) -> str:
    return f"hf download {repo_id} recipe.yaml --local-dir . && hf-clm train recipe.yaml"


def figure_rows_table(summary: dict[str, Any]) -> list[str]:
    """The run's figures as a two-column table (a fine-tuning run's as ``base → fine-tuned``)."""
    return markdown_table(["figure", "base model → fine-tuned" if summary.get("base") else "value"],
                          [list(row) for row in figure_rows(summary)], numeric_from=1)


def card_body(repo_id: str, summary: dict[str, Any], recipe: dict[str, Any], plots: list[str]) -> str:
    dataset_type, dataset_name = evaluation_dataset(recipe)
    vocab = summary.get("vocab_size", recipe.get("vocab_size"))  # what the BPE learned (vocab_size caps it)
    tokenizer = (f"byte-level BPE trained on the training split, vocab {vocab}"
                 if recipe.get("train_tokenizer") else recipe.get("tokenizer_name_or_path") or recipe.get("model_name_or_path"))
    base = recipe.get("model_name_or_path")
    architecture = (f"LoRA adapter (r={recipe.get('lora_r')}) on {base}" if recipe.get("peft_method")
                    else f"fine-tuned from {base}" if base
                    else f"GPT-2-style, {recipe.get('n_layer')} layers x {recipe.get('n_embd')} wide, from scratch")
    table = "\n".join(figure_rows_table(summary) + eval_sets_table({"this model": summary}))
    headline = (f"\n\nPerplexity {summary['base']['perplexity']:.1f} → {summary['perplexity']:.1f} on {dataset_name} "
                f"(the base model before fine-tuning → this model)." if summary.get("base") else "")
    figures = "\n".join(f"![{Path(p).stem}]({p})" for p in plots)
    recipe_yaml = yaml.safe_dump(recipe, sort_keys=False).strip()
    return f"""# {repo_id.split('/')[-1]}

A causal language model trained with [hf_clm](https://github.com/hf-clm/hf_clm): {architecture}.

## Evaluation

Perplexity = exp(token-weighted mean NLL) on the validation split of {dataset_name} ({dataset_type}),
blocks of {summary['block_size']} tokens.{headline}

{table}

{figures}

## Training

- block size: {summary['block_size']}
- tokenizer: {tokenizer}

The recipe (also in this repository as `recipe.yaml`):

```yaml
{recipe_yaml}
```

Reproduce the run:

```bash
{reproduce_command(repo_id)}
```

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
inputs = tokenizer("The cat sat on the", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20, do_sample=True)[0]))
```
"""


def model_card(run_dir: Path, summary: dict[str, Any], recipe: dict[str, Any], repo_id: str) -> ModelCard:
    """A model card whose metadata holds the run's perplexity and bits per byte (model-index)."""
    local, recipe = recipe, portable_recipe(recipe)
    dataset_type, dataset_name = evaluation_dataset(recipe)
    results = [EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_name,
                          dataset_split="validation", dataset_config=recipe.get("dataset_config_name"),
                          metric_type=metric, metric_name=name, metric_value=round(float(summary[key]), 6))
               for metric, name, key in (("perplexity", "Perplexity", "perplexity"),
                                         ("bits_per_byte", "Bits per byte", "bits_per_byte"))]
    results += [EvalResult(task_type="text-generation", dataset_type=name, dataset_name=name,
                           metric_type="perplexity", metric_name="Perplexity",
                           metric_value=round(float(figures["perplexity"]), 6))
                for name, figures in (summary.get("eval_sets") or {}).items() if figures.get("perplexity") is not None]
    data = ModelCardData(
        library_name="peft" if recipe.get("peft_method") else "transformers", pipeline_tag="text-generation",
        license=recipe.get("license"), datasets=[recipe["dataset_name"]] if recipe.get("dataset_name") else None,
        base_model=local.get("model_name_or_path") if local.get("model_name_or_path") and not Path(
            local["model_name_or_path"]).is_absolute() else None,  # a local base has no Hub id
        tags=["hf_clm", "causal-lm"], model_name=repo_id.split("/")[-1], eval_results=results,
    )
    plots = sorted(p.name for p in run_dir.glob("curves_by_*.png"))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + card_body(repo_id, summary, recipe, plots))


def upload_operations(run_dir: Path, recipe: dict[str, Any]) -> list[CommitOperationAdd]:
    """The run's files to upload; the recipe and a LoRA adapter's config in their portable form."""
    names = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    kept = filter_repo_objects(names, allow_patterns=UPLOADED, ignore_patterns=NOT_UPLOADED)
    replaced = {RECIPE_FILENAME: (PORTABLE_RECIPE_HEADER + yaml.safe_dump(recipe, sort_keys=False)).encode()}
    if (run_dir / ADAPTER_CONFIG).is_file():
        replaced[ADAPTER_CONFIG] = portable_adapter_config(run_dir / ADAPTER_CONFIG)
    return [CommitOperationAdd(path_in_repo=name, path_or_fileobj=replaced.get(name, str(run_dir / name)))
            for name in kept]


def push_run(run_dir: str | Path, target: PushTarget, token: str | None = None) -> str:
    """Upload a finished run with its model card; returns the commit URL. The run is checked
    (:func:`read_finished_run`) before any request."""
    run_dir, summary, recipe = read_finished_run(run_dir)
    repo_id, token = check_hub_access(target.repo_id, token)
    write_text_atomic(str(model_card(run_dir, summary, recipe, repo_id)), run_dir / MODEL_CARD)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(repo_id, branch=target.revision, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_id, operations=upload_operations(run_dir, portable_recipe(recipe)), revision=target.revision,
            commit_message=target.commit_message or f"Upload {run_dir.name} (perplexity {summary['perplexity']:.2f})",
        )
    except HfHubHTTPError as err:
        raise HfClmError(f"the Hub refused the upload to {repo_id} (HTTP {http_status(err)})") from None
    except NETWORK_ERRORS as err:
        raise HfClmError(f"the upload to {repo_id} lost the Hub ({constants.ENDPOINT}): {type(err).__name__}; "
                         f"the upload may be incomplete, push again") from None
    logger.info("Pushed %s to %s", run_dir, commit.commit_url)
    return commit.commit_url
