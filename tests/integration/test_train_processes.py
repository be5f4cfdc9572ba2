"""A real Trainer run, end to end, on a model and corpus small enough for seconds on a CPU."""

import json

import pytest
from conftest import recipe_args, write_corpus

from hf_clm.recipe.parser import parse_recipe
from hf_clm.training.train import run


def test_named_evaluation_sets_are_evaluated_and_reported_by_name(text_files, tmp_path):
    """The validation split keeps its eval_* figures; each named set gets eval_<name>_* everywhere."""

    other = write_corpus(tmp_path / "other", step=5)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(" ".join(["the cat sat on a mat"] * 30), encoding="utf-8")
    sets = json.dumps({"shifted": [str(other["validation"])], "docs": str(docs)})
    recipe = parse_recipe(recipe_args(text_files, tmp_path / "run", "--max_steps", "10", "--eval_steps", "5",
                                      "--eval_sets", sets))
    summary = run(recipe)
    assert set(summary["eval_sets"]) == {"shifted", "docs"}
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    for name in ("shifted", "docs"):
        steps = [e["step"] for e in history if f"eval_{name}_perplexity" in e]
        assert steps == [5, 10]
        assert summary["eval_sets"][name]["perplexity"] == pytest.approx(
            next(e for e in reversed(history) if f"eval_{name}_perplexity" in e)[f"eval_{name}_perplexity"])
    assert [e["step"] for e in history if "eval_perplexity" in e] == [5, 10]  # the default set as before
    assert summary["eval_sets"]["shifted"]["perplexity"] != pytest.approx(summary["perplexity"])
    written = json.loads((tmp_path / "run" / "perplexity.json").read_text())
    assert set(written["eval_sets"]) == {"shifted", "docs"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| run | set | perplexity |" in report and "| shifted |" in report and "| docs |" in report
    from hf_clm.hub.card import model_card
    from hf_clm.hub.publish import PublishOptions, publication

    card = str(model_card(publication(tmp_path / "run", PublishOptions(license="none")), "tester/sets"))
    assert "| shifted |" in card and "name: docs" in card, card
