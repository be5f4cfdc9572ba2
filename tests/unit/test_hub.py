"""Pushing runs with the real huggingface_hub client against a local Hub stand-in (hub_server.py),
the command line in process: the Hub endpoint, offline switch and token of a real process's
environment are set for each call (the environment variables, and huggingface_hub's constants that
were read from them at import)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TOKEN, hub_env, recipe_args, write_corpus
from huggingface_hub import ModelCard

from hf_clm.recipe.schema import PATH_KEYS


@pytest.fixture(scope="module")
def finished_run_dir(finished_run):
    """The session's finished run (trained with --license apache-2.0): pushed as it is, never changed."""
    return finished_run.run_dir


def files_in_repo(run_dir: Path) -> set[str]:
    return {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "recipe.yaml", "perplexity.json", "token_counts.json", "report.md", "report.json",
            "curves_by_steps.png", "curves_by_tokens_seen.png", "README.md"}


def assert_token_absent(run_dir: Path, *outputs: str) -> None:
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for output in outputs:
        assert TOKEN not in output


def test_push_uploads_the_run_byte_for_byte_with_flags(hub, finished_run_dir, hub_cli):
    state, endpoint = hub
    result = hub_cli(hub_env(endpoint), "push", str(finished_run_dir), "--repo-id", "tester/tiny-clm", "--private",
                    "--revision", "experiment", "--commit-message", "First tiny model")
    assert result.returncode == 0, result.stderr[-3000:]
    assert state.repos["tester/tiny-clm"]["private"] is True
    assert "experiment" in state.branches["tester/tiny-clm"]
    (commit,) = state.commits
    assert (commit.repo_id, commit.revision, commit.summary) == ("tester/tiny-clm", "experiment", "First tiny model")
    assert set(commit.files) == files_in_repo(finished_run_dir)
    for name, content in commit.files.items():
        if name != "recipe.yaml":  # pushed with file names instead of this machine's paths
            assert content == (finished_run_dir / name).read_bytes(), name
        assert str(finished_run_dir.parent).encode() not in content, name  # no absolute local path
    pushed = yaml.safe_load(commit.files["recipe.yaml"])
    local = yaml.safe_load((finished_run_dir / "recipe.yaml").read_text())
    assert pushed["train_files"] == ["train.txt"] and pushed["output_dir"] == "run"
    assert {k: v for k, v in pushed.items() if k not in PATH_KEYS} == {k: v for k, v in local.items() if k not in PATH_KEYS}
    assert_token_absent(finished_run_dir, result.stdout, result.stderr)


def test_model_card_parses_back_with_the_run_figures(hub, finished_run_dir, hub_cli):
    state, endpoint = hub
    assert hub_cli(hub_env(endpoint), "push", str(finished_run_dir), "--repo-id", "tester/card").returncode == 0
    card = ModelCard(state.commits[-1].files["README.md"].decode())
    summary = json.loads((finished_run_dir / "perplexity.json").read_text())
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "text-generation", "apache-2.0")
    figures = {result.metric_type: result for result in data.eval_results}
    assert figures["perplexity"].metric_value == pytest.approx(summary["perplexity"], rel=1e-6)
    assert figures["bits_per_byte"].metric_value == pytest.approx(summary["bits_per_byte"], rel=1e-6)
    assert figures["perplexity"].dataset_split == "validation"
    assert figures["perplexity"].task_type == "text-generation"
    assert "hf-clm train recipe.yaml" not in card.text  # trained on local files, which are not in the repository
    assert "the training files (train_files: train.txt)" in card.text
    assert "![curves_by_steps](curves_by_steps.png)" in card.text
    assert f"{summary['train_tokens_seen']:,}" in card.text


def test_push_to_hub_in_the_recipe_pushes_at_the_end_of_training(hub, tmp_path, hub_cli):
    state, endpoint = hub
    files = write_corpus(tmp_path / "corpus")
    result = hub_cli(hub_env(endpoint), "train", *recipe_args(files, tmp_path / "run", "--max_steps", "4",
                                                             "--eval_steps", "4", "--push_to_hub", "true",
                                                             "--hub_model_id", "tester/trained", "--license", "mit"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert state.requests[0] == "GET /api/whoami-v2"  # checked before training
    (commit,) = state.commits
    assert commit.repo_id == "tester/trained" and commit.revision == "main"
    assert "model.safetensors" in commit.files and not any(name.startswith("checkpoint-") for name in commit.files)
    assert "pushed to" in result.stdout
    assert_token_absent(tmp_path / "run", result.stdout, result.stderr)


def test_a_token_in_the_recipe_is_not_written_either(hub, tmp_path, hub_cli):
    state, endpoint = hub
    files = write_corpus(tmp_path / "corpus")
    result = hub_cli(hub_env(endpoint, token=None), "train", *recipe_args(
        files, tmp_path / "run", "--max_steps", "2", "--eval_steps", "2", "--push_to_hub", "true",
        "--hub_model_id", "tester/with-token", "--hub_token", TOKEN, "--license", "mit"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(state.commits) == 1
    assert_token_absent(tmp_path / "run", result.stdout, result.stderr)


@pytest.mark.parametrize("token,repo_id,message", [
    (None, "tester/x", "no Hugging Face token: set HF_TOKEN"),
    ("hf_wrongToken", "tester/x", "the Hub refused the token (HTTP 401)"),
    (TOKEN, "not a repo id!", "invalid Hub repository id 'not a repo id!'"),
    (TOKEN, "just-a-name", "use OWNER/NAME"),
])


def test_training_with_a_bad_push_setup_fails_before_training(hub, tmp_path, token, repo_id, message, hub_cli):
    state, endpoint = hub
    files = write_corpus(tmp_path / "corpus")
    result = hub_cli(hub_env(endpoint, token), "train", *recipe_args(
        files, tmp_path / "run", "--push_to_hub", "true", "--hub_model_id", repo_id, "--license", "mit"))
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert not state.commits and not state.repos


def test_pushing_an_unfinished_run_uploads_nothing(hub, finished_run_dir, tmp_path, hub_cli):
    state, endpoint = hub
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text((finished_run_dir / "recipe.yaml").read_text())
    result = hub_cli(hub_env(endpoint), "push", str(unfinished), "--repo-id", "tester/x")
    assert result.returncode == 2
    assert "is not a finished run (perplexity.json, tokenizer.json, *.safetensors missing)" in result.stderr
    assert state.requests == []


def swap_weights(run_dir: Path) -> None:  # weights of another step beside the marker (a killed extension)
    from safetensors.torch import load_file, save_file
    tensors = load_file(run_dir / "model.safetensors")
    save_file({k: v + 1 for k, v in tensors.items()}, run_dir / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
     "model.safetensors is damaged"),
    (swap_weights, "differ from those perplexity.json was written for"),
    (lambda d: (d / "tokenizer.json").write_text("{"), "tokenizer.json) cannot be loaded"),
    (lambda d: (d / "perplexity.json").write_text(""), "perplexity.json is unreadable or not valid JSON"),
    (lambda d: (d / "perplexity.json").write_text('{"perplexity": 3.0}'), "does not record the run's weights"),
])


def test_push_verifies_the_run_before_any_request(hub, finished_run_dir, tmp_path, damage, message, hub_cli):
    state, endpoint = hub
    run_dir = Path(shutil.copytree(finished_run_dir, tmp_path / "run"))
    damage(run_dir)
    result = hub_cli(hub_env(endpoint), "push", str(run_dir), "--repo-id", "tester/x")
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in result.stderr.strip().splitlines()[-1]
    assert state.requests == []


def test_a_diverged_run_is_not_pushed(hub, tmp_path, hub_cli):
    state, endpoint = hub
    files = write_corpus(tmp_path / "corpus")
    result = hub_cli(hub_env(endpoint), "train", *recipe_args(files, tmp_path / "run", "--learning_rate", "1e6",
                                                             "--push_to_hub", "true", "--hub_model_id", "tester/nan",
                                                             "--license", "mit"))
    assert result.returncode == 3 and "training diverged" in result.stderr.strip().splitlines()[-1]
    assert not state.commits and not (tmp_path / "run" / "perplexity.json").exists()


@pytest.mark.parametrize("recipe, split", [
    ({"dataset_name": "wikitext", "dataset_config_name": "wikitext-2-raw-v1"}, "validation"),
    ({"train_files": ["/d/wiki.train.raw"], "validation_files": ["/d/wiki.test.raw"]}, "test"),
    ({"train_files": ["/d/train.txt"], "validation_files": ["/d/valid.txt"]}, "validation"),
    ({"train_files": ["/d/a.txt"], "validation_files": ["/d/dev.jsonl", "/d/dev2.jsonl"]}, "validation"),
    ({"train_files": ["/d/a.txt"], "validation_files": ["/d/latest.txt"]}, "validation"),
    ({"train_files": ["/d/a.txt"], "validation_split_percentage": 5}, "train (5% held out)"),
    ({"builtin_corpus": "python-stdlib", "validation_split_percentage": 10}, "train (10% held out)"),
])


def test_the_model_index_names_the_split_the_run_validated_on(recipe, split):
    from hf_clm.hub.card import eval_results

    results = eval_results({"perplexity": 20.0, "bits_per_byte": 1.5}, recipe)
    assert {result.dataset_split for result in results} == {split}
