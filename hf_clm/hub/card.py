"""The model card of a publication: metadata (model-index with the run's figures, license, base
model) and a body whose loading code and reproduce command work for anyone who reads them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_clm.hub.publish import Publication
from hf_clm.recipe.parser import recipe_defaults
from hf_clm.recipe.schema import DataArguments, ModelArguments, RunArguments
from hf_clm.run.figures import eval_sets_table, figure_rows, markdown_table, mixture_table
from hf_clm.run.files import CARD_TAG, CURVES_GLOB

CARD_TAGS = [CARD_TAG, "causal-lm"]
# Keys of the author's machine that say nothing about the model.
NOT_SHOWN = {"output_dir"}
# What each recipe key with local files is, in a sentence.
LOCAL_INPUT_NAMES = {"train_files": "the training files", "validation_files": "the validation files",
                     "model_name_or_path": "the base model, a local folder",
                     "tokenizer_name_or_path": "the tokenizer, a local folder",
                     "dataset_name": "the dataset, a local folder", "prepared_dataset": "the prepared dataset",
                     "eval_sets": "the evaluation sets' files", "mixture": "the mixture sources' files"}


def evaluation_dataset(recipe: dict[str, Any]) -> tuple[str, str]:
    """(type, name) of the validation data, as model-index wants them."""
    if recipe.get("dataset_name"):
        config = recipe.get("dataset_config_name")
        return recipe["dataset_name"], f"{recipe['dataset_name']} {config}" if config else recipe["dataset_name"]
    if recipe.get("builtin_corpus"):
        return recipe["builtin_corpus"], f"{recipe['builtin_corpus']} (held-out files)"
    files = recipe.get("validation_files") or recipe.get("train_files") or []
    return "local-files", "local files: " + ", ".join(Path(f).name for f in files)


# A split named in a file's name (wiki.test.raw, valid.txt, dev.jsonl): the split model-index states.
SPLIT_IN_NAME = re.compile(r"(?:^|[^a-z])(test|valid|validation|dev|train)(?:[^a-z]|$)")
SPLIT_NAMES = {"test": "test", "valid": "validation", "validation": "validation", "dev": "validation",
               "train": "train"}


def evaluation_split(recipe: dict[str, Any]) -> str:
    """The split the run validated on, as model-index wants it: a dataset's validation split; the split
    its validation files name (wiki.test.raw: test); the training text's held-out part."""
    files = recipe.get("validation_files")
    if files:
        matches = [SPLIT_IN_NAME.search(Path(f).name.lower()) for f in files]
        named = {SPLIT_NAMES[match.group(1)] for match in matches if match}
        return named.pop() if all(matches) and len(named) == 1 else "validation"
    if recipe.get("train_files") or recipe.get("builtin_corpus"):
        return f"train ({recipe.get('validation_split_percentage', 10)}% held out)"
    return "validation"


def as_written(key: str, value: Any, defaults: dict[str, Any]) -> Any:
    # Trainer declares step counts (warmup_steps, eval_steps, ...) as floats, so 50 comes back as 50.0.
    if key not in defaults and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def shown_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The keys the recipe set (recipe.yaml holds Trainer keys only when they differ from the defaults)."""
    defaults = recipe_defaults(ModelArguments, DataArguments, RunArguments)
    return {key: as_written(key, value, defaults) for key, value in recipe.items()
            if key not in NOT_SHOWN and (key not in defaults or value != defaults[key])}


def reproduce_command(repo_id: str) -> str:
    return f"hf download {repo_id} recipe.yaml --local-dir . && hf-clm train recipe.yaml"


def reproduce_section(pub: Publication, repo_id: str) -> str:
    """The command that repeats the run, when the recipe can run elsewhere; else what it needs that
    only the author has."""
    if not pub.local_inputs:
        return f"Reproduce the run:\n\n```bash\n{reproduce_command(repo_id)}\n```"
    missing = "; ".join(f"{LOCAL_INPUT_NAMES.get(key, key)} ({key}: {', '.join(names)})"
                        for key, names in pub.local_inputs.items())
    return (f"The run cannot be repeated from this repository alone: it used files of the author's machine that "
            f"are not in it: {missing}. `recipe.yaml` names them by file name; point those keys at your own "
            f"copies to train the same recipe.")


def training_data(recipe: dict[str, Any]) -> str:
    if recipe.get("mixture"):
        return "a mixture of " + ", ".join(f"{source_words(spec)} (weight {spec.get('weight')})"
                                           for spec in recipe["mixture"])
    if recipe.get("dataset_name"):
        config = f" (configuration {recipe['dataset_config_name']})" if recipe.get("dataset_config_name") else ""
        return f"the dataset {recipe['dataset_name']}{config}"
    if recipe.get("builtin_corpus"):
        return f"the built-in corpus {recipe['builtin_corpus']}"
    names = ", ".join(Path(str(f)).name for f in recipe.get("train_files") or [])
    validation = ", ".join(Path(str(f)).name for f in recipe.get("validation_files") or [])
    return f"local files: {names}" + (f" (validation: {validation})" if validation else "") + \
        ", which are not in this repository"


def source_words(spec: dict[str, Any]) -> str:
    """A mixture source of the recipe in words, naming no folder of this machine."""
    if spec.get("dataset_name"):
        return " ".join(filter(None, (Path(spec["dataset_name"]).name if Path(spec["dataset_name"]).is_absolute()
                                      else spec["dataset_name"], spec.get("dataset_config_name"))))
    files = spec.get("train_files") or [spec.get("prepared_dataset", "")]
    return "local files " + ", ".join(Path(str(f)).name for f in files)


def base_name(pub: Publication) -> str:
    return pub.base_model or f"the local model {Path(str(pub.recipe.get('model_name_or_path'))).name}"


def architecture(pub: Publication) -> str:
    recipe = pub.recipe
    if pub.kind == "adapter":
        return f"a LoRA adapter (r={recipe.get('lora_r')}) on {base_name(pub)}"
    if pub.kind == "merged":
        return (f"{base_name(pub)} fine-tuned with LoRA (r={recipe.get('lora_r')}), the adapter merged into its "
                f"weights: a plain transformers model")
    if recipe.get("model_name_or_path"):
        return f"fine-tuned from {base_name(pub)}"
    return f"GPT-2-style, {recipe.get('n_layer')} layers x {recipe.get('n_embd')} wide, from scratch"


def loading_code(pub: Publication, repo_id: str) -> str:
    if pub.kind == "adapter":
        imports = "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer"
        load = (f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")  '
                f"# {pub.base_model} with this adapter")
    else:
        imports = "from transformers import AutoModelForCausalLM, AutoTokenizer"
        load = f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")'
    return f"""```python
{imports}

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
{load}
inputs = tokenizer("The cat sat on the", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20, do_sample=True)[0]))
```"""


def license_line(pub: Publication) -> str:
    if pub.license:
        return f"{pub.license} (SPDX identifier)."
    return "No license given: the author published this model without one; ask them before reusing it."


def figure_rows_table(summary: dict[str, Any]) -> list[str]:
    """The run's figures as a two-column table (a fine-tuning run's as ``base → fine-tuned``)."""
    return markdown_table(["figure", "base model → fine-tuned" if summary.get("base") else "value"],
                          [list(row) for row in figure_rows(summary)], numeric_from=1)


def card_body(pub: Publication, repo_id: str, plots: list[str]) -> str:
    summary, recipe = pub.summary, pub.recipe
    dataset_type, dataset_name = evaluation_dataset(recipe)
    vocab = summary.get("vocab_size", recipe.get("vocab_size"))  # what the BPE learned (vocab_size caps it)
    tokenizer = (f"byte-level BPE trained on the training split, vocab {vocab}" if recipe.get("train_tokenizer")
                 else recipe.get("tokenizer_name_or_path") or recipe.get("model_name_or_path"))
    table = "\n".join(figure_rows_table(summary) + eval_sets_table({"this model": summary})
                      + mixture_table({"this model": summary}))
    headline = (f"\n\nPerplexity {summary['base']['perplexity']:.1f} → {summary['perplexity']:.1f} on {dataset_name} "
                f"(the base model before fine-tuning → this model)." if summary.get("base") else "")
    figures = "\n".join(f"![{Path(p).stem}]({p})" for p in plots)
    recipe_yaml = yaml.safe_dump(shown_recipe(recipe), sort_keys=False).strip()
    return f"""# {repo_id.split('/')[-1]}

A causal language model trained with [hf_clm](https://github.com/hf-clm/hf_clm): {architecture(pub)}.

## Evaluation

Perplexity = exp(token-weighted mean NLL) on the {evaluation_split(recipe)} split of {dataset_name} ({dataset_type}),
blocks of {summary['block_size']} tokens.{headline}

{table}

{figures}

## Training

- data: {training_data(recipe)}
- block size: {summary['block_size']}
- tokenizer: {tokenizer}

The recipe's settings (the whole resolved recipe is `recipe.yaml` in this repository):

```yaml
{recipe_yaml}
```

{reproduce_section(pub, repo_id)}

## Use

{loading_code(pub, repo_id)}

## License

{license_line(pub)}
"""


def eval_results(summary: dict[str, Any], recipe: dict[str, Any]) -> list[EvalResult]:
    dataset_type, dataset_name = evaluation_dataset(recipe)
    results = [EvalResult(task_type="text-generation", dataset_type=dataset_type, dataset_name=dataset_name,
                          dataset_split=evaluation_split(recipe), dataset_config=recipe.get("dataset_config_name"),
                          metric_type=metric, metric_name=name, metric_value=round(float(summary[key]), 6))
               for metric, name, key in (("perplexity", "Perplexity", "perplexity"),
                                         ("bits_per_byte", "Bits per byte", "bits_per_byte"))]
    return results + [EvalResult(task_type="text-generation", dataset_type=name, dataset_name=name,
                                 metric_type="perplexity", metric_name="Perplexity",
                                 metric_value=round(float(figures["perplexity"]), 6))
                      for name, figures in (summary.get("eval_sets") or {}).items()
                      if figures.get("perplexity") is not None]


def model_card(pub: Publication, repo_id: str) -> ModelCard:
    """A model card whose metadata holds the run's perplexity and bits per byte (model-index)."""
    recipe = pub.recipe
    data = ModelCardData(
        library_name="peft" if pub.kind == "adapter" else "transformers", pipeline_tag="text-generation",
        license=pub.license, datasets=[recipe["dataset_name"]] if recipe.get("dataset_name") and
        "dataset_name" not in pub.local_inputs else None,
        base_model=pub.base_model, tags=CARD_TAGS, model_name=repo_id.split("/")[-1],
        eval_results=eval_results(pub.summary, recipe),
    )
    plots = sorted(p.name for p in pub.run_dir.glob(CURVES_GLOB))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + card_body(pub, repo_id, plots))
