""""Evaluated on" says what a run scored: the description comes from the validation blocks scored
(their documents, max_eval_samples' cap, their tokens), in memory, streamed and from prepared blocks."""

import json
import re

from conftest import recipe_args, run_in_process

CAP = 5


def trained_summary(text_files, run_dir, *flags: str) -> dict:
    result = run_in_process("train", *recipe_args(text_files, run_dir, "--max_steps", "2", "--eval_steps", "2",
                                                  "--save_steps", "2", *flags))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((run_dir / "perplexity.json").read_text())


def described(summary: dict) -> tuple[int, int]:
    """(documents, tokens scored) as the run's evaluated_on states them."""
    match = re.search(r": ([\d,]+) documents.* -> [\d,]+ blocks of \d+ tokens, ([\d,]+) tokens scored$",
                      summary["evaluated_on"])
    assert match, summary["evaluated_on"]
    return tuple(int(group.replace(",", "")) for group in match.groups())


def test_every_path_describes_the_blocks_it_scored(tmp_path, text_files):
    capped = ("--max_eval_samples", str(CAP))
    memory = trained_summary(text_files, tmp_path / "memory", *capped)
    assert described(memory) == (CAP, memory["tokens"])
    assert f"the first {CAP} (max_eval_samples)" in memory["evaluated_on"]

    streamed = trained_summary(text_files, tmp_path / "streamed", *capped, "--streaming", "true")
    assert described(streamed) == (CAP, streamed["tokens"])

    # blocks prepared from every validation document; the cap applies when training reads them
    prepared = tmp_path / "blocks"
    flags = recipe_args(text_files, tmp_path / "unused")
    assert run_in_process("prepare", *flags, "--prepared_dataset", str(prepared)).returncode == 0
    whole = json.loads((prepared / "prepared.json").read_text())["counts"]["validation"]
    assert whole["documents"] > CAP
    from_blocks = trained_summary(text_files, tmp_path / "prepared", *capped, "--prepared_dataset", str(prepared))
    assert described(from_blocks) == (CAP, from_blocks["tokens"])
    assert from_blocks["tokens"] == memory["tokens"]  # the same first documents, the same blocks

    uncapped = trained_summary(text_files, tmp_path / "uncapped", "--prepared_dataset", str(prepared))
    assert described(uncapped) == (whole["documents"], uncapped["tokens"])
    assert uncapped["tokens"] == whole["blocks"] * (whole["block_size"] - 1) > from_blocks["tokens"]
    assert "max_eval_samples" not in uncapped["evaluated_on"]


def test_a_cap_above_the_documents_says_so(tmp_path, text_files):
    summary = trained_summary(text_files, tmp_path / "run", "--max_eval_samples", "100000")
    assert "all there are (max_eval_samples 100,000 is more)" in summary["evaluated_on"]
    assert described(summary)[1] == summary["tokens"]
