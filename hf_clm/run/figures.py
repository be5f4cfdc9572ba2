"""Figures: a run's numbers, each under one name, rendered once for the console summary, ``report.md``
and the model card.

The names are those of ``perplexity.json`` and of :meth:`hf_clm.evaluation.scoring.Scores.figures`
(``perplexity``, ``loss``, ``tokens``, ``bits_per_byte``, ...); Trainer's logs carry the same names
behind its ``eval_`` / ``eval_<set>_`` prefixes. A fine-tuning run shows each evaluation figure as
``base → fine-tuned``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# The figures of one evaluation, as perplexity.json and Trainer's logs (after their prefix) name them.
EVALUATION_FIGURES = ("perplexity", "loss", "bits_per_byte", "bits_per_char", "tokens")
# (label, key in perplexity.json, format) of the evaluation figures every rendering shows.
EVALUATION_ROWS = (("perplexity", "perplexity", ".2f"), ("eval loss (nats/token)", "loss", ".4f"),
                   ("bits per byte", "bits_per_byte", ".4f"), ("evaluated tokens", "tokens", ","))


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def byte_size(value: int) -> str:
    """Bytes in the largest binary unit that leaves at least 1 of it."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value} bytes"


def logged_figures(entry: dict[str, Any], prefix: str = "eval_") -> dict[str, Any]:
    """One evaluation's figures from a Trainer log entry (``eval_loss`` -> ``loss``)."""
    figures = {name: entry.get(prefix + name) for name in EVALUATION_FIGURES}
    if figures["perplexity"] is None and figures["loss"] is not None:
        figures["perplexity"] = math.exp(min(figures["loss"], 709.0)) if math.isfinite(figures["loss"]) else None
    return figures


def before_after(summary: dict[str, Any], key: str, spec: str) -> str:
    """``29.41 → 21.70`` for a fine-tuning run (base model, then the trained one); else the value."""
    base = (summary.get("base") or {}).get(key)
    return fmt(summary.get(key), spec) if base is None else f"{fmt(base, spec)} → {fmt(summary.get(key), spec)}"


def baseline_comparison(perplexity: float, unigram: float) -> str:
    if perplexity <= unigram:
        return f"model is {unigram / perplexity:.1f}x lower"
    return (f"model is {perplexity / unigram:.1f}x HIGHER: worse than counting tokens; train longer or raise "
            f"learning_rate")


def scoring_text(summary: dict[str, Any]) -> str | None:
    """How the text was cut into windows: a ``hf-clm perplexity`` row's own convention, window and
    stride, or a run's validation blocks (strided, window = stride = block_size)."""
    if summary.get("convention"):
        stride = f", stride {summary['stride']:,}" if summary.get("stride") else ""
        return f"{summary['convention']}, window {summary['window']:,}{stride}"
    if summary.get("block_size"):
        return f"strided, window {summary['block_size']:,}, stride {summary['block_size']:,} (validation blocks)"
    return None


def figure_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of each of the run's figures, in the order every rendering shows them."""
    rows = [(label, before_after(summary, key, spec)) for label, key, spec in EVALUATION_ROWS]
    rows += [(label, value) for label, value in (("evaluated on", summary.get("evaluated_on")),
                                                 ("scoring", scoring_text(summary))) if value]
    unigram = summary.get("unigram_perplexity")
    if unigram is not None and summary.get("perplexity") is not None:
        rows.append(("unigram baseline", f"{unigram:.2f} ({baseline_comparison(summary['perplexity'], unigram)})"))
    if summary.get("parameters") is not None:
        trainable = summary.get("trainable_parameters", summary["parameters"])
        rows.append(("parameters", f"{summary['parameters']:,}"
                     + (f" ({trainable:,} trainable)" if trainable != summary["parameters"] else "")))
    if summary.get("train_tokens_seen") is not None:
        rows.append(("train tokens seen", f"{summary['train_tokens_seen']:,}"))
    if summary.get("train_seconds") is not None:
        budget = f" of a {summary['max_train_seconds']:g} s budget" if summary.get("max_train_seconds") else ""
        rows.append(("training time", f"{summary['train_seconds']:.1f} s{budget} (evaluation and saving excluded)"))
    if summary.get("train_tokens_per_second") is not None:
        mfu = f", MFU {summary['mfu']:.1%}" if summary.get("mfu") is not None else ""
        rows.append(("throughput", f"{summary['train_tokens_per_second']:,.0f} tokens/s{mfu}"))
    if summary.get("budget"):
        rows.append(("budget held", budget_text(summary["budget"], summary.get("train_tokens_seen"))))
    return rows


def budget_text(budget: dict[str, Any], tokens: int | None) -> str:
    """'this run trained 123 steps (251,904 tokens) at 839 tokens/s', and, when that is under half of what
    the recipe was tuned for, the tuned figures and what to expect."""
    rate = budget.get("tokens_per_second")
    text = (f"this run trained {budget['steps']:,} steps" + (f" ({tokens:,} tokens)" if tokens is not None else "")
            + (f" at {rate:,.0f} tokens/s" if rate else ""))
    if budget.get("far_short"):
        text += (f"; the recipe was tuned for ~{budget['tuned_for_steps']:,} steps at "
                 f"{budget['tuned_for_tokens_per_second']:,.0f} tokens/s: expect a worse perplexity than the recipe's")
    return text


def console_summary(summary: dict[str, Any], output_dir: Path) -> str:
    """The lines ``hf-clm train`` prints at the end."""
    rows = figure_rows(summary)
    rows[0] = ("validation perplexity", rows[0][1])
    rows += [(f"{name} perplexity", before_after(figures, "perplexity", ".2f"))
             for name, figures in (summary.get("eval_sets") or {}).items()]
    return "\n".join(f"{label:<23}{value}" for label, value in [*rows, ("saved to", str(output_dir))])


def markdown_table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> list[str]:
    align = ["---"] * numeric_from + ["---:"] * (len(header) - numeric_from)
    return [f"| {' | '.join(header)} |", f"|{'|'.join(align)}|", *(f"| {' | '.join(row)} |" for row in rows)]


def figures_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """One row per run (named by the keys), one column per figure."""
    rows = {name: dict(figure_rows(summary)) for name, summary in summaries.items()}
    labels = list(dict.fromkeys(label for row in rows.values() for label in row))
    return markdown_table(["run", *labels], [[name, *(row.get(label, "–") for label in labels)]
                                             for name, row in rows.items()])


def eval_sets_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The named evaluation sets of each run (final weights), one row per set."""
    rows = [[name, set_name, fmt(f.get("perplexity"), ".2f"), fmt(f.get("bits_per_byte"), ".4f"),
             fmt(f.get("tokens"), ",")]
            for name, summary in summaries.items() for set_name, f in (summary.get("eval_sets") or {}).items()]
    if not rows:
        return []
    return ["", "Named evaluation sets (final weights):", "",
            *markdown_table(["run", "set", "perplexity", "bits per byte", "tokens"], rows, numeric_from=2)]


def mixture_table(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Each mixture source of each run: its share, its own token counts, what training read of it,
    and its held-out perplexity (final weights)."""
    rows = [[name, row["name"], f"{row['weight']:.4g}", fmt(row["train"]["tokens"], ","),
             fmt(row.get("trained_tokens"), ","), fmt(row.get("passes"), ".2f"),
             fmt(row["validation"]["tokens"], ","),
             fmt((summary.get("eval_sets") or {}).get(row["name"], {}).get("perplexity"), ".2f")]
            for name, summary in summaries.items() for row in summary.get("mixture") or []]
    if not rows:
        return []
    return ["", "Mixture sources (weight: share of the training blocks; trained: tokens of the blocks training "
                "read from the source; passes: trained / its blocks):", "",
            *markdown_table(["run", "source", "weight", "tokens", "trained tokens", "passes", "held-out tokens",
                             "held-out perplexity"], rows, numeric_from=2)]
