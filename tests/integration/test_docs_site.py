"""The documentation site builds with ``mkdocs build --strict`` (no broken link or anchor, no page left
out of the navigation), and its generated pages hold what the code and the benchmark results say."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.full

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                             "-d", str(out)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's text, tags removed and entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", (site / page / "index.html").read_text(encoding="utf-8")))


def recipe_classes():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RECIPE_CLASSES


def test_recipe_key_page_names_every_key(site):
    built = (site / "recipe-keys" / "index.html").read_text(encoding="utf-8")
    keys = [field.name for cls in recipe_classes() for field in dataclasses.fields(cls) if field.init]
    missing = [key for key in keys if f"<code>{key}</code>" not in built]
    assert not missing, f"the built recipe-key reference does not name: {missing}"


def test_performance_page_shows_the_benchmark_results(site):
    text = " ".join(page_text(site, "performance").split())
    results = json.loads((REPO / "bench" / "results.json").read_text(encoding="utf-8"))
    for row in results["rows"]:
        figure = f"{row['ratio']:.2f}×"
        context = " ".join(row["context"].split())
        assert f"{figure} " in text and context in text, f"{row['stage']}: {figure} / {context!r} not on the page"
    ab = json.loads((REPO / "bench" / "results-ab.json").read_text(encoding="utf-8"))
    for row in ab["rows"]:
        assert f"{row['what']} {row['bits_per_char']:.3f} {row['steps']:,}" in text, row["what"]
