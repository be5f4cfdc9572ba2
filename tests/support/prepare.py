"""Shared by tests/unit/test_prepare.py and tests/integration/test_prepare_processes.py."""

from conftest import recipe_args


def prepare_argv(files, output_dir, target, *extra):
    return recipe_args(files, output_dir, "--max_steps", "10", "--eval_steps", "10",
                       "--prepared_dataset", str(target), *extra)


