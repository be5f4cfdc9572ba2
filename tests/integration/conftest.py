"""The integration tier: real processes (the ``python -m hf_clm`` entry point, launchers, Slurm jobs,
kills, file-size limits) or runs of more than a few seconds. Every test here is marked ``full``:
in ``make test``, not in ``make test-fast``."""

import pytest


def pytest_collection_modifyitems(config, items):
    here = config.rootpath / "tests" / "integration"
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.full)
