"""The command line, in process through main() (the session's finished run, conftest's
``finished_run``, for the commands that read a run) and as a real subprocess (the entry point)."""

from conftest import run_hf_clm


def test_bad_input_as_subprocess_has_no_traceback(tmp_path):
    result = run_hf_clm("train", "--train_files", str(tmp_path / "nothing-*.txt"), "--train_tokenizer", "true",
                    cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("hf-clm: error: train_files:")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written
