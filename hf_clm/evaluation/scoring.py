"""Evaluation: one scoring engine for every figure the package reports.

The core, :func:`score_rows`, takes rows of input ids and *aligned* targets (``targets[t]`` is the
token the model should predict after reading ``inputs[: t + 1]``; -100 is not a target) and
returns, per row, the summed negative log-likelihood (nats), the number of targets, and the NLL,
UTF-8 bytes and characters of the targets that stand for text. It runs the model's body once and
its LM head a slice of positions at a time, so no ``[batch x length x vocab]`` float32 copy of the
logits ever exists. The Trainer's evaluation hook, ``hf-clm perplexity``, ``explain``, reports and
the bench all score through it, and aggregate through :class:`Scores`: one perplexity, one bits
per byte (NLL in bits of the targets that are text / the UTF-8 bytes they stand for).

Two conventions turn documents into rows:

* ``strided`` — documents + EOS as one stream, windows of ``window`` tokens moved by ``stride``
  (the Hugging Face guide "Perplexity of fixed-length models", counting targets exactly): a window
  predicts ``window - 1`` tokens; with ``stride < window`` each token is scored once, with up to
  ``window - stride`` extra tokens of context. The stream's first token is never a target.
* ``rolling`` — lm-evaluation-harness's ``loglikelihood_rolling``: each document on its own,
  prefixed by BOS (EOS when there is none), every token scored exactly once in non-overlapping
  prediction windows of ``window`` tokens, each refilled with left context. Every byte of the
  text is scored, so its bits per byte are those of the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_clm.data.attention import attention_scope, document_position_ids
from hf_clm.data.collator import IGNORE_INDEX
from hf_clm.data.tokenizer import document_prefix
from hf_clm.errors import HfClmError
from hf_clm.evaluation.processes import ONE_PROCESS, Processes
from hf_clm.evaluation.token_text import TokenText, token_text
from hf_clm.evaluation.windows import Window, batched, rolling_windows, strided_windows

# Logit elements computed at once (32M = 128 MB in float32): GPT-2's 50,257-token vocabulary at
# batch 8 x 1,024 positions would otherwise need 1.6 GB, twice over inside cross-entropy. Smaller
# slices cost evaluation speed (8M: 0.85x a plain forward loop's tokens/s) for memory it does not need.
LOGITS_PER_SLICE = 1 << 25
# Config attributes of models whose forward pass transforms the head's output (soft-capping,
# scaling): for those the logits come from the model's own forward pass.
HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "dim_model_base")
# Per-row columns of score_rows.
NLL, TARGETS, TEXT_NLL, BYTES, CHARS = range(5)


def perplexity_from_loss(loss: float) -> float:
    """exp(loss), with overflow reported as infinity instead of an exception."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@dataclass
class Scores:
    """Sums over scored targets: NLL (nats) and count of all targets; NLL, UTF-8 bytes and
    characters of the targets that stand for text (special tokens such as EOS stand for none)."""

    nll: float = 0.0
    tokens: int = 0
    text_nll: float = 0.0
    bytes: int = 0
    chars: int = 0

    def __iadd__(self, other: Scores) -> Scores:
        for name in ("nll", "tokens", "text_nll", "bytes", "chars"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    @classmethod
    def from_rows(cls, rows: torch.Tensor | np.ndarray) -> Scores:
        sums = np.asarray(rows.detach().cpu().double() if isinstance(rows, torch.Tensor) else rows,
                          dtype=np.float64).reshape(-1, 5).sum(0)
        return cls(float(sums[NLL]), round(sums[TARGETS]), float(sums[TEXT_NLL]), round(sums[BYTES]),
                   round(sums[CHARS]))

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return perplexity_from_loss(self.loss)

    @property
    def bits_per_byte(self) -> float | None:
        return self.text_nll / math.log(2) / self.bytes if self.bytes else None

    @property
    def bits_per_char(self) -> float | None:
        return self.text_nll / math.log(2) / self.chars if self.chars else None

    def figures(self) -> dict[str, float | int | None]:
        return {"perplexity": self.perplexity, "loss": self.loss, "tokens": self.tokens,
                "bits_per_byte": self.bits_per_byte, "bits_per_char": self.bits_per_char,
                "bytes": self.bytes, "chars": self.chars}


# --- what each token stands for ---------------------------------------------------------------



# --- the scoring core -------------------------------------------------------------------------

def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Labels in the model's own convention (``labels == input_ids``) -> aligned targets."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def language_model(model) -> PreTrainedModel:
    """The transformers model inside a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def splits_head(lm) -> bool:
    """Whether the head can run apart from the body: a plain transformers model whose forward
    passes the body's last hidden state straight through its output embeddings."""
    if not isinstance(lm, PreTrainedModel) or lm.get_output_embeddings() is None:
        return False
    if type(lm).__name__.startswith("FSDP"):  # sharded: only the root forward gathers the parameters
        return False
    return not any(getattr(lm.config, name, None) for name in HEAD_TRANSFORMS)


def final_states(model, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.nn.Module | None]:
    """(last hidden states, LM head) when the head can run apart, else (logits, None)."""
    lm = language_model(model)
    kwargs = {"input_ids": input_ids, "use_cache": False}
    if position_ids is None and attention_scope(lm) == "document":  # the scope the model was trained with
        position_ids = document_position_ids(input_ids, lm.config.eos_token_id)
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    if splits_head(lm):
        return lm.base_model(**kwargs).last_hidden_state, lm.get_output_embeddings()
    return model(**kwargs).logits, None


def next_token_log_probs(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Float32 log-probabilities over the vocabulary at every position of one short row
    (``[length, vocab]``), for showing a text position by position."""
    hidden, head = final_states(model, input_ids[None])
    logits = hidden[0] if head is None else head(hidden[0])
    return torch.log_softmax(logits.float(), dim=-1)


def position_slices(batch: int, length: int, vocab: int) -> Iterator[slice]:
    step = max(1, LOGITS_PER_SLICE // max(1, batch * vocab))
    for start in range(0, length, step):
        yield slice(start, min(start + step, length))


def score_rows(model, input_ids: torch.Tensor, targets: torch.Tensor, text: TokenText | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per row ``[NLL, targets, text NLL, bytes, chars]`` (float32, shape ``[batch, 5]``).

    Callers choose gradients: wrap the call in ``torch.inference_mode()`` (or ``no_grad``)."""
    hidden, head = final_states(model, input_ids, position_ids)
    return rows_from_states(hidden, head, targets, text)


def rows_from_states(hidden: torch.Tensor, head: torch.nn.Module | None, targets: torch.Tensor,
                     text: TokenText | None = None) -> torch.Tensor:
    """:func:`score_rows` of final states and their LM head, or of logits when ``head`` is None."""
    batch, length = targets.shape
    vocab = hidden.size(-1) if head is None else head.weight.shape[0]
    nll = torch.empty(batch, length, dtype=torch.float32, device=hidden.device)
    for part in position_slices(batch, length, vocab):
        logits = (head(hidden[:, part]) if head is not None else hidden[:, part]).float()
        nll[:, part] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets[:, part].reshape(-1),
                                       ignore_index=IGNORE_INDEX, reduction="none").view(batch, -1)
        del logits
    scored = targets != IGNORE_INDEX
    ids = targets.clamp(min=0)
    if text is not None:
        n_bytes = text.bytes.to(ids.device)[ids] * scored
        n_chars = text.chars.to(ids.device)[ids] * scored
    else:
        n_bytes = n_chars = torch.zeros_like(ids)
    is_text = n_bytes > 0
    return torch.stack([nll.sum(1), scored.sum(1).float(), (nll * is_text).sum(1), n_bytes.sum(1).float(),
                        n_chars.sum(1).float()], dim=1)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# --- rows from blocks, streams and documents --------------------------------------------------

@torch.inference_mode()
def blocks_scores(model, blocks: Dataset, text: TokenText | None = None, batch_size: int = 8,
                  progress: bool = True) -> Scores:
    """Scores of full training-style blocks (every position after the first is a target)."""
    model.eval()
    device, result = model_device(model), Scores()
    batches = blocks.with_format("torch").iter(batch_size=batch_size)
    for batch in tqdm(batches, total=math.ceil(len(blocks) / batch_size), desc="Evaluating", disable=not progress):
        ids = batch["input_ids"].long().to(device)
        result += Scores.from_rows(score_rows(model, ids, shifted_targets(ids), text))
    return result




def window_rows(sequences: Sequence[torch.Tensor], windows: list[Window], pad_id: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs and aligned targets of a batch of windows (causal attention: padding
    after a row's tokens never changes them)."""
    width = max(w.end - w.begin for w in windows)
    inputs = torch.full((len(windows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
    for row, w in enumerate(windows):
        sequence = sequences[w.sequence]
        inputs[row, : w.end - w.begin] = sequence[w.begin:w.end]
        targets[row, w.first - w.begin: w.end - w.begin] = sequence[w.first + 1: w.end + 1]
    return inputs, targets


def windows_scores(model, sequences: Sequence[torch.Tensor], windows: list[Window], text: TokenText | None,
                   batch_size: int, pad_id: int, progress: bool = True, processes: Processes = ONE_PROCESS
                   ) -> dict[int, Scores]:
    """Scores per sequence of all its windows; with several ``processes``, each scores its share of
    the batches and all get every batch's rows (:mod:`hf_clm.evaluation.processes`)."""
    model.eval()
    device = model_device(model)
    batches = list(batched(windows, batch_size))
    rows = {}
    for index in tqdm(processes.share(range(len(batches))), desc="Evaluating", disable=not progress):
        inputs, targets = window_rows(sequences, batches[index], pad_id)
        with torch.inference_mode():
            rows[index] = score_rows(model, inputs.to(device), targets.to(device), text).cpu()
    rows = processes.gathered(rows)
    result = {index: Scores() for index in range(len(sequences))}
    for index, batch in enumerate(batches):  # one process's order, whoever scored the batch
        for w, row in zip(batch, rows[index]):
            result[w.sequence] += Scores.from_rows(row)
    return result


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """What a document is scored after in the rolling convention: BOS, else EOS (as lm-evaluation-harness)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def document_ids(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.backend_tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)]


@dataclass
class Evaluation:
    """The result of scoring a text with a model under one convention."""

    convention: str
    window: int
    stride: int | None
    scores: Scores
    documents: int
    words: int | None = None
    document_loglikelihoods: list[float] = field(default_factory=list)

    def figures(self) -> dict:
        figures = {"convention": self.convention, "window": self.window, "stride": self.stride,
                   **self.scores.figures(), "documents": self.documents}
        if self.words:
            total_nll, text = self.scores.text_nll, bool(self.scores.bytes)  # no text: only special tokens scored
            figures.update(words=self.words,
                           word_perplexity=perplexity_from_loss(total_nll / self.words) if text else None,
                           byte_perplexity=perplexity_from_loss(total_nll / self.scores.bytes) if text else None)
        return figures


def stream_scores(model, stream: torch.Tensor, window: int, stride: int, batch_size: int = 8,
                  text: TokenText | None = None, pad_id: int = 0, progress: bool = False,
                  processes: Processes = ONE_PROCESS) -> Scores:
    """Scores of a 1-D token stream in strided windows."""
    windows = list(strided_windows(len(stream), window, stride))
    return windows_scores(model, [stream], windows, text, batch_size, pad_id, progress, processes)[0]


def evaluate_strided(model, tokenizer: PreTrainedTokenizerBase, texts: list[str], window: int, stride: int,
                     batch_size: int = 8, progress: bool = True, processes: Processes = ONE_PROCESS) -> Evaluation:
    """Documents + EOS as one stream (a Llama-style BOS before each, as in training blocks), scored
    in strided windows."""
    prefix = document_prefix(tokenizer)
    ids = [token for doc in document_ids(tokenizer, texts) if doc
           for token in (*prefix, *doc, tokenizer.eos_token_id)]
    scores = stream_scores(model, torch.tensor(ids, dtype=torch.long), window, stride, batch_size,
                           token_text(tokenizer), tokenizer.eos_token_id, progress, processes)
    return Evaluation("strided", window, stride, scores, sum(1 for t in texts if t))


def evaluate_rolling(model, tokenizer: PreTrainedTokenizerBase, texts: list[str], window: int,
                     batch_size: int = 8, progress: bool = True, processes: Processes = ONE_PROCESS) -> Evaluation:
    """Each document scored whole after the prefix token, every token once (lm-evaluation-harness)."""
    texts = [t for t in texts if t]
    prefix = prefix_token_id(tokenizer)
    sequences = [torch.tensor([prefix, *doc], dtype=torch.long) for doc in document_ids(tokenizer, texts)]
    windows = [w for index, seq in enumerate(sequences) for w in rolling_windows(index, len(seq) - 1, window)]
    per_document = windows_scores(model, sequences, windows, token_text(tokenizer), batch_size, prefix, progress,
                                  processes)
    total = Scores()
    for scores in per_document.values():
        total += scores
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    return Evaluation("rolling", window, None, total, len(texts), words,
                      [-per_document[i].nll for i in range(len(sequences))])


def checked_window(convention: str, window: int | None, stride: int | None, context: int | None
                   ) -> tuple[int, int | None]:
    """(window, stride) of a scoring run: the window defaults to the model's context, the stride
    to the window (strided); rolling windows take no stride. HfClmError naming the bad value."""
    window = context if window is None else window
    if window is None:
        raise HfClmError("the model does not state its context length; pass --window")
    if window < 2 or (context is not None and window > context):
        raise HfClmError(f"--window {window} must be between 2 and the model's context of {context} tokens")
    if convention == "rolling":
        if stride is not None:
            raise HfClmError("--stride applies to --convention strided; rolling windows never overlap")
        return window, None
    stride = window if stride is None else stride
    if not 0 < stride <= window:
        raise HfClmError(f"--stride {stride} must be between 1 and the window of {window} tokens")
    return window, stride


def evaluate_texts(model, tokenizer: PreTrainedTokenizerBase, texts: list[str], convention: str, window: int,
                   stride: int | None = None, batch_size: int = 8, progress: bool = True,
                   processes: Processes = ONE_PROCESS) -> Evaluation:
    """``texts`` scored under ``convention``; by several ``processes`` together when given (each
    window once, the figures those of one process)."""
    if convention == "rolling":
        return evaluate_rolling(model, tokenizer, texts, window, batch_size, progress, processes)
    return evaluate_strided(model, tokenizer, texts, window, stride or window, batch_size, progress, processes)


# --- the Trainer's evaluation hook ------------------------------------------------------------

def trainer_scores(model, inputs: dict[str, torch.Tensor], text: TokenText | None) -> torch.Tensor:
    """``[batch, 5]`` scores of a collated evaluation batch (labels as the collator made them)."""
    return score_rows(model, inputs["input_ids"], shifted_targets(inputs["labels"]), text,
                      inputs.get("position_ids"))


def unigram_scores(train_blocks: Dataset, eval_blocks: Dataset, vocab_size: int) -> Scores:
    """The baseline any LM must beat: add-one-smoothed token frequencies of the training blocks,
    scored on the same targets as the model (every block position after the first)."""
    counts = np.ones(vocab_size, dtype=np.float64)
    for batch in train_blocks.with_format("numpy").iter(batch_size=4096):
        counts += np.bincount(batch["input_ids"].ravel(), minlength=vocab_size)[:vocab_size]
    log_probs = np.log(counts / counts.sum())
    result = Scores()
    for batch in eval_blocks.with_format("numpy").iter(batch_size=4096):
        targets = batch["input_ids"][:, 1:].ravel()
        result += Scores(float(-log_probs[targets].sum()), int(targets.size))
    return result


