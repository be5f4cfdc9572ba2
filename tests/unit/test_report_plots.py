"""Report figures for the runs users actually have: no evaluations, high perplexities, same folder names;
the learning curves' data; the text and windows each row was measured on."""

import json
import math
import os
import stat
import warnings
from pathlib import Path

import pytest
import yaml

from hf_clm.evaluation.report import comparison_markdown, curve_series, curves_figure, read_run, write_report


def fake_run(path, perplexities, step=10, history=(), **summary):
    path.mkdir(parents=True)
    history = [*history, *({"loss": 5.0 - i, "step": (i + 1) * step, "num_input_tokens_seen": (i + 1) * 1000}
                           for i in range(3))]
    history += [{"eval_loss": math.log(p), "eval_perplexity": p, "step": (i + 1) * step,
                 "num_input_tokens_seen": 1000 * i} for i, p in enumerate(perplexities)]
    (path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (path / "perplexity.json").write_text(json.dumps({
        "perplexity": perplexities[-1] if perplexities else 50.0, "parameters": 10, "train_tokens_seen": 3000,
        "train_seconds": 2.0, "train_tokens_per_second": 1500.0, **summary}))
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


def plotted(figure) -> dict[str, tuple[list, list]]:
    """label -> (x, y) of each line drawn on the figure's one axis."""
    (ax,) = figure.axes
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_training_and_validation_are_one_unit_on_one_axis_with_the_unigram_baseline(tmp_path):
    import matplotlib.pyplot as plt

    docs = {"eval_docs_loss": 3.5, "eval_docs_perplexity": math.exp(3.5), "step": 30, "num_input_tokens_seen": 3000}
    run = read_run(fake_run(tmp_path / "run", [300.0, 40.0, 20.0], history=[docs], unigram_perplexity=500.0,
                            eval_sets={"docs": {"perplexity": 30.0}}))
    by_steps = curves_figure([run], "step", "steps")
    lines = plotted(by_steps)
    assert lines["training"] == ([10, 20, 30], [5.0, 4.0, 3.0])
    assert lines["validation"][0] == [10, 20, 30]
    assert lines["validation"][1] == pytest.approx([math.log(300), math.log(40), math.log(20)])  # eval_loss, nats
    assert lines["docs"] == ([30], [3.5])
    assert lines["unigram baseline"][1] == pytest.approx([math.log(500.0)] * 2)  # a horizontal line at ln(500)
    labels = [text.get_text() for text in by_steps.axes[0].texts]
    assert {"train 3.000", f"val {math.log(20):.3f}", "docs 3.500", f"unigram {math.log(500):.3f}"} <= set(labels)
    assert by_steps.axes[0].get_yscale() == "linear" and "nats/token" in by_steps.axes[0].get_ylabel()
    by_tokens = plotted(curves_figure([run], "num_input_tokens_seen", "tokens seen"))
    assert by_tokens["training"][0] == [1000, 2000, 3000] and by_tokens["validation"][0] == [0, 1000, 2000]
    plt.close("all")
    assert [name for name, *_ in curve_series(run, "step")] == ["training", "validation", "docs"]


def test_several_runs_name_their_curves_and_a_null_loss_is_no_point(tmp_path):
    import matplotlib.pyplot as plt

    runs = [read_run(fake_run(tmp_path / name, [30.0, 20.0], unigram_perplexity=100.0)) for name in ("a", "b")]
    runs[1]["eval_curve"][0]["eval_loss"] = None  # a non-finite loss is logged as null
    runs[0]["name"], runs[1]["name"] = "a", "b"
    lines = plotted(curves_figure(runs, "step", "steps"))
    assert {"a · training", "a · validation", "a · unigram baseline", "b · validation"} <= set(lines)
    assert lines["b · validation"] == ([20], [pytest.approx(math.log(20.0))])
    plt.close("all")


def test_each_row_names_its_text_and_its_windows(tmp_path):
    run = fake_run(tmp_path / "old-run", [30.0], block_size=32)  # perplexity.json without evaluated_on
    (run / "recipe.yaml").write_text(yaml.safe_dump({"train_files": ["/data/notes/train.txt"], "sample_by": "paragraph",
                                                     "validation_split_percentage": 10}))
    new = fake_run(tmp_path / "new-run", [25.0], block_size=64, evaluated_on="wikitext wikitext-2-raw-v1, "
                                                                             "validation split")
    comparison = tmp_path / "cmp"
    comparison.mkdir()
    rows = [{"model": model, "perplexity": 9.0, "bits_per_byte": 1.0, "bits_per_char": 1.0, "tokens": 90,
             "bytes": 400, "documents": 3, "convention": "strided", "window": window, "stride": window,
             "device": "cpu", "dtype": "float32", "evaluated_on": "test.txt, one document per paragraph",
             "sample_by": "paragraph", "limit": None} for model, window in (("small", 128), ("tiny-gpt2", 1024))]
    (comparison / "report.json").write_text(json.dumps({"kind": "perplexity comparison", "models": rows}))
    markdown = comparison_markdown(rows, tmp_path / "perplexity_by_model.png")
    assert "| small | 9.000 |" in markdown and "| strided | 128 | 128 |" in markdown
    assert "| strided | 1,024 | 1,024 |" in markdown and "different windows" in markdown
    assert "test.txt, one document per paragraph (3 documents)" in markdown
    write_report([run, new, comparison], tmp_path / "report")
    table = (tmp_path / "report" / "report.md").read_text()
    assert "evaluated on" in table.splitlines()[2] and "scoring" in table.splitlines()[2]
    assert "| 10% of the paragraphs of train.txt, held out | strided, window 32, stride 32 (validation blocks) |" \
        in table
    assert "| wikitext wikitext-2-raw-v1, validation split | strided, window 64, stride 64 (validation blocks) |" \
        in table
    assert "| test.txt, one document per paragraph | strided, window 1,024, stride 1,024 |" in table
    saved = json.loads((tmp_path / "report" / "report.json").read_text())["runs"]
    assert saved[0]["evaluated_on"] == "10% of the paragraphs of train.txt, held out"


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


# ---- the final evaluation is on the curves, whatever step the run ends at ------------------------


def trained_run(text_files, run_dir, *flags: str) -> dict:
    """A seconds-long real run; its report's rows as ``read_run`` gives them."""
    from conftest import recipe_args

    from hf_clm.commands.cli import main

    assert main(["train", *recipe_args(text_files, run_dir, "--save_steps", "1000", *flags)]) == 0
    return read_run(run_dir)


def assert_final_evaluation_drawn(run: dict) -> list[str]:
    """The validation curve's last point is perplexity.json's step and loss, in both plots; the notes."""
    import matplotlib.pyplot as plt

    summary = json.loads((Path(run["path"]) / "perplexity.json").read_text())
    for x_key, x_label, x_final in (("step", "steps", summary["global_step"]),
                                    ("num_input_tokens_seen", "tokens seen", summary["train_tokens_seen"])):
        figure = curves_figure([run], x_key, x_label)
        xs, ys = plotted(figure)["validation"]
        assert xs[-1] == x_final and ys[-1] == pytest.approx(summary["loss"])
        line = next(line for line in figure.axes[0].lines if line.get_label() == "validation")
        assert line.get_marker() == "o"  # a curve of one point still shows
        notes = [line for t in figure.axes[0].texts for line in t.get_text().splitlines()
                 if line.startswith("validation")]
        plt.close(figure)
    return notes


def test_a_run_ending_between_evaluations_draws_its_final_one(tmp_path, text_files):
    run = trained_run(text_files, tmp_path / "run", "--max_steps", "5", "--eval_steps", "3")
    assert [e["step"] for e in run["eval_curve"]] == [3, 5]
    assert assert_final_evaluation_drawn(run) == ["validation: every 3 steps and at the end (step 5)"]


def budget_flags(seconds: str, eval_steps: str) -> list[str]:
    return ["--max_steps", "-1", "--max_train_seconds", seconds, "--warmup_steps", "0.1", "--eval_steps", eval_steps,
            "--logging_steps", "1"]


def test_a_budget_run_draws_its_final_evaluation(tmp_path, text_files):
    run = trained_run(text_files, tmp_path / "run", *budget_flags("6", "2"))
    steps = [e["step"] for e in run["eval_curve"]]
    assert steps[-1] == run["global_step"] and steps == sorted(set(steps))
    (note,) = assert_final_evaluation_drawn(run)
    # the clock decides whether training stopped on an evaluation step (logged then) or between two (added)
    end = f"step {run['global_step']:,}" + (", after the time budget ended training" if run["global_step"] % 2 else "")
    assert note == (f"validation: every 2 steps and at the end ({end})" if run["global_step"] > 1 else
                    f"validation: at the end only ({end}; eval_steps 2 is past the run's 1 steps)")
    assert "no evaluation during training" not in (tmp_path / "run" / "report.md").read_text()


def test_a_run_with_only_the_final_evaluation_draws_it(tmp_path, text_files):
    run = trained_run(text_files, tmp_path / "run", *budget_flags("5", "100000"))
    assert [e["step"] for e in run["eval_curve"]] == [run["global_step"]]
    assert assert_final_evaluation_drawn(run) == [
        f"validation: at the end only (step {run['global_step']:,}, after the time budget ended training; "
        f"eval_steps 100000 is past the run's {run['global_step']:,} steps)"]
