"""The benchmark runs end to end on tiny inputs (it measures nothing meaningful at this size)."""

import json

from conftest import REPO, run_python_module


def test_gpu_check_table_and_correctness_verdict():
    from bench.gpu import LOSS_TOLERANCE, format_table

    rows = [{"switch": "baseline (bf16, SDPA, AdamW)", "tokens_per_second": 100_000.0, "mfu": 0.4,
             "peak_memory_gib": 20.0},
            {"switch": "+ torch_compile", "tokens_per_second": 150_000.0, "mfu": 0.6, "peak_memory_gib": 18.0},
            {"switch": "+ use_liger_kernel", "note": "unavailable: liger-kernel not installed"}]
    table = format_table(rows).splitlines()
    assert table[2] == "| baseline (bf16, SDPA, AdamW) | 100,000 | 1.00× | 40.0% | 20.0 GiB |  |"
    assert table[3] == "| + torch_compile | 150,000 | 1.50× | 60.0% | 18.0 GiB |  |"
    assert table[4] == "| + use_liger_kernel | – | – | – | – | unavailable: liger-kernel not installed |"
    assert 0 < LOSS_TOLERANCE <= 0.02


def test_ratio_targets_render_their_text_and_judge_the_ratio():
    from bench.rows import AtLeast, AtMost, Within

    assert (AtLeast(2).text, AtLeast(0.9).text, AtMost(1.5).text, AtMost(1).text) == ("≥ 2", "≥ 0.9", "≤ 1.5", "≤ 1")
    assert (Within(1.3).text, Within(1.5).text) == ("≥ 0.77 (within 1.3×)", "≥ 0.67 (within 1.5×)")
    assert AtLeast(2).met(2.0) and not AtLeast(2).met(1.99)
    assert AtMost(1.5).met(1.5) and not AtMost(1.5).met(1.51)
    # limit / package: the package within 1.3x of its limit
    assert Within(1.3).met(1.0 / 1.25) and not Within(1.3).met(1.0 / 1.35)


def test_a_row_is_met_by_its_one_target():
    from bench.rows import AtLeast, Basis, Row

    assert Row("s", "w", 2.5, AtLeast(2), "c").met is True
    assert Row("s", "w", 1.5, AtLeast(2), "c").met is False
    assert Row("s", "w", None, AtLeast(2), "unavailable").met is None  # nothing measured, nothing judged
    assert Row("s", "w", 1.5, None, "c").met is None and Row("s", "w", 1.5, None, "c").target_text == ""
    compared_at = Row("A/B x", "+ muon", 1.1, Basis("equal steps (6)"), "c")
    assert (compared_at.target_text, compared_at.met) == ("equal steps (6)", None)


def test_a_target_over_named_figures_judges_them_not_the_ratio():
    from bench.rows import Row
    from bench.stages.nanogpt import TARGET

    assert TARGET.text == "≤ 2.15 bits/char within nanoGPT's wall"

    def row(bits: float, wall: float) -> Row:
        return Row("quality/time", "w", 1.25, TARGET, "c",
                   figures={"bits_per_char": bits, "wall_s": wall, "nanogpt_wall_s": 72.1})

    assert row(2.14, 70.1).met is True
    assert row(2.16, 70.1).met is False  # the ratio (1.25) says nothing here
    assert row(2.14, 72.2).met is False
    assert "figures" not in row(2.14, 70.1).as_dict()


def test_about_judges_a_share_with_a_relative_and_an_absolute_slack():
    from bench.rows import Row
    from bench.stages.data import TASK_SHARE

    def row(largest: int, share: float) -> Row:
        return Row("prepare", "w", largest / share, TASK_SHARE, "c",
                   figures={"largest_bytes_read": largest, "share_bytes": share})

    assert TASK_SHARE.text == "≈ 1"
    assert row(1_000_000 + 10_000 + 16_384, 1_000_000).met is True  # 1% and one boundary search over
    assert row(1_000_000 + 10_000 + 16_385, 1_000_000).met is False
    assert row(30_000, 10_000).met is False and row(20_000, 10_000).met is True  # 3× the share: too much


def test_rows_are_written_with_the_keys_of_the_published_results():
    from bench.rows import AtLeast, Basis, Row

    published = json.loads((REPO / "bench" / "results.json").read_text())["rows"][0]
    row = Row("prepare 5 MB", "package vs datasets.map + group_texts", 3.1, AtLeast(2), "context")
    assert list(row.as_dict()) == list(published)
    assert row.as_dict()["target"] == "≥ 2" and row.as_dict()["met"] is True
    published_ab = json.loads((REPO / "bench" / "results-ab.json").read_text())["rows"][0]
    ab = Row("A/B default", "+ muon", 1.1, Basis("equal wall time (375 s)"), "context",
             extra={"bits_per_char": 1.3, "steps": 1400, "wall_s": 375.0})
    assert list(ab.as_dict()) == list(published_ab)


def test_help_documents_every_stage():
    from bench.__main__ import STAGES

    result = run_python_module("bench", "--help", cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in STAGES:
        assert f"  {stage.name} (bench/stages/{stage.module_name}.py)" in result.stdout
        assert stage.module.__doc__ and stage.module.rows.__doc__
