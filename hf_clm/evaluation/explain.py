"""Explain: what a causal LM does with one text, position by position.

For "The cat sat on the mat": the model sees "The" and is scored on "cat", sees "The cat" and is
scored on "sat", and so on: every position's context, its target (the next token), the
probability and rank the model gives that target, its top-k guesses and the position's loss.
The mean of those losses is exactly the loss the model reports for the whole sequence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hf_clm.data.tokenizer import encode_document
from hf_clm.errors import HfClmError
from hf_clm.evaluation.scoring import Scores, model_device, next_token_log_probs, score_rows, shifted_targets
from hf_clm.model.build import context_length


@dataclass
class Position:
    position: int
    context: str
    target: str
    target_id: int
    probability: float
    rank: int
    top: list[tuple[str, float]]
    loss: float


@dataclass
class Explanation:
    tokens: list[str]
    positions: list[Position]
    scores: Scores  # the evaluation engine's figures for the same text

    @property
    def mean_loss(self) -> float:
        return self.scores.loss

    @property
    def perplexity(self) -> float:
        return self.scores.perplexity

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "positions": [asdict(p) for p in self.positions],
                "mean_loss": self.mean_loss, "perplexity": self.perplexity}


@torch.inference_mode()
def explain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text: str, top_k: int = 5) -> Explanation:
    """Per-position targets, probabilities, ranks, top-k predictions and losses for ``text``."""
    ids = encode_document(tokenizer, text)  # as documents were in training: a Llama-style BOS first
    if len(ids) < 2:
        raise HfClmError(f"the text is {len(ids)} token(s) long; at least 2 are needed (one context, one target)")
    context = context_length(model.config)
    if context is not None and len(ids) > context:
        raise HfClmError(f"the text is {len(ids)} tokens long, more than the model's context of {context}")
    model.eval()
    row = torch.tensor([ids], device=model_device(model))
    scores = Scores.from_rows(score_rows(model, row, shifted_targets(row)))
    log_probs = next_token_log_probs(model, row[0])[:-1]
    pieces = [tokenizer.decode([i]) for i in ids]
    positions = []
    for t, target in enumerate(ids[1:]):
        row = log_probs[t]
        top = torch.topk(row, min(top_k, row.numel()))
        positions.append(Position(
            position=t, context=tokenizer.decode(ids[: t + 1]), target=pieces[t + 1], target_id=target,
            probability=math.exp(row[target].item()), rank=int((row > row[target]).sum()) + 1,
            top=[(tokenizer.decode([i]), math.exp(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())],
            loss=-row[target].item(),
        ))
    return Explanation(pieces, positions, scores)


def shown(piece: str, width: int | None = None) -> str:
    """Text as printable: whitespace made visible (once: no repr on top), a long context cut from the
    left when ``width`` is given; tokens are never cut (``<|endoftext|>`` stays whole)."""
    piece = piece.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return piece if width is None or len(piece) <= width else "…" + piece[-(width - 1):]


def quoted(token: str) -> str:
    return f"'{shown(token)}'"


def probability_text(p: float) -> str:
    """Three decimals, or scientific notation below 0.001 (never a misleading 0.000)."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def format_explanation(explanation: Explanation) -> str:
    header = f"{'pos':>4}  {'context':<28} {'target':<16} {'p(target)':>9} {'rank':>5} {'loss':>7}  top predictions"
    lines = ["tokens: " + " | ".join(shown(t) for t in explanation.tokens), "", header, "-" * len(header)]
    for p in explanation.positions:
        top = ", ".join(f"{quoted(tok)} {probability_text(prob)}" for tok, prob in p.top)
        lines.append(f"{p.position:>4}  {shown(p.context, 28):<28} {quoted(p.target):<16} "
                     f"{probability_text(p.probability):>9} {p.rank:>5} {p.loss:>7.3f}  {top}")
    n = len(explanation.positions)
    lines += ["", f"mean loss {explanation.mean_loss:.4f} nats/token over {n} prediction{'s' if n != 1 else ''}, "
                  f"perplexity {explanation.perplexity:.2f}"]
    return "\n".join(lines)
