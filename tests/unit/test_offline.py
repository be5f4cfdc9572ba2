"""Without a reachable Hub: Hub names fail in seconds with one line naming HF_HUB_OFFLINE=1 and the
local alternative; push's network errors are one line."""

import socket
import time

import pytest
from huggingface_hub import constants

from hf_clm.commands.cli import main
from hf_clm.data import sources as hub_sources


@pytest.fixture
def unreachable_hub(monkeypatch):
    """An endpoint nothing listens on, and HF_HUB_OFFLINE unset (as on a machine that just has no network)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub_sources.hub_reachable.cache_clear()
    yield constants.ENDPOINT
    hub_sources.hub_reachable.cache_clear()


@pytest.mark.parametrize("flags, key, alternative", [
    (["--dataset_name", "wikitext", "--train_tokenizer", "true"], "dataset_name 'wikitext'",
     "give local files with train_files"),
    (["--builtin_corpus", "python-stdlib", "--tokenizer_name_or_path", "gpt2"], "tokenizer_name_or_path 'gpt2'",
     "give a local tokenizer folder"),
    (["--builtin_corpus", "python-stdlib", "--model_name_or_path", "gpt2"], "model_name_or_path 'gpt2'",
     "give a local checkpoint folder"),
])


def test_hub_names_fail_fast_when_the_hub_is_unreachable(unreachable_hub, tmp_path, capsys, flags, key,
                                                          alternative):
    start = time.monotonic()
    assert main(["train", *flags, "--output_dir", str(tmp_path / "out")]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-clm: error: {key} is not a local path and the Hugging Face Hub "
                                               f"({unreachable_hub}) is unreachable; set HF_HUB_OFFLINE=1")
    assert alternative in err[0]
    assert not (tmp_path / "out").exists()


def write_minimal_finished_run(run_dir):
    """The files push verifies: whole weights, a loading tokenizer, a recipe, a marker for those weights."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from hf_clm.run.artifacts import write_finished_marker

    save_file({"weight": torch.zeros(2, 2)}, run_dir / "model.safetensors")
    tokenizer = Tokenizer(WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(run_dir / "tokenizer.json"))
    (run_dir / "recipe.yaml").write_text("{}")
    write_finished_marker({"perplexity": 3.0}, run_dir, step=1)


def test_push_network_error_is_one_line(unreachable_hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    write_minimal_finished_run(tmp_path)  # push checks the run before any request
    start = time.monotonic()
    assert main(["push", str(tmp_path), "--repo-id", "someone/model", "--license", "mit"]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"hf-clm: error: cannot reach the Hugging Face Hub ({unreachable_hub}) to check the token: "
                   f"ConnectError; check the network or HF_ENDPOINT"]


def test_push_with_hf_hub_offline_says_to_unset_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    write_minimal_finished_run(tmp_path)
    assert main(["push", str(tmp_path), "--repo-id", "someone/model", "--license", "mit"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "hf-clm: error: HF_HUB_OFFLINE=1 is set, and pushing needs the Hugging Face Hub: unset it "
        "(unset HF_HUB_OFFLINE) and push again"]
