"""hf-clm's rolling convention against lm-evaluation-harness's loglikelihood_rolling, on the same
model and text: per-document log-likelihood, word and byte perplexity and bits per byte.

lm-evaluation-harness is the field's reference, not a dependency of the package: run this with a
Python that has it (`pip install lm-eval`) and hf_clm importable, e.g.

    PYTHONPATH=. python -m bench.lm_eval_agreement [--documents 40] [--window 128]

The model is GPT-2-shaped (2 layers x 64, random weights, seed 0) with the real GPT-2 tokenizer;
the text is the first documents (articles) of WikiText-2's raw test split.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

from hf_clm.evaluation.scoring import evaluate_rolling

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def wikitext_articles(n: int) -> list[str]:
    """Articles of wiki.test.raw: a new one starts at each ' = Title = ' line."""
    text = (SHARED / "wikitext-2-raw" / "test.txt").read_text(encoding="utf-8")
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = \n", text, flags=re.M)]
    bounds = zip(starts, starts[1:] + [len(text)])
    return [text[a:b] for a, b in bounds][:n]


def harness_figures(model, tokenizer, texts: list[str], window: int) -> tuple[list[float], dict]:
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, max_length=window)
    requests = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]
    loglikelihoods = [float(x) for x in lm.loglikelihood_rolling(requests, disable_tqdm=True)]
    words = [len(re.split(r"\s+", t)) for t in texts]
    n_bytes = [len(t.encode("utf-8")) for t in texts]
    return loglikelihoods, {
        "word_perplexity": weighted_perplexity(list(zip(loglikelihoods, words))),
        "byte_perplexity": weighted_perplexity(list(zip(loglikelihoods, n_bytes))),
        "bits_per_byte": bits_per_byte(list(zip(loglikelihoods, n_bytes))),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(SHARED / "tiny-gpt2")
    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=64, n_head=2)).eval()
    texts = wikitext_articles(args.documents)
    ours = evaluate_rolling(model, tokenizer, texts, args.window, batch_size=4, progress=False)
    theirs, reference = harness_figures(model, tokenizer, texts, args.window)
    figures = ours.figures()
    worst = max(abs(a - b) / abs(b) for a, b in zip(ours.document_loglikelihoods, theirs))
    rows = {name: (figures[name], reference[name], abs(figures[name] - reference[name]) / reference[name])
            for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    print(f"{len(texts)} documents, {figures['bytes']:,} bytes, {figures['tokens']:,} tokens, window {args.window}")
    print(f"per-document log-likelihood: largest relative difference {worst:.2e}")
    for name, (mine, ref, rel) in rows.items():
        print(f"{name:<16} hf-clm {mine:.6f}  lm-eval {ref:.6f}  relative difference {rel:.2e}")
    result = {"documents": len(texts), "window": args.window, "worst_document_rel": worst,
              **{name: {"hf_clm": m, "lm_eval": r, "rel": d} for name, (m, r, d) in rows.items()}}
    print(json.dumps(result))
    return 0 if worst < 1e-4 and all(d < 1e-4 for *_, d in rows.values()) and math.isfinite(worst) else 1


if __name__ == "__main__":
    sys.exit(main())
