"""The package's house rules, checked: every import arrow points down the stations (import-linter's
layers contract in pyproject.toml), and no module grows past 400 lines."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LONGEST_MODULE = 400


def test_every_import_points_down_the_layers():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: pip install -e '.[test]' installs import-linter")
    result = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_the_layers_contract_names_every_station():
    import tomllib

    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    stations = {p.name for p in (REPO / "hf_clm").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in (REPO / "hf_clm").glob("*.py") if p.stem != "__init__"}
    assert contract["exhaustive"] is True
    assert set(contract["layers"]) == stations | modules


def test_no_module_is_longer_than_400_lines():
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "hf_clm").rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > LONGEST_MODULE} == {}
