"""Corpus-level perplexity as an `evaluate` metric: exp(sum of token NLL / number of predicted tokens).

Load it offline from the installed package:

    import evaluate
    from hf_clm.evaluation import CORPUS_PERPLEXITY_METRIC
    metric = evaluate.load(CORPUS_PERPLEXITY_METRIC)
    metric.add_batch(nll=[12.5, 30.1], tokens=[5, 11])   # summed NLL (nats) and predicted tokens per part
    metric.compute(bytes=120, chars=118)

It differs from the Hub's `perplexity` metric, whose `mean_perplexity` is the mean of per-text
perplexities (every text weighs the same, however long). Here every *token* weighs the same: the
figure is the perplexity of the whole corpus, what papers and run_clm.py report. The result keys
say which: `perplexity` (corpus-level), never `mean_perplexity`.
"""

import math

import datasets
import evaluate

_DESCRIPTION = __doc__
_KWARGS = """
Args:
    nll: summed negative log-likelihood, in nats, of each part (a batch of windows, a text, ...).
    tokens: number of predicted tokens in each part.
    bytes: optional UTF-8 bytes of the evaluated text, for bits_per_byte.
    chars: optional characters of the evaluated text, for bits_per_char.
Returns:
    perplexity: exp(sum(nll) / sum(tokens)); loss: sum(nll) / sum(tokens); tokens: sum(tokens);
    bits_per_byte and bits_per_char: sum(nll) / ln 2 / bytes (or chars), when given.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CorpusPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")}),
        )

    def _compute(self, nll, tokens, bytes=None, chars=None):
        total, count = math.fsum(nll), sum(tokens)
        if count == 0:
            raise ValueError("no predicted tokens: perplexity needs at least one")
        loss = total / count
        result = {"perplexity": math.exp(loss) if loss < 700 else math.inf, "loss": loss, "tokens": count}
        bits = total / math.log(2)
        if bytes:
            result["bits_per_byte"] = bits / bytes
        if chars:
            result["bits_per_char"] = bits / chars
        return result
