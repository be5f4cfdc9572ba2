"""Report: a run's (or several runs') perplexity table and learning curves, as Markdown, JSON and PNG.

Everything comes from files a finished run already holds: ``perplexity.json`` and Trainer's
``trainer_state.json`` log history. A fine-tuning run shows its base model beside it
(base -> fine-tuned perplexity and bits per byte; the curves start at the base evaluation).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from hf_clm.artifacts import read_json, write_atomic, write_json, write_text_atomic
from hf_clm.errors import HfClmError
from hf_clm.figures import eval_sets_table, figures_table, fmt, markdown_table
from hf_clm.run_files import PERPLEXITY_FILENAME, RECIPE_FILENAME, REPORT_JSON, REPORT_MD, TRAINER_STATE
from hf_clm.run_record import describe

COMPARISON_KIND = "perplexity comparison"  # report.json of `hf-clm perplexity --output`
COMPARISON_PLOT = "perplexity_by_model.png"
CURVES = (("step", "steps"), ("num_input_tokens_seen", "tokens seen"))


def comparison_rows(folder: Path) -> list[dict[str, Any]] | None:
    """The models of a ``hf-clm perplexity --output`` folder, as report rows (no curves)."""
    path = folder / REPORT_JSON
    if (folder / "perplexity.json").is_file() or not path.is_file():
        return None
    content = json.loads(path.read_text(encoding="utf-8"))
    if content.get("kind") != COMPARISON_KIND:
        return None
    return [{"name": row["model"], "path": str(folder), **row, "train_curve": [], "eval_curve": []}
            for row in content["models"]]


def read_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    runs = []
    for path in paths:
        runs += comparison_rows(Path(path)) or [read_run(path)]
    return runs


def read_run(run_dir: str | Path, summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary and log history of a finished run directory (or of one finishing: its ``summary``
    given, as the marker is written only after the report)."""
    run_dir = Path(run_dir)
    needed = [run_dir / PERPLEXITY_FILENAME, run_dir / TRAINER_STATE][summary is not None:]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise HfClmError(f"{run_dir} is not a finished run: {', '.join(missing)} missing")
    if summary is None:
        summary = read_json(needed[0], "train the run to the end (or again) first")
    history = read_json(run_dir / TRAINER_STATE, "the run's Trainer state is damaged")["log_history"]
    # Throughput as the run measured it (hf_clm.throughput); Trainer's train_runtime includes evaluation.
    return {
        "name": run_dir.resolve().name, "path": str(run_dir),
        "train_seconds": None, "train_tokens_per_second": None, **summary,
        "evaluated_on": summary.get("evaluated_on") or recipe_validation_text(run_dir),
        "train_curve": [e for e in history if "loss" in e and "eval_loss" not in e],
        "eval_curve": [e for e in history if "eval_loss" in e],
        "set_curve": [e for e in history if any(k.startswith("eval_") and k.endswith("_perplexity") and
                                                k != "eval_perplexity" for k in e)],
    }


def recipe_validation_text(run_dir: Path) -> str | None:
    """What a run validated on, from its recipe.yaml: for runs whose perplexity.json predates ``evaluated_on``."""
    import yaml

    from hf_clm.corpus import validation_text

    try:
        recipe = yaml.safe_load((run_dir / RECIPE_FILENAME).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return validation_text(recipe) if isinstance(recipe, dict) else None


def legend_names(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's folder name, or, where two runs share one, its path below the runs' common folder."""
    names = [run["name"] for run in runs]
    if len(set(names)) == len(names):
        return names
    paths = [os.path.abspath(run["path"]) for run in runs]
    common = os.path.commonpath(paths)
    return [os.path.relpath(path, os.path.dirname(common) if path == common else common) for path in paths]


def tick_text(value: float, _position=None) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:g}"


def minor_tick_text(value: float, across_decades: bool) -> str:
    """A minor log tick's label: every one within a decade; across decades only 2s and 5s (else they crowd)."""
    lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return tick_text(value) if not across_decades or lead in (2, 5) else ""


def label_log_axis(ax) -> None:
    """Plain numbers (1,000 not 1e3) on a log axis, minor ticks included."""
    import matplotlib.ticker

    low, high = ax.get_ylim()
    across_decades = high / low > 10
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(tick_text))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: minor_tick_text(v, across_decades)))


def say_empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set(xticks=[], yticks=[])


def plot_curves(runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Training loss and eval perplexity against steps and against tokens seen; one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for x_key, x_label in CURVES:
        figure, (loss_ax, ppl_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
        for run in runs:
            name = run["name"]
            # a non-finite figure is logged as null: no point to draw
            train = [e for e in run["train_curve"] if x_key in e and e["loss"] is not None]
            evals = [e for e in run["eval_curve"] if x_key in e and e.get("eval_perplexity") is not None]
            if train:
                loss_ax.plot([e[x_key] for e in train], [e["loss"] for e in train], label=name)
            for set_name in run.get("eval_sets") or {}:
                key = f"eval_{set_name}_perplexity"
                points = [e for e in run["set_curve"] if e.get(key) is not None and x_key in e]
                ppl_ax.plot([e[x_key] for e in points], [e[key] for e in points], marker="s", linestyle="--",
                            label=f"{name} · {set_name}")
            if evals:
                line, = ppl_ax.plot([e[x_key] for e in evals], [e["eval_perplexity"] for e in evals], marker="o",
                                    label=name)
                if run.get("base") and evals[0].get("step") == 0:
                    ppl_ax.annotate(f"base {run['base']['perplexity']:.1f}",
                                    (evals[0][x_key], evals[0]["eval_perplexity"]), textcoords="offset points",
                                    xytext=(6, 4), color=line.get_color())
        loss_ax.set(title="Training loss", xlabel=x_label, ylabel="loss (nats/token)")
        ppl_ax.set(title="Validation perplexity", xlabel=x_label, ylabel="perplexity (log scale)")
        if ppl_ax.lines:
            ppl_ax.set_yscale("log")
            label_log_axis(ppl_ax)
        else:
            say_empty(ppl_ax, "no evaluation during training\n(eval_strategy: no); see perplexity.json")
        if not loss_ax.lines:
            say_empty(loss_ax, "no training loss logged\n(fewer steps than logging_steps)")
        for ax in (loss_ax, ppl_ax):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        figure.tight_layout()
        path = out_dir / f"curves_by_{x_label.replace(' ', '_')}.png"
        write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
        plt.close(figure)
        paths.append(path)
    return paths


def markdown(runs: list[dict[str, Any]], plots: list[Path]) -> str:
    summaries = {r["name"]: r for r in runs}
    lines = ["# Perplexity report", "", *figures_table(summaries), "",
             "Perplexity = exp(total NLL / predicted tokens) on the text a row was evaluated on, cut into the "
             "windows its scoring column gives (figures measured on different texts or windows do not compare); "
             "bits/byte divides the same total NLL, in bits, by the UTF-8 bytes those tokens stand for. Training "
             "time leaves out evaluation and saving; train tokens/s = train tokens / training time."]
    if any(r.get("base") for r in runs):
        lines += ["A → B: the pretrained base model evaluated before the first step (A), then the fine-tuned "
                  "model (B), on the same validation blocks."]
    lines += eval_sets_table(summaries) + [""]
    recorded = [r for r in runs if r.get("run")]
    if recorded:
        lines += ["How each run ran (as recorded by the run itself, not as configured):", ""]
        lines += [f"- {r['name']}: {describe(r['run'])}" for r in recorded] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(run_dirs: list[str | Path], out_dir: str | Path,
                 summaries: list[dict[str, Any]] | None = None) -> list[Path]:
    """``report.md``, ``report.json`` and the PNG plots for the runs, in ``out_dir``."""
    runs = read_runs(run_dirs) if summaries is None else \
        [read_run(d, s) for d, s in zip(run_dirs, summaries)]
    for run, name in zip(runs, legend_names(runs)):
        run["name"] = name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_curves(runs, out_dir)
    # paths relative to the report, so a pushed or copied report names no folder of this machine
    table = [{**{k: v for k, v in r.items() if not k.endswith("_curve")},
              "path": os.path.relpath(Path(r["path"]).resolve(), out_dir.resolve())} for r in runs]
    write_json({"runs": table}, out_dir / REPORT_JSON)
    write_text_atomic(markdown(runs, plots), out_dir / REPORT_MD)
    return [out_dir / REPORT_MD, out_dir / REPORT_JSON, *plots]


def comparison_markdown(rows: list[dict[str, Any]], plot: Path) -> str:
    """The models' table: each row with its own convention, window and stride (each model's default
    window is its own context length)."""
    first = rows[0]
    lines = ["# Perplexity comparison", "",
             f"Every model scored on the same text: {first['evaluated_on']} ({first['documents']:,} documents). "
             "Bits per byte do not depend on the tokenizer: compare models by that column when their tokenizers "
             "differ."]
    if len({(r["convention"], r["window"], r["stride"]) for r in rows}) > 1:
        lines.append("The models were scored with different windows (by default each model's own context "
                     "length): a longer window gives every token more context, which lowers its figures too.")
    header = ["model", "perplexity", "bits/byte", "bits/char", "tokens", "bytes", "convention", "window", "stride",
              "device", "dtype"]
    table = [[r["model"], fmt(r["perplexity"], ".3f"), fmt(r["bits_per_byte"], ".4f"), fmt(r["bits_per_char"], ".4f"),
              f"{r['tokens']:,}", f"{r['bytes']:,}", r["convention"], f"{r['window']:,}", fmt(r["stride"], ","),
              r["device"], r["dtype"]] for r in rows]
    return "\n".join([*lines, "", *markdown_table(header, table), "", f"![{plot.stem}]({plot.name})"]) + "\n"


def plot_comparison(rows: list[dict[str, Any]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(rows) + 2), 3.8))
    names = [r["model"] for r in rows]
    bars = ax.bar(range(len(rows)), [r["bits_per_byte"] or 0 for r in rows], color="tab:blue")
    ax.bar_label(bars, labels=[fmt(r["bits_per_byte"], ".3f") for r in rows])
    ax.set_xticks(range(len(rows)), names, rotation=15, ha="right")
    ax.set(title="Bits per byte (lower is better)", ylabel="bits per UTF-8 byte")
    ax.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = out_dir / COMPARISON_PLOT
    write_atomic(path, lambda temporary: figure.savefig(temporary, dpi=110, format="png"))
    plt.close(figure)
    return path


def write_comparison(rows: list[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """``report.md``, ``report.json`` and a bar chart of several models scored on one text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_comparison(rows, out_dir)
    write_json({"kind": COMPARISON_KIND, "models": rows}, out_dir / REPORT_JSON)
    write_text_atomic(comparison_markdown(rows, plot), out_dir / REPORT_MD)
    return [out_dir / REPORT_MD, out_dir / REPORT_JSON, plot]
