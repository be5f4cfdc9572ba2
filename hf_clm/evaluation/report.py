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

from hf_clm.errors import HfClmError
from hf_clm.run.artifacts import read_json, write_atomic, write_json, write_text_atomic
from hf_clm.run.figures import eval_sets_table, figures_table, fmt, markdown_table, mixture_table
from hf_clm.run.files import PERPLEXITY_FILENAME, RECIPE_FILENAME, REPORT_JSON, REPORT_MD, TRAINER_STATE

COMPARISON_KIND = "perplexity comparison"  # report.json of `hf-clm perplexity --output`
COMPARISON_PLOT = "perplexity_by_model.png"
CURVES = (("step", "steps"), ("num_input_tokens_seen", "tokens seen"))


def describe(record: dict[str, Any]) -> str:
    """One line: 'fsdp (fsdp_version 2, reshard_after_forward True, ...), 2 processes on 1 machine, ...'."""
    settings = {k: v for k, v in record.items() if k in ("fsdp_version", "reshard_after_forward", "state_dict_type",
                                                          "zero_stage", "find_unused_parameters")}
    detail = f" ({', '.join(f'{k} {v}' for k, v in settings.items())})" if settings else ""
    processes, machines_ = record["processes"], record["machines"]
    return (f"{record['parallelism']}{detail}, {processes} process{'es' if processes != 1 else ''} on "
            f"{machines_} machine{'s' if machines_ != 1 else ''}, {record['device_type']} ({record['device_name']}), "
            f"mixed precision {record['mixed_precision']}, attention {record['attention']} "
            f"({record.get('attention_scope', 'block')} scope), "
            f"compile {'on' if record['torch_compile'] else 'off'}, optimizer {record['optimizer']}, "
            f"gradient checkpointing {'on' if record['gradient_checkpointing'] else 'off'}, "
            f"global batch {record['global_batch_blocks']:,} blocks = {record['global_batch_tokens']:,} tokens"
            + (f", time budget {record['max_train_seconds']:g} s" if record.get("max_train_seconds") else ""))


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
    final = final_evaluation(summary)
    # Throughput as the run measured it (hf_clm.training.throughput); Trainer's train_runtime includes evaluation.
    return {
        "name": run_dir.resolve().name, "path": str(run_dir),
        "train_seconds": None, "train_tokens_per_second": None, **summary,
        "evaluated_on": summary.get("evaluated_on") or recipe_validation_text(run_dir),
        "train_curve": [e for e in history if "loss" in e and "eval_loss" not in e],
        "eval_curve": with_final_evaluation([e for e in history if "eval_loss" in e], final),
        "set_curve": with_final_evaluation([e for e in history if is_set_entry(e)], final),
    }


def is_set_entry(entry: dict[str, Any]) -> bool:
    """A log entry of a named evaluation set (``eval_<name>_loss``), not the validation split's."""
    return any(k.startswith("eval_") and k.endswith(("_perplexity", "_loss")) and k not in ("eval_perplexity",
                                                                                            "eval_loss")
               for k in entry)


def final_evaluation(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The final evaluation as a log entry, from the record ``perplexity.json`` is written from: a run
    whose last step is no evaluation step evaluates after training, when Trainer's log is saved."""
    if not finite(summary.get("loss")) or summary.get("global_step") is None:
        return None
    entry = {"step": summary["global_step"], "eval_loss": summary["loss"], FINAL: True}
    if summary.get("train_tokens_seen") is not None:
        entry["num_input_tokens_seen"] = summary["train_tokens_seen"]
    for name, figures in (summary.get("eval_sets") or {}).items():
        if finite(figures.get("loss")):
            entry[f"eval_{name}_loss"] = figures["loss"]
    return entry


FINAL = "final_evaluation"  # marks the entry with_final_evaluation added


def with_final_evaluation(curve: list[dict[str, Any]], final: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The curve ending at the final evaluation: as logged when it was logged at the last step, else added."""
    if final is None or (curve and curve[-1].get("step") == final["step"]):
        return curve
    return [*curve, final]


def recipe_validation_text(run_dir: Path) -> str | None:
    """What a run validated on, from its recipe.yaml: for runs whose perplexity.json predates ``evaluated_on``."""
    import yaml

    from hf_clm.data.corpus import validation_text

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


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def curve_series(run: dict[str, Any], x_key: str) -> list[tuple[str, list[float], list[float]]]:
    """(name, x, loss in nats/token) of each of a run's curves: ``training``, ``validation`` (Trainer's
    ``eval_loss``), then each named evaluation set; a curve with no point is left out."""
    keys = [("training", "train_curve", "loss"), ("validation", "eval_curve", "eval_loss")]
    keys += [(name, "set_curve", f"eval_{name}_loss") for name in run.get("eval_sets") or {}]
    series = []
    for name, curve, key in keys:
        # a non-finite figure is logged as null: no point to draw
        points = [(entry[x_key], entry[key]) for entry in run.get(curve, [])
                  if x_key in entry and finite(entry.get(key))]
        if points:
            series.append((name, [x for x, _ in points], [y for _, y in points]))
    return series


def unigram_loss(run: dict[str, Any]) -> float | None:
    """The unigram baseline as a loss, ln(unigram perplexity), in the unit of the curves."""
    unigram = run.get("unigram_perplexity")
    return math.log(unigram) if finite(unigram) and unigram > 0 else None


CURVE_STYLES = {"training": {"linewidth": 1.2, "alpha": 0.85},
                "validation": {"linewidth": 2.0, "marker": "o", "markersize": 4}}
SET_STYLE = {"linewidth": 1.5, "linestyle": "--", "marker": "s", "markersize": 3}
SHORT_NAMES = {"training": "train", "validation": "val"}


def label_final_values(ax, finals: list[tuple[float, str, str]]) -> None:
    """Each curve's final value in the right margin, at its height, moved apart where they would overlap."""
    low, high = ax.get_ylim()
    gap, previous = (high - low) * 0.055, -math.inf
    for y, text, color in sorted(finals):
        previous = max(y, previous + gap)
        ax.annotate(text, xy=(1, y), xycoords=ax.get_yaxis_transform(), xytext=(1.015, previous),
                    textcoords=ax.get_yaxis_transform(), color=color, va="center", fontsize=8.5,
                    annotation_clip=False, arrowprops={"arrowstyle": "-", "color": color, "alpha": 0.4, "lw": 0.8})


def evaluations_before_the_end(run: dict[str, Any]) -> int:
    """Validation evaluations logged after a step and before the last (not the base model's at step 0)."""
    last = run.get("global_step")
    return sum(1 for e in run.get("eval_curve", []) if e.get("step") and (last is None or e["step"] < last))


def plot_notes(run: dict[str, Any]) -> list[str]:
    """What the curves hold, in words, from the run as it ran (its record: eval_strategy, eval_steps,
    logging_steps): how often it was evaluated and where its last point comes from."""
    record, step = run.get("run") or {}, run.get("global_step")
    notes = []
    if not run.get("train_curve") and record.get("logging_steps") is not None and step is not None:
        notes.append(f"no training loss logged: the run's {step:,} steps are fewer than logging_steps "
                     f"{record['logging_steps']:g}")
    if not run.get("eval_curve"):
        return notes + ["no evaluation logged; see perplexity.json"]
    strategy, every, before = record.get("eval_strategy"), record.get("eval_steps"), evaluations_before_the_end(run)
    if step is None or strategy is None:
        return notes
    end = f"step {step:,}" + (", after the time budget ended training" if run["eval_curve"][-1].get(FINAL)
                               and record.get("max_train_seconds") else "")
    if strategy == "no":
        notes.append(f"validation: at the end only ({end}; eval_strategy: no)")
    elif strategy == "steps" and before == 0 and every is not None and every > step:
        notes.append(f"validation: at the end only ({end}; eval_steps {every:g} is past the run's {step:,} steps)")
    elif strategy == "steps" and every is not None:
        interval = f"{every:g} steps" if every >= 1 else f"{every:.0%} of the steps"
        notes.append(f"validation: every {interval} and at the end ({end})")
    elif strategy == "epoch":
        notes.append(f"validation: each epoch and at the end ({end})")
    return notes


def say_empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set(xticks=[], yticks=[])


def curves_figure(runs: list[dict[str, Any]], x_key: str, x_label: str):
    """Training and validation loss (nats/token) against ``x_key`` on one axis, each run's unigram
    baseline a dotted line, each curve's final value labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, ax = plt.subplots(figsize=(10, 5))
    ax.set(title="Loss on training and validation text (perplexity = e^loss)", xlabel=x_label,
           ylabel="loss (nats/token)")
    curves = [curve_series(run, x_key) for run in runs]
    if not any(curves):
        say_empty(ax, "no training loss or evaluation logged\n(fewer steps than logging_steps, eval_strategy: no); "
                      "see perplexity.json")
        return figure
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    several, finals = len(runs) > 1, []
    for index, (run, series) in enumerate(zip(runs, curves)):
        prefix = f"{run['name']} · " if several else ""
        for number, (name, xs, ys) in enumerate(series):
            color = colors[(index if several else number) % len(colors)]
            ax.plot(xs, ys, color=color, label=prefix + name, **CURVE_STYLES.get(name, SET_STYLE))
            finals.append((ys[-1], f"{SHORT_NAMES.get(name, name)} {ys[-1]:.3f}", color))
            if name == "validation" and run.get("base") and run["eval_curve"][0].get("step") == 0:
                ax.annotate("base model", (xs[0], ys[0]), textcoords="offset points", xytext=(8, 2), color=color)
        if (baseline := unigram_loss(run)) is not None:
            color = colors[index % len(colors)] if several else "0.35"
            ax.axhline(baseline, color=color, linestyle=":", linewidth=1.3, label=prefix + "unigram baseline")
            finals.append((baseline, f"unigram {baseline:.3f}", color))
    if notes := [(f"{run['name']}: " if several else "") + note for run in runs for note in plot_notes(run)]:
        ax.text(0.01, 0.02, "\n".join(notes), transform=ax.transAxes, color="0.4", fontsize=8.5)
    label_final_values(ax, finals)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8.5)
    figure.tight_layout()
    return figure


def plot_curves(runs: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The curves against steps and against tokens seen; one PNG each."""
    import matplotlib.pyplot as plt

    paths = []
    for x_key, x_label in CURVES:
        figure = curves_figure(runs, x_key, x_label)
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
    lines += eval_sets_table(summaries) + mixture_table(summaries) + [""]
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
