from pathlib import Path

import pytest
import torch
import yaml

from hf_clm.errors import HfClmError
from hf_clm.recipe import RECIPE_FILENAME, parse_recipe, read_recipe_yaml, save_recipe

REPO = Path(__file__).resolve().parent.parent


def write_recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_overrides_defaults_and_cli_overrides_yaml(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n"
                                  "learning_rate: 3e-4\nblock_size: 64\nmax_steps: 7\n")
    recipe = parse_recipe([path, "--learning_rate", "1e-3"])
    assert recipe.training.learning_rate == pytest.approx(1e-3)  # CLI beats YAML
    assert recipe.data.block_size == 64  # YAML beats the default
    assert recipe.training.max_steps == 7
    assert recipe.model.n_layer == 4  # dataclass default


def test_scientific_notation_in_yaml_is_a_number(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n"
                                  "learning_rate: 3e-4\nweight_decay: 1e-1\n")
    recipe = parse_recipe([path])
    assert isinstance(recipe.training.learning_rate, float)
    assert recipe.training.learning_rate == pytest.approx(3e-4)
    assert recipe.training.weight_decay == pytest.approx(0.1)


def test_unknown_yaml_key_names_the_closest_valid_one(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\nblok_size: 64\n")
    with pytest.raises(HfClmError, match=r"unknown recipe key 'blok_size'.*did you mean 'block_size'"):
        read_recipe_yaml(path)


def test_unknown_cli_flag_names_the_closest_valid_one():
    with pytest.raises(HfClmError, match=r"'lerning_rate'.*did you mean 'learning_rate'"):
        parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", "--lerning_rate", "1"])


def test_bad_value_is_one_line_error():
    with pytest.raises(HfClmError, match="invalid int value: 'big'"):
        parse_recipe(["--builtin_corpus", "python-stdlib", "--block_size", "big"])


def test_problems_are_collected_and_reported_together():
    with pytest.raises(HfClmError) as err:
        parse_recipe(["--block_size", "1", "--sample_by", "sentence"])
    message = str(err.value)
    assert "exactly one of dataset_name, train_files or builtin_corpus" in message
    assert "block_size must be at least 2" in message
    assert "sample_by must be one of" in message
    assert "no tokenizer" in message


def test_resolved_recipe_is_written_and_reruns_identically(tmp_path):
    recipe = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true",
                           "--learning_rate", "2e-3", "--max_steps", "11", "--output_dir", str(tmp_path / "run")])
    path = save_recipe(recipe, recipe.training.output_dir)
    assert path.name == RECIPE_FILENAME
    written = yaml.safe_load(path.read_text())
    assert written["learning_rate"] == pytest.approx(2e-3) and written["max_steps"] == 11
    again = parse_recipe([str(path)])
    assert again.model == recipe.model and again.data == recipe.data
    assert again.training.to_dict() == recipe.training.to_dict()


def test_hub_token_never_written(tmp_path):
    recipe = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true",
                           "--hub_token", "hf_secret_value", "--output_dir", str(tmp_path)])
    path = save_recipe(recipe, tmp_path)
    assert "hf_secret_value" not in path.read_text()


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses_and_starts_with_its_command(path):
    assert path.read_text().startswith("# hf-clm ") or path.read_text().startswith("# accelerate ")
    values = read_recipe_yaml(path)
    # bf16 recipes target GPUs; TrainingArguments refuses bf16 on a CPU-only machine
    no_gpu = ["--bf16", "false"] if values.get("bf16") and not torch.cuda.is_available() else []
    recipe = parse_recipe([str(path), *no_gpu])
    assert recipe.training.output_dir == values["output_dir"]
    assert all(getattr(recipe.model, k, getattr(recipe.data, k, None)) == v for k, v in values.items()
               if hasattr(recipe.model, k) or hasattr(recipe.data, k))


def test_ddp_does_not_search_for_unused_parameters_by_default_and_a_recipe_can_turn_it_on(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n")
    assert parse_recipe([path]).training.ddp_find_unused_parameters is False
    assert parse_recipe([path, "--ddp_find_unused_parameters", "true"]).training.ddp_find_unused_parameters is True
