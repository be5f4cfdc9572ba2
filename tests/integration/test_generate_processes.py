"""generate at the model's context: it stops there, says so, and never indexes past the position table."""

from conftest import run_hf_clm
from support.generate import prompt_of


def test_default_max_new_tokens_on_a_small_model_as_a_subprocess(small_context_model, bpe_tokenizer, tmp_path):
    """Also: the libraries are quiet unless --verbose (their config warnings, "Loading weights" bars)."""
    small_context_model.config.bos_token_id = 10 ** 6  # a config transformers warns about on loading
    small_context_model.save_pretrained(tmp_path)
    bpe_tokenizer.save_pretrained(tmp_path)
    env = {"TRANSFORMERS_VERBOSITY": None, "DATASETS_VERBOSITY": None}  # unset: the package's defaults speak
    runs = {verbose: run_hf_clm(*verbose, "generate", tmp_path, prompt_of(bpe_tokenizer, 5), timeout=300, env=env)
            for verbose in ((), ("--verbose",))}
    for result in runs.values():
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert "5 prompt tokens + 11 new tokens (not 100)" in result.stderr
    quiet, verbose = runs[()].stderr, runs[("--verbose",)].stderr
    assert "Loading weights" not in quiet and "bos_token_id" not in quiet
    assert "Loading weights" in verbose and "bos_token_id" in verbose
