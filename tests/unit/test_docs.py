"""The documentation cannot drift from the code: every recipe key has the help text its reference is
rendered from, the README stays a short entry point naming every command, and the pages of docs/ and
the site's navigation in mkdocs.yml list each other."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README_MAX_LINES = 250


def docs_hooks():
    """docs/hooks.py, the mkdocs hook that renders the generated pages (it names the recipe's classes)."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(entries) -> list[str]:
    """The Markdown files a mkdocs ``nav`` names, at any depth."""
    pages = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def cli_commands() -> list[str]:
    import argparse

    from hf_clm.commands.cli import top_parser

    actions = [a for a in top_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(name for action in actions for name in action.choices)


def test_reference_covers_every_recipe_class():
    from hf_clm.recipe.keys import OWN_CLASSES

    assert sorted(cls.__name__ for cls in docs_hooks().RECIPE_CLASSES) == sorted(OWN_CLASSES)


def test_every_recipe_key_has_help():
    missing = [f"{cls.__name__}.{field.name}" for cls in docs_hooks().RECIPE_CLASSES
               for field in dataclasses.fields(cls) if not str(field.metadata.get("help", "")).strip()]
    assert not missing, f"recipe keys without help metadata (the recipe-key reference is rendered from it): {missing}"


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; the rest belongs in docs/"


def test_nav_and_docs_pages_agree():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = nav_pages(config["nav"])
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
    missing = [page for page in listed if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml's nav lists pages that do not exist: {missing}"
    pages = sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))
    unlisted = sorted(set(pages) - set(listed))
    assert not unlisted, f"pages in docs/ that mkdocs.yml's nav does not list: {unlisted}"


@pytest.mark.parametrize("command", cli_commands())
def test_readme_and_docs_name_every_command(command):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"`hf-clm {command}\b", readme), f"README.md does not mention `hf-clm {command}`"
    assert (DOCS / "commands" / f"{command}.md").is_file(), f"no page docs/commands/{command}.md"


def test_readme_names_the_rehearsal():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "`hf-clm train RECIPE --rehearse K`" in readme
    assert (DOCS / "commands" / "rehearse.md").is_file()
