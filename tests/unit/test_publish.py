"""Publishing runs others can use: a LoRA run's adapter on a Hub base or its merged model, a card
whose loading code and reproduce command work elsewhere, a license, and a dry run that sends nothing.
Pushed to the local Hub stand-in (hub_server.py), the command line in process."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import hub_env
from huggingface_hub import ModelCard

from hf_clm.hub.card import model_card, shown_recipe
from hf_clm.hub.publish import Publication, PublishOptions, local_inputs, publication
from hf_clm.run.figures import byte_size


@pytest.fixture(scope="module")
def lora_run(finished_lora_run):
    return finished_lora_run.run_dir


def pushed(state) -> dict[str, bytes]:
    (commit,) = state.commits
    return commit.files


def test_a_lora_run_keeps_no_template_card_and_its_merged_model_records_its_adapter(lora_run):
    assert "# Model Card for Model ID" in (lora_run / "checkpoint-4" / "README.md").read_text()  # peft's template
    assert not (lora_run / "README.md").exists()
    summary = json.loads((lora_run / "perplexity.json").read_text())
    merged_from = json.loads((lora_run / "merged" / "merged_from.json").read_text())
    assert merged_from["adapter_sha256"] == summary["weights_sha256"]


def test_the_adapter_goes_up_on_the_base_named_by_base_model(hub, lora_run, tmp_path, hub_cli):
    state, endpoint = hub
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    result = hub_cli(hub_env(endpoint), "push", str(run), "--repo-id", "tester/adapter",
                    "--base_model", "tester/base", "--license", "mit")
    assert result.returncode == 0, result.stderr[-3000:]
    files = pushed(state)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert "model.safetensors" not in files and not any(name.startswith("merged") for name in files)
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == "tester/base"
    assert yaml.safe_load(files["recipe.yaml"])["model_name_or_path"] == "tester/base"
    card = ModelCard(files["README.md"].decode())
    assert (card.data.library_name, card.data.base_model, card.data.license) == ("peft", "tester/base", "mit")
    assert 'AutoPeftModelForCausalLM.from_pretrained("tester/adapter")' in card.text
    assert "Model Card for Model ID" not in card.text and files["README.md"] == (run / "README.md").read_bytes()
    assert "hf-clm train recipe.yaml" not in card.text  # trained on local files: nothing to reproduce with
    assert "train_files: train.txt" in card.text and "not in this repository" in card.text


@pytest.mark.parametrize("how", ["--merged", "RUN/merged"])
def test_the_merged_model_goes_up_with_the_runs_record(hub, lora_run, tmp_path, how, hub_cli):
    state, endpoint = hub
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    target = [str(run), "--merged"] if how == "--merged" else [str(run / "merged")]
    result = hub_cli(hub_env(endpoint), "push", *target, "--repo-id", "tester/merged", "--license", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    files = pushed(state)
    assert files["model.safetensors"] == (run / "merged" / "model.safetensors").read_bytes()
    assert {"config.json", "tokenizer.json", "recipe.yaml", "perplexity.json", "report.md", "curves_by_steps.png"} \
        <= set(files)
    assert not {"adapter_config.json", "adapter_model.safetensors", "merged_from.json"} & set(files)
    card = ModelCard(files["README.md"].decode())
    assert (card.data.library_name, card.data.base_model, card.data.license) == ("transformers", None, None)
    assert "AutoModelForCausalLM.from_pretrained" in card.text and "peft" not in card.text.split("## Use")[1]
    assert "No license given" in card.text
    assert "the base model, a local folder (model_name_or_path: run)" in card.text
    assert files["README.md"] == (run / "merged" / "README.md").read_bytes()
    assert not (run / "README.md").exists()
    assert hub_cli(hub_env(endpoint), "merge", str(run)).returncode == 0  # the card does not block a new merge


@pytest.mark.parametrize("damage,message", [
    (lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:3000]),
     "merged/model.safetensors is damaged"),
    (lambda m: (m / "tokenizer.json").write_text("{"), "merged (tokenizer.json) cannot be loaded"),
    (lambda m: (m / "tokenizer.json").unlink(), "merged is not a complete model (tokenizer.json missing)"),
    (lambda m: (m / "merged_from.json").write_text('{"adapter_sha256": {}}'),
     "was not merged from the run's adapter as it is now (merged_from.json differs)"),
    (lambda m: shutil.rmtree(m), "has no merged model"),
])


def test_the_merged_model_is_verified_before_any_request(hub, lora_run, tmp_path, damage, message, hub_cli):
    state, endpoint = hub
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    damage(run / "merged")
    result = hub_cli(hub_env(endpoint), "push", str(run), "--merged", "--repo-id", "tester/x", "--license", "mit")
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert state.requests == []


def test_the_card_shows_the_keys_set_as_written(lora_run):
    pub = publication(lora_run, PublishOptions(merged=True, license="apache-2.0"))
    shown = shown_recipe(pub.recipe)
    assert shown["warmup_steps"] == 2 and isinstance(shown["warmup_steps"], int)
    assert shown["max_steps"] == 4 and shown["lora_r"] == 4 and shown["peft_method"] == "lora"
    assert not {key for key in shown if key.startswith(("bnb_", "lora_dropout", "lora_alpha", "load_in"))}
    assert "output_dir" not in shown and len(shown) < 30
    card = str(model_card(pub, "tester/keys"))
    assert "warmup_steps: 2\n" in card and "warmup_steps: 2.0" not in card and "bnb_4bit" not in card


def test_the_reproduce_command_is_shown_only_for_a_recipe_that_runs_elsewhere(finished_run):
    assert local_inputs({"dataset_name": "wikitext", "model_name_or_path": "gpt2", "output_dir": "/x/run"}) == {}
    assert local_inputs({"train_files": ["/data/a.txt"], "eval_sets": {"b": "/data/b.txt"}}) == \
        {"train_files": ["a.txt"], "eval_sets": ["b.txt"]}
    pub = publication(finished_run.run_dir, PublishOptions(license="mit"))
    assert "hf-clm train recipe.yaml" not in str(model_card(pub, "tester/local"))
    hub_recipe = {**pub.recipe, "train_files": None, "validation_files": None, "dataset_name": "wikitext",
                  "dataset_config_name": "wikitext-2-raw-v1"}
    portable = Publication(**{**pub.__dict__, "recipe": hub_recipe, "local_inputs": local_inputs(hub_recipe)})
    card = str(model_card(portable, "tester/portable"))
    assert "hf download tester/portable recipe.yaml --local-dir . && hf-clm train recipe.yaml" in card
    assert "the dataset wikitext (configuration wikitext-2-raw-v1)" in card and "datasets:\n- wikitext" in card


def test_the_license_flag_replaces_the_recipes(hub, finished_run, hub_cli):
    state, endpoint = hub
    result = hub_cli(hub_env(endpoint), "push", str(finished_run.run_dir), "--repo-id", "tester/mit", "--license", "mit")
    assert result.returncode == 0, result.stderr[-3000:]
    files = pushed(state)
    assert ModelCard(files["README.md"].decode()).data.license == "mit"  # the run's recipe says apache-2.0
    assert yaml.safe_load(files["recipe.yaml"])["license"] == "mit"


def test_a_dry_run_writes_the_card_lists_the_files_and_sends_nothing(hub, lora_run, tmp_path, hub_cli):
    state, endpoint = hub
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    result = hub_cli(hub_env(endpoint, token=None), "push", str(run), "--repo-id", "tester/dry", "--merged",
                    "--license", "mit", "--dry_run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert state.requests == []
    lines = result.stdout.strip().splitlines()
    assert "tester/dry" in lines[0] and "nothing was sent" in lines[0]
    listed = {line.split()[0]: line for line in lines[1:]}
    assert {"README.md", "model.safetensors", "config.json", "recipe.yaml"} <= set(listed)
    assert "adapter_model.safetensors" not in listed
    assert byte_size((run / "merged" / "model.safetensors").stat().st_size) in listed["model.safetensors"]
    assert ModelCard.load(run / "merged" / "README.md").data.license == "mit"
