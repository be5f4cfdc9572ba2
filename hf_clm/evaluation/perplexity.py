"""A model's perplexity row on a list of texts: the one row ``hf-clm perplexity`` prints and the
``evaluate`` metric returns, scored by :mod:`hf_clm.evaluation.scoring`."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_clm.errors import HfClmError
from hf_clm.evaluation.processes import ONE_PROCESS, Processes
from hf_clm.evaluation.scoring import Evaluation, checked_window, document_ids, evaluate_texts
from hf_clm.model.build import context_length, device_description


def perplexity_row(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], convention: str,
                   window: int | None, stride: int | None, batch_size: int, progress: bool = True,
                   processes: Processes = ONE_PROCESS) -> dict:
    """The figures of ``texts`` under ``convention`` (window and stride checked against the model's
    context), with the device and dtype they were scored on (rank 0's, with several ``processes``)."""
    window, stride = checked_window(convention, window, stride, context_length(model.config))
    evaluation = evaluate_texts(model, tokenizer, texts, convention, window, stride, batch_size, progress=progress,
                                processes=processes)
    return {**scored_figures(evaluation, tokenizer, texts), "device": device_description(model.device),
            "dtype": str(model.dtype).removeprefix("torch.")}


def scored_figures(evaluation: Evaluation, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict:
    """The evaluation's figures; an error when not one token was scored."""
    if evaluation.scores.tokens == 0:
        tokens = sum(len(ids) for ids in document_ids(tokenizer, texts))
        raise HfClmError(f"the text is too short to score: {tokens} tokens; a model scores a token after at least "
                         f"one token of context, so give a longer text")
    return evaluation.figures()
