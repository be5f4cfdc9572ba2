"""Report figures for the runs users actually have: no evaluations, high perplexities, same folder names."""

import json
import os
import stat
import warnings

from hf_clm.report import minor_tick_text, tick_text, write_report


def fake_run(path, perplexities, step=10):
    path.mkdir(parents=True)
    history = [{"loss": 5.0 - i, "step": (i + 1) * step, "num_input_tokens_seen": (i + 1) * 1000} for i in range(3)]
    history += [{"eval_loss": 1.0, "eval_perplexity": p, "step": (i + 1) * step, "num_input_tokens_seen": 1000 * i}
                for i, p in enumerate(perplexities)]
    (path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (path / "perplexity.json").write_text(json.dumps({
        "perplexity": perplexities[-1] if perplexities else 50.0, "parameters": 10, "train_tokens_seen": 3000,
        "train_seconds": 2.0, "train_tokens_per_second": 1500.0}))
    return path


def test_same_folder_names_no_evaluations_and_high_perplexity(tmp_path):
    runs = [fake_run(tmp_path / "a" / "run", []), fake_run(tmp_path / "b" / "run", [30000, 5000, 900])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. matplotlib's "No artists with labels found to put in legend"
        write_report(runs, tmp_path / "cmp")
    names = [r["name"] for r in json.loads((tmp_path / "cmp" / "report.json").read_text())["runs"]]
    assert names == ["a/run", "b/run"]
    assert all((tmp_path / "cmp" / f"curves_by_{x}.png").stat().st_size > 0 for x in ("steps", "tokens_seen"))
    assert "| a/run |" in (tmp_path / "cmp" / "report.md").read_text()


def test_log_axis_labels_are_plain_numbers():
    assert [tick_text(v) for v in (1000, 20000, 1.5, 50)] == ["1,000", "20,000", "1.5", "50"]
    assert [minor_tick_text(v, across_decades=True) for v in (2000, 3000, 5000)] == ["2,000", "", "5,000"]
    assert minor_tick_text(3000, across_decades=False) == "3,000"


def test_report_files_get_the_umask_mode_and_replace_a_killed_writers_temporaries(tmp_path):
    run = fake_run(tmp_path / "run", [40.0, 30.0])
    (run / ".report.md.k1ll3d.tmp").write_text("# half a report")  # a writer killed before its rename
    (run / ".curves_by_steps.png.x.tmp").write_bytes(b"\x89PNG")
    previous = os.umask(0o022)
    try:
        written = write_report([run], run)
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(path.stat().st_mode) for path in written} == {0o644}
    assert not list(run.glob(".*.tmp"))
