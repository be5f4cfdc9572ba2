"""hf_clm.evaluation.metric: the ``evaluate`` metric equals ``hf-clm perplexity``, and Trainer's figures equal the engine's."""

import json
import math
import re

import pytest
import torch
from conftest import SHARED_DATA, make_documents, requires_shared_data
from datasets import Dataset
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_clm.commands.cli import main
from hf_clm.errors import HfClmError
from hf_clm.evaluation.metric import METRIC_PATH, compute_metrics, score_rows_preprocessor, texts_figures
from hf_clm.evaluation.scoring import blocks_scores, score_rows, shifted_targets
from hf_clm.evaluation.token_text import token_text
from hf_clm.training.trainer import TOKEN_WEIGHTED_LOSS, corpus_figures

pytestmark = requires_shared_data
CONTEXT = 48  # the model's context: longer texts take several windows


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SHARED_DATA / "tiny-gpt2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    """A small random GPT-2 with the real GPT-2 tokenizer, saved as ``from_pretrained`` loads it."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=32, n_layer=2, n_head=2)
    folder = tmp_path_factory.mktemp("tiny-gpt2-32")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def metric(tmp_path_factory):
    """``evaluate.load`` of the module file, offline, its module and metric caches in a temporary folder."""
    import evaluate
    import evaluate.config

    caches = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_EVALUATE_OFFLINE", "1")
        patch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", caches / "modules")
        patch.setattr(evaluate.config, "HF_METRICS_CACHE", caches / "metrics")
        yield evaluate.load(METRIC_PATH)


def cli_json(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["perplexity", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("options", [
    {"convention": "strided", "window": 32, "stride": 20},
    {"convention": "rolling", "window": 16},
    {},  # the command's defaults: strided, window = the model's context, no overlap
])


def test_evaluate_load_compute_equals_hf_clm_perplexity_json(metric, model_dir, tmp_path, capsys, options):
    texts = [make_documents(1, seed=5)[0] + " Ünïcode — ✓\n", "A second, shorter document.\n"]
    files = []
    for index, text in enumerate(texts):
        files.append(tmp_path / f"doc{index}.txt")
        files[-1].write_text(text, encoding="utf-8")
    flags = [arg for key, value in options.items() for arg in (f"--{key}", str(value))]
    expected = cli_json(capsys, str(model_dir), "--data", *map(str, files), "--device", "cpu", *flags)

    figures = metric.compute(model_id=str(model_dir), predictions=texts, device="cpu", **options)

    # the command's row also names the model and where its text came from (files, sample_by, limit)
    assert figures == {key: value for key, value in expected.items()
                       if key not in ("model", "evaluated_on", "sample_by", "limit")}
    assert figures["documents"] == 2 and figures["tokens"] > CONTEXT  # several windows were scored
    assert figures["bits_per_byte"] < figures["bits_per_char"]  # the non-ASCII characters take several bytes
    assert figures["perplexity"] == pytest.approx(math.exp(figures["loss"]))


def test_compute_checks_its_options_as_the_command_does(model_dir):
    with pytest.raises(HfClmError, match="convention"):
        texts_figures(["text"], str(model_dir), convention="sliding")
    with pytest.raises(HfClmError, match="--stride"):
        texts_figures(["text"], str(model_dir), convention="rolling", stride=8, device="cpu")
    with pytest.raises(HfClmError, match="--window 64 must be between 2 and the model's context of 48"):
        texts_figures(["text"], str(model_dir), window=64, device="cpu")


@pytest.fixture(scope="module")
def blocks(tokenizer):
    """Seven training-style blocks of 24 real GPT-2 tokens (labels as run_clm.py's group_texts makes them)."""
    ids = tokenizer("\n\n".join(make_documents(12, seed=4)))["input_ids"][: 7 * 24]
    rows = [ids[start:start + 24] for start in range(0, len(ids), 24)]
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def test_plain_trainer_with_the_metric_reports_the_engines_figures(model_dir, tokenizer, blocks, tmp_path):
    model = GPT2LMHeadModel.from_pretrained(model_dir)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3, use_cpu=True,
                             report_to="none", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, eval_dataset=blocks, compute_metrics=compute_metrics,
                      preprocess_logits_for_metrics=score_rows_preprocessor(tokenizer))

    metrics = trainer.evaluate()

    engine = blocks_scores(model, blocks.remove_columns("labels"), token_text(tokenizer), progress=False).figures()
    assert metrics["eval_tokens"] == engine["tokens"] == 7 * 23
    assert (metrics["eval_bytes"], metrics["eval_chars"]) == (engine["bytes"], engine["chars"])
    for name in ("perplexity", "loss", "bits_per_byte", "bits_per_char"):
        assert metrics[f"eval_{name}"] == pytest.approx(engine[name], rel=1e-5), name


def test_causal_lm_trainer_figures_are_the_metrics(model_dir, tokenizer, blocks):
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    ids = torch.tensor(blocks["input_ids"])
    with torch.inference_mode():
        rows = score_rows(model, ids, shifted_targets(ids), token_text(tokenizer))
    prediction = type("Prediction", (), {"predictions": rows.numpy()})()

    figures, metric_figures = corpus_figures(prediction), compute_metrics(prediction)

    assert figures == {TOKEN_WEIGHTED_LOSS: metric_figures["loss"], "tokens": metric_figures["tokens"],
                       "bits_per_byte": metric_figures["bits_per_byte"],
                       "bits_per_char": metric_figures["bits_per_char"]}
    engine = blocks_scores(model, blocks.remove_columns("labels"), token_text(tokenizer), progress=False)
    assert figures[TOKEN_WEIGHTED_LOSS] == pytest.approx(engine.loss, rel=1e-6)


def test_preprocessor_without_tokenizer_scores_tokens_but_no_bytes(model_dir, blocks):
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    ids = torch.tensor(blocks["input_ids"][:2])
    with torch.no_grad():
        rows = score_rows_preprocessor()(model(input_ids=ids).logits, ids)
    figures = compute_metrics(type("Prediction", (), {"predictions": rows.numpy()})())
    assert rows.shape == (2, 5) and figures["tokens"] == 2 * 23
    assert figures["bytes"] == 0 and figures["bits_per_byte"] is None


@pytest.mark.parametrize("predictions, message", [
    ([], "a non-empty list of texts (str), not []"),
    ([""], "hold no text to score (1 document(s), all empty)"),
    ([3], "not int (3)"),
])


def test_compute_refuses_predictions_with_nothing_to_score(metric, model_dir, predictions, message):
    with pytest.raises(HfClmError, match=re.escape(message)):
        metric.compute(model_id=str(model_dir), predictions=predictions, device="cpu")


def test_compute_refuses_a_window_that_is_no_integer(metric, model_dir):
    with pytest.raises(HfClmError, match=re.escape("window must be an integer, not '64'")):
        metric.compute(model_id=str(model_dir), predictions=["some text"], device="cpu", window="64")
