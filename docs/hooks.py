"""The pages of the site whose content comes from the code and the data, rendered when the site builds.

A page asks for a generated part with a marker line in its Markdown source, ``<!-- generated: NAME -->``
(or ``<!-- generated: NAME ARGUMENT -->``), which ``on_page_markdown`` replaces:

* ``recipe-keys``: the recipe's own keys, from the fields of ``ModelArguments``, ``DataArguments`` and
  ``RunArguments`` (their ``help``, default and ``choices`` metadata), then the ``TrainingArguments`` keys
  the shipped recipes set, with transformers' own help for each;
* ``bench-results``: the benchmark table, from ``bench/results.json``;
* ``bench-ab STAGE``: one A/B table, the rows of ``bench/results-ab.json`` whose stage is ``STAGE``;
* ``modules``: every module and subpackage of ``hf_clm``, with the first sentence of its docstring.

An unknown marker, or one whose data is missing, stops the build: a page never shows a marker or an
empty table.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the package of this checkout, whichever hf_clm is installed

from hf_clm.recipe.schema import DataArguments, ModelArguments, RunArguments  # noqa: E402  (the recipe's dataclasses)

RECIPE_CLASSES = (ModelArguments, DataArguments, RunArguments)
PACKAGE = REPO / "hf_clm"
RECIPES = REPO / "recipes"
BENCH_RESULTS = REPO / "bench" / "results.json"
BENCH_AB = REPO / "bench" / "results-ab.json"
MARKER = re.compile(r"^<!-- generated: ([a-z-]+)(?: (.+?))? -->$", re.MULTILINE)


def cell(text: object) -> str:
    """Text for one cell of a Markdown table: one line, no column separator (a bar inside a code span
    separates nothing and stays as it is)."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    return "".join(part if index % 2 else part.replace("|", "\\|") for index, part in enumerate(parts))


def code(value: object) -> str:
    return f"`{value}`"


def help_text(field: dataclasses.Field) -> str:
    return str(field.metadata.get("help", "")).replace("%%", "%")  # argparse's escape of a literal %


def default_of(field: dataclasses.Field) -> object:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def type_name(field: dataclasses.Field) -> str:
    return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))


def recipe_field_table(cls: type) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        meaning = help_text(field)
        if choices := field.metadata.get("choices"):
            meaning += " One of " + ", ".join(code(choice) for choice in choices) + "."
        # a type such as `str | None` keeps its bar: inside a code span it separates no columns
        rows.append(f"| {code(field.name)} | {code(type_name(field))} | {code(default_of(field))} | {cell(meaning)} |")
    return rows


def recipes_setting(keys: set[str]) -> dict[str, list[str]]:
    """For each of ``keys``: the shipped recipes that set it (top-level keys of recipes/*.yaml)."""
    import yaml

    setting: dict[str, list[str]] = {}
    for path in sorted(RECIPES.glob("*.yaml")):
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for key in values:
            if key in keys:
                setting.setdefault(key, []).append(path.name)
    return setting


def training_arguments_table() -> list[str]:
    from transformers import TrainingArguments

    fields = {field.name: field for field in dataclasses.fields(TrainingArguments) if field.init}
    setting = recipes_setting(set(fields))
    if not setting:
        raise ValueError(f"no TrainingArguments key is set by any recipe in {RECIPES}")
    rows = ["| key | transformers' default | set in | transformers' help |", "|---|---|---|---|"]
    for key in sorted(setting):
        field = fields[key]
        recipes = ", ".join(code(name) for name in setting[key])
        rows.append(f"| {code(key)} | {code(default_of(field))} | {recipes} | {cell(help_text(field))} |")
    return rows


def recipe_keys(_: str | None) -> str:
    parts = []
    for cls in RECIPE_CLASSES:
        parts += [f"## {cls.__name__}", "", *recipe_field_table(cls), ""]
    parts += ["## TrainingArguments keys the shipped recipes set", "",
              "Every field of transformers' `TrainingArguments` is a recipe key as well (`hf-clm train --help` "
              "lists them all; transformers' documentation of `TrainingArguments` describes each). These are "
              "the ones the recipes in `recipes/` set, with the help transformers gives them:", "",
              *training_arguments_table(), ""]
    return "\n".join(parts)


def ratio_text(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def met_text(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def read_results(path: Path) -> dict:
    results = json.loads(path.read_text(encoding="utf-8"))
    if not results.get("rows"):
        raise ValueError(f"{path} holds no rows")
    return results


def machine_line(machine: dict) -> str:
    described = machine.get("cpu") or f"{machine['cpu_cores']} CPU cores"
    gpu = machine.get("gpu") or "no GPU"
    return f"Machine of these figures (from the file): {described}, torch {machine['torch']}, " \
           f"Python {machine['python']}, {gpu}."


def bench_results(_: str | None) -> str:
    results = read_results(BENCH_RESULTS)
    rows = ["| stage | comparison | ratio | target | met | context |", "|---|---|---|---|---|---|"]
    rows += [f"| {cell(r['stage'])} | {cell(r['what'])} | {ratio_text(r['ratio'])} | {cell(r['target'])} | "
             f"{met_text(r['met'])} | {cell(r['context'])} |" for r in results["rows"]]
    return "\n".join([machine_line(results["machine"]), "", *rows, ""])


def bench_ab(stage: str | None) -> str:
    rows = [r for r in read_results(BENCH_AB)["rows"] if r["stage"] == stage]
    if not rows:
        raise ValueError(f"{BENCH_AB} has no rows of stage {stage!r}")
    table = ["| variant | bits/char | steps | wall | vs baseline | compared at |", "|---|---|---|---|---|---|"]
    table += [f"| {cell(r['what'])} | {r['bits_per_char']:.3f} | {r['steps']:,} | {r['wall_s']:.0f} s | "
              f"{ratio_text(r['ratio'])} | {cell(r['target'])} |" for r in rows]
    return "\n".join([*table, ""])


def summary(docstring: str | None) -> str:
    """The first sentence of a docstring's first paragraph, its reStructuredText roles as Markdown."""
    if not docstring:
        return ""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z`])", paragraph)[0]
    sentence = re.sub(r":\w+:`~?([\w.]+)`", lambda m: f"`{m.group(1)}`", sentence)  # :mod:`hf_clm.planning.memory`
    return sentence.replace("``", "`")


def module_rows(folder: Path) -> list[str]:
    """The package in ``folder``, then its modules, then each subpackage the same way."""
    relative = folder.relative_to(REPO).as_posix()
    init = folder / "__init__.py"
    rows = [f"| {code(relative + '/')} | {cell(summary(ast.get_docstring(ast.parse(init.read_text('utf-8')))))} |"]
    for path in sorted(folder.glob("*.py")):
        if path.name != "__init__.py":
            doc = summary(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))))
            rows.append(f"| {code(path.relative_to(REPO).as_posix())} | {cell(doc)} |")
    for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
        rows += module_rows(sub)
    return rows


def modules(_: str | None) -> str:
    return "\n".join(["| module | what it is (the first sentence of its docstring) |", "|---|---|",
                      *module_rows(PACKAGE), ""])


GENERATORS = {"recipe-keys": recipe_keys, "bench-results": bench_results, "bench-ab": bench_ab, "modules": modules}


def on_page_markdown(markdown: str, page, **_) -> str:
    def generated(match: re.Match) -> str:
        name, argument = match.group(1), match.group(2)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown generated part {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name](argument)

    return MARKER.sub(generated, markdown)
