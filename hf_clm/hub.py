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
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id

from hf_clm.errors import HfClmError

logger = logging.getLogger(__name__)

MODEL_CARD = "README.md"
# What a pushed repository holds: the model, tokenizer, recipe, figures and report; never checkpoints.
UPLOADED = ["*.safetensors", "*.json", "*.txt", "recipe.yaml", "report.md", "*.png", MODEL_CARD]
NOT_UPLOADED = ["checkpoint-*/**", "trainer_state.json", "training_args.bin", "merged/**", "runs/**"]


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
        raise HfClmError(f"invalid Hub repository id '{repo_id}': {str(err).splitlines()[0]}") from None
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
    try:
        user = HfApi(token=token).whoami()
    except HfHubHTTPError as err:
        raise HfClmError(f"the Hub refused the token (HTTP {http_status(err)}); log in again or set another "
                         f"HF_TOKEN") from None
    except OSError as err:
        raise HfClmError(f"cannot reach the Hub to check the token: {type(err).__name__}") from None
    logger.info("Hub access checked: pushing to %s as %s", repo_id, user.get("name", "?"))
    return repo_id, token


def read_finished_run(run_dir: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    run_dir = Path(run_dir)
    needed = ["perplexity.json", "recipe.yaml", "tokenizer.json"]
    missing = [name for name in needed if not (run_dir / name).is_file()]
    has_weights = any(run_dir.glob("*.safetensors"))
    if missing or not has_weights:
        what = ", ".join(missing + ([] if has_weights else ["*.safetensors"]))
        raise HfClmError(f"{run_dir} is not a finished run ({what} missing); train it to the end first")
    summary = json.loads((run_dir / "perplexity.json").read_text(encoding="utf-8"))
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
    return run_dir, summary, recipe


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


EVALUATION_ROWS = (("perplexity", "perplexity", ".3f"), ("eval loss (nats/token)", "eval_loss", ".4f"),
                   ("bits per byte", "bits_per_byte", ".4f"), ("evaluated tokens", "eval_tokens", ","))


def evaluation_table(summary: dict[str, Any]) -> str:
    """The run's figures; for a fine-tuning run, the base model's beside them."""
    base = summary.get("base")
    if base:
        rows = [f"| {name} | {base[key]:{spec}} | {summary[key]:{spec}} |" for name, key, spec in EVALUATION_ROWS]
        header = ["| metric | base model | fine-tuned |", "|---|---|---|"]
    else:
        rows = [f"| {name} | {summary[key]:{spec}} |" for name, key, spec in EVALUATION_ROWS]
        header = ["| metric | value |", "|---|---|"]
    if summary.get("unigram_perplexity"):
        rows.append(f"| unigram baseline perplexity |{' – |' if base else ''} {summary['unigram_perplexity']:.2f} |")
    return "\n".join(header + rows)


def card_body(repo_id: str, summary: dict[str, Any], recipe: dict[str, Any], plots: list[str]) -> str:
    dataset_type, dataset_name = evaluation_dataset(recipe)
    tokenizer = (f"byte-level BPE trained on the training split, vocab {recipe.get('vocab_size')}"
                 if recipe.get("train_tokenizer") else recipe.get("tokenizer_name_or_path") or recipe.get("model_name_or_path"))
    base = recipe.get("model_name_or_path")
    architecture = (f"LoRA adapter (r={recipe.get('lora_r')}) on {base}" if recipe.get("peft_method")
                    else f"fine-tuned from {base}" if base
                    else f"GPT-2-style, {recipe.get('n_layer')} layers x {recipe.get('n_embd')} wide, from scratch")
    table = evaluation_table(summary)
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

- parameters: {summary['parameters']:,}
- tokens seen: {summary['train_tokens_seen']:,}
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
    dataset_type, dataset_name = evaluation_dataset(recipe)
    results = [EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_name,
                          dataset_split="validation", dataset_config=recipe.get("dataset_config_name"),
                          metric_type=metric, metric_name=name, metric_value=round(float(summary[key]), 6))
               for metric, name, key in (("perplexity", "Perplexity", "perplexity"),
                                         ("bits_per_byte", "Bits per byte", "bits_per_byte"))]
    data = ModelCardData(
        library_name="peft" if recipe.get("peft_method") else "transformers", pipeline_tag="text-generation",
        license=recipe.get("license"), datasets=[recipe["dataset_name"]] if recipe.get("dataset_name") else None,
        base_model=recipe.get("model_name_or_path") if recipe.get("model_name_or_path") and not Path(
            recipe["model_name_or_path"]).exists() else None,
        tags=["hf_clm", "causal-lm"], model_name=repo_id.split("/")[-1], eval_results=results,
    )
    plots = sorted(p.name for p in run_dir.glob("curves_by_*.png"))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + card_body(repo_id, summary, recipe, plots))


def push_run(run_dir: str | Path, target: PushTarget, token: str | None = None) -> str:
    """Upload a finished run with its model card; returns the commit URL."""
    run_dir, summary, recipe = read_finished_run(run_dir)
    repo_id, token = check_hub_access(target.repo_id, token)
    model_card(run_dir, summary, recipe, repo_id).save(run_dir / MODEL_CARD)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(repo_id, branch=target.revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=run_dir, revision=target.revision, allow_patterns=UPLOADED,
            ignore_patterns=NOT_UPLOADED,
            commit_message=target.commit_message or f"Upload {run_dir.name} (perplexity {summary['perplexity']:.2f})",
        )
    except HfHubHTTPError as err:
        raise HfClmError(f"the Hub refused the upload to {repo_id} (HTTP {http_status(err)})") from None
    logger.info("Pushed %s to %s", run_dir, commit.commit_url)
    return commit.commit_url
