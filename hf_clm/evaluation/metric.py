"""hf_clm's corpus perplexity as a Hugging Face ``evaluate`` metric, and as Trainer's ``compute_metrics``.

Why a metric module: ``evaluate`` is how the Hugging Face stack passes metrics around
(``evaluate.load``, ``combine``, evaluators, Trainer scripts). The Hub's own ``perplexity`` metric
reports ``mean_perplexity``, a mean of per-text perplexities, scores each text alone and keeps
every text's full logits. This module puts the package's scoring engine (``hf_clm.evaluation.scoring``)
behind the same interface instead, so a user of ``evaluate`` gets exactly the figures of
``hf-clm perplexity``: token-weighted perplexity, bits per byte and per character, in the strided
or rolling convention, the LM head sliced over positions.

Nothing is computed here: the figures are ``Evaluation.figures()`` / ``Scores.figures()``.

* ``evaluate.load(METRIC_PATH).compute(model_id=..., predictions=texts, ...)`` loads the model as
  the command does (``load_for_inference``) and scores ``predictions`` as its documents.
  ``evaluate.load`` copies this file into its modules cache and imports the copy; the copy imports
  ``hf_clm`` absolutely, so it runs the installed package's code, offline.
* ``compute_metrics`` turns score rows ``[NLL, targets, text NLL, bytes, chars]`` into figures.
  ``CausalLMTrainer`` gets those rows from its ``prediction_step``; a plain ``transformers.Trainer``
  gets them from ``score_rows_preprocessor(tokenizer)``, its ``preprocess_logits_for_metrics``,
  which reduces each batch's logits to five numbers per row, so full logits are never accumulated.
  Both are plain functions rather than ``EvaluationModule.compute`` calls: Trainer already gathers
  predictions across processes, and the rows are sums, so no cache files are needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import datasets
import evaluate
import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedTokenizerBase

from hf_clm.errors import HfClmError
from hf_clm.evaluation.perplexity import perplexity_row
from hf_clm.evaluation.scoring import Scores, rows_from_states, shifted_targets
from hf_clm.evaluation.token_text import token_text
from hf_clm.model.build import load_for_inference

METRIC_PATH = str(Path(__file__).resolve())
CONVENTIONS = ("strided", "rolling")

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the documents to score (empty ones are skipped).
    model_id (str): a run directory, a LoRA adapter directory, or anything from_pretrained loads.
    convention (str): "strided" (default; documents + EOS as one stream, the Hugging Face guide) or
        "rolling" (each document alone, every token scored once, lm-evaluation-harness).
    window (int): tokens per window (default: the model's context length).
    stride (int): strided only, tokens between window starts (default: window).
    batch_size (int): windows per forward pass (default 8).
    device (str): cpu, cuda, cuda:N or mps (default: the accelerator when there is one).
    dtype (str): auto (the checkpoint's own), bfloat16, float16 or float32.
Returns:
    The figures of `hf-clm perplexity --json`, less "model": perplexity, loss, tokens,
    bits_per_byte, bits_per_char, bytes, chars, documents, convention, window, stride, device,
    dtype (rolling adds words, word_perplexity, byte_perplexity).
"""


class CorpusPerplexity(evaluate.Metric):
    """Token-weighted corpus perplexity and bits per byte of a causal LM over ``predictions``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"])

    def compute(self, *, predictions=None, **kwargs) -> dict:
        """As ``evaluate``'s, but texts checked first: ``evaluate`` casts 3 to "3" and has no rows for []."""
        texts = list(predictions) if isinstance(predictions, (list, tuple)) else predictions
        if not isinstance(texts, list) or not texts or any(not isinstance(text, str) for text in texts):
            bad = texts if not isinstance(texts, list) else next((t for t in texts if not isinstance(t, str)), None)
            raise HfClmError("predictions must be a non-empty list of texts (str)" +
                             (f", not {type(bad).__name__} ({bad!r})" if bad is not None else ", not []"))
        return super().compute(predictions=texts, **kwargs)

    def _compute(self, predictions: list[str], model_id: str, convention: str = "strided", window: int | None = None,
                 stride: int | None = None, batch_size: int = 8, device: str | None = None,
                 dtype: str = "auto") -> dict:
        return texts_figures(list(predictions), model_id, convention, window, stride, batch_size, device, dtype)


def texts_figures(texts: list[str], model_id: str, convention: str = "strided", window: int | None = None,
                  stride: int | None = None, batch_size: int = 8, device: str | None = None,
                  dtype: str = "auto") -> dict:
    """``hf-clm perplexity``'s row for ``texts``, without its ``model`` key; checked as the command checks."""
    if convention not in CONVENTIONS:
        raise HfClmError(f"convention must be one of {', '.join(CONVENTIONS)}, not {convention!r}")
    for name, value in (("window", window), ("stride", stride), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise HfClmError(f"{name} must be an integer, not {value!r}")
    if not_text := [text for text in texts if not isinstance(text, str)]:
        raise HfClmError(f"predictions must be texts (str), not {type(not_text[0]).__name__} ({not_text[0]!r})")
    if not any(text.strip() for text in texts):
        raise HfClmError(f"predictions hold no text to score ({len(texts)} document(s), all empty); give at least "
                         f"one non-empty text")
    if batch_size < 1:
        raise HfClmError(f"batch_size must be at least 1, not {batch_size}")
    model, tokenizer = load_for_inference(model_id, device, dtype)
    return perplexity_row(model, tokenizer, texts, convention, window, stride, batch_size, progress=False)


def rows_figures(rows: torch.Tensor | np.ndarray) -> dict:
    """Figures (``Scores.figures()``) of score rows ``[NLL, targets, text NLL, bytes, chars]``."""
    return Scores.from_rows(rows).figures()


def compute_metrics(prediction: EvalPrediction) -> dict:
    """Trainer's ``compute_metrics`` over score rows. Its ``loss`` key becomes ``eval_loss``: the
    token-weighted loss then replaces Trainer's mean of batch losses."""
    return rows_figures(np.asarray(prediction.predictions))


def score_rows_preprocessor(tokenizer: PreTrainedTokenizerBase | None = None
                            ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``preprocess_logits_for_metrics`` for ``transformers.Trainer``: ``(logits, labels)`` of a
    batch -> its ``[batch, 5]`` score rows (labels as the model takes them, ``labels == input_ids``).
    Without a tokenizer the rows hold no bytes, and bits per byte are None."""
    text = token_text(tokenizer) if tokenizer is not None else None

    def preprocess_logits_for_metrics(logits, labels: torch.Tensor) -> torch.Tensor:
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        with torch.no_grad():
            return rows_from_states(logits, None, shifted_targets(labels), text)

    return preprocess_logits_for_metrics
