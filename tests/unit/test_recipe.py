import dataclasses
import os
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from hf_clm.errors import HfClmError
from hf_clm.recipe.parser import parse_recipe
from hf_clm.recipe.paths import resolve_paths
from hf_clm.recipe.schema import save_recipe
from hf_clm.recipe.yaml_file import read_recipe_yaml
from hf_clm.run.files import RECIPE_FILENAME

REPO = Path(__file__).resolve().parents[2]


def write_recipe(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_overrides_defaults_and_cli_overrides_yaml(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n"
                                  "learning_rate: 3e-4\nblock_size: 64\nmax_steps: 7\n")
    recipe = parse_recipe([path, "--learning_rate", "1e-3"])
    assert recipe.training_args.learning_rate == pytest.approx(1e-3)  # CLI beats YAML
    assert recipe.data_args.block_size == 64  # YAML beats the default
    assert recipe.training_args.max_steps == 7
    assert recipe.model_args.n_layer == 4  # dataclass default


def test_scientific_notation_in_yaml_is_a_number(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n"
                                  "learning_rate: 3e-4\nweight_decay: 1e-1\n")
    recipe = parse_recipe([path])
    assert isinstance(recipe.training_args.learning_rate, float)
    assert recipe.training_args.learning_rate == pytest.approx(3e-4)
    assert recipe.training_args.weight_decay == pytest.approx(0.1)


def test_unknown_yaml_key_names_the_closest_valid_one(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\nblok_size: 64\n")
    with pytest.raises(HfClmError, match=r"unknown recipe key 'blok_size'.*did you mean 'block_size'"):
        read_recipe_yaml(path)


def test_unknown_cli_flag_names_the_closest_valid_one():
    with pytest.raises(HfClmError, match=r"'lerning_rate'.*did you mean 'learning_rate'"):
        parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", "--lerning_rate", "1"])


def test_bad_value_is_one_line_error():
    with pytest.raises(HfClmError, match="block_size must be an integer, not 'big'"):
        parse_recipe(["--builtin_corpus", "python-stdlib", "--block_size", "big"])


def test_problems_are_collected_and_reported_together():
    with pytest.raises(HfClmError) as err:
        parse_recipe(["--block_size", "1", "--dropout", "2"])
    message = str(err.value)
    assert "exactly one of dataset_name, train_files or builtin_corpus" in message
    assert "block_size must be an integer from 2" in message
    assert "dropout must be a number in [0, 1)" in message
    assert "no tokenizer" in message


@pytest.mark.parametrize("argv", [["--sample_by", "sentence"], ["--attention_scope", "sentence"],
                                  ["--bnb_4bit_quant_type", "sentence"], ["--peft_method", "sentence"]])


def test_choices_declared_on_the_fields_are_checked_for_flags_and_yaml(tmp_path, argv):
    key = argv[0][2:]
    with pytest.raises(HfClmError, match=f"^{key} must be one of .*, not 'sentence'$"):
        parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", *argv])
    path = tmp_path / "r.yaml"
    path.write_text(f"builtin_corpus: python-stdlib\ntrain_tokenizer: true\n{key}: sentence\n")
    with pytest.raises(HfClmError, match=f"{key} must be one of .*, not 'sentence'$"):
        parse_recipe([str(path)])


def test_resolved_recipe_is_written_and_reruns_identically(tmp_path):
    recipe = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true",
                           "--learning_rate", "2e-3", "--max_steps", "11", "--output_dir", str(tmp_path / "run")])
    path = save_recipe(recipe, recipe.training_args.output_dir)
    assert path.name == RECIPE_FILENAME
    written = yaml.safe_load(path.read_text())
    assert written["learning_rate"] == pytest.approx(2e-3) and written["max_steps"] == 11
    again = parse_recipe([str(path)])
    assert again.model_args == recipe.model_args and again.data_args == recipe.data_args
    assert again.training_args.to_dict() == recipe.training_args.to_dict()


def test_hub_token_never_written(tmp_path):
    recipe = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true",
                           "--hub_token", "hf_secret_value", "--output_dir", str(tmp_path)])
    path = save_recipe(recipe, tmp_path)
    assert "hf_secret_value" not in path.read_text()


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_parses_and_starts_with_its_command(path):
    assert path.read_text().startswith("# hf-clm ") or path.read_text().startswith("# accelerate ")
    values = read_recipe_yaml(path)
    recipe = parse_recipe([str(path)])  # bf16 included: without a GPU it is autocast on the CPU
    values = resolve_paths(values)  # paths are resolved once, at parse time, against the current directory
    assert recipe.training_args.output_dir == values["output_dir"] == os.path.abspath(read_recipe_yaml(path)["output_dir"])
    assert all(getattr(recipe.model_args, k, getattr(recipe.data_args, k, None)) == v for k, v in values.items()
               if hasattr(recipe.model_args, k) or hasattr(recipe.data_args, k))


def test_trained_run_recipe_reparses_to_every_same_value(text_files, tmp_path):
    """Values equal to transformers' defaults but not to the package's are recorded too."""
    from conftest import recipe_args

    from hf_clm.commands.cli import main

    flags = recipe_args(text_files, tmp_path / "run", "--max_steps", "4", "--eval_strategy", "no",
                        "--logging_steps", "500", "--save_strategy", "no", "--lr_scheduler_type", "cosine",
                        "--max_eval_samples", "5", "--include_num_input_tokens_seen", "true")
    assert main(["train", *flags]) == 0
    original = parse_recipe(flags)
    saved = tmp_path / "run" / RECIPE_FILENAME
    written = yaml.safe_load(saved.read_text())
    assert written["eval_strategy"] == "no" and written["logging_steps"] == 500 and written["save_strategy"] == "no"
    again = parse_recipe([str(saved)])
    assert dataclasses.asdict(again.model_args) == dataclasses.asdict(original.model_args)
    assert dataclasses.asdict(again.data_args) == dataclasses.asdict(original.data_args)
    assert dataclasses.asdict(again.run_args) == dataclasses.asdict(original.run_args)
    before, after = original.training_args.to_dict(), again.training_args.to_dict()
    assert before.keys() == after.keys()
    assert {k: (before[k], after[k]) for k in before if before[k] != after[k]} == {}
    command = saved.read_text().splitlines()[1].removeprefix("# ")  # the header's command, run as printed
    assert command.startswith("hf-clm train ") and main(shlex.split(command)[1:]) == 0
    assert (tmp_path / "run-rerun" / RECIPE_FILENAME).is_file()


def base_recipe(tmp_path, text_files, extra: str = "") -> str:
    return write_recipe(tmp_path, f"train_files: [{text_files['train']}]\nvalidation_files: [{text_files['validation']}]\n"
                                  f"sample_by: paragraph\ntrain_tokenizer: true\nvocab_size: 300\n{extra}")


def test_a_corpus_flag_replaces_the_recipe_corpus_source(text_files, tmp_path):
    path = base_recipe(tmp_path, text_files)
    recipe = parse_recipe([path, "--builtin_corpus", "python-stdlib"])
    assert recipe.data_args.builtin_corpus == "python-stdlib"
    assert recipe.data_args.train_files is None and recipe.data_args.validation_files is None
    assert recipe.data_args.sample_by == "paragraph"  # not a source key: kept
    other = tmp_path / "other.txt"
    recipe = parse_recipe([path, "--train-files", str(other)])  # the dash spelling too
    assert recipe.data_args.train_files == [str(other)] and recipe.data_args.validation_files is None
    stdlib = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n")
    assert parse_recipe([stdlib, "--dataset_name", "wikitext"]).data_args.builtin_corpus is None


def test_a_model_flag_replaces_the_recipe_tokenizer_choice(text_files, tmp_path):
    recipe = parse_recipe([base_recipe(tmp_path, text_files), "--model_name_or_path", "some/model"])
    assert recipe.model_args.train_tokenizer is False and recipe.model_args.tokenizer_name_or_path is None
    with pytest.raises(HfClmError, match="only works with the tokenizer it was trained with"):
        parse_recipe([base_recipe(tmp_path, text_files), "--model_name_or_path", "m", "--train_tokenizer", "true"])


@pytest.mark.parametrize("spelling", ["none", "null", "None", ""])
def test_none_unsets_an_optional_key(text_files, tmp_path, spelling):
    path = base_recipe(tmp_path, text_files, "max_train_samples: 50\nresume_from_checkpoint: auto\n")
    recipe = parse_recipe([path, "--max_train_samples", spelling, "--validation_files", spelling,
                           "--resume_from_checkpoint", spelling])
    assert recipe.data_args.max_train_samples is None and recipe.data_args.validation_files is None
    assert recipe.training_args.resume_from_checkpoint is None
    assert parse_recipe([path, "--report_to", "none"]).training_args.report_to == []  # report_to's own 'none'
    stdlib = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n")
    both = parse_recipe([stdlib, "--builtin_corpus", spelling, "--train_files", str(text_files["train"])])
    assert both.data_args.builtin_corpus is None and both.data_args.train_files == [str(text_files["train"])]


def test_recipe_after_the_flags(text_files, tmp_path):
    path = base_recipe(tmp_path, text_files, "block_size: 48\n")
    recipe = parse_recipe(["--max_steps", "5", path, "--learning_rate", "1e-3"])
    assert recipe.data_args.block_size == 48 and recipe.training_args.max_steps == 5
    assert recipe.training_args.learning_rate == pytest.approx(1e-3)


def test_unquoted_no_is_the_strategy_no(text_files, tmp_path):
    recipe = parse_recipe([base_recipe(tmp_path, text_files, "eval_strategy: no\nsave_strategy: no\n")])
    assert recipe.training_args.eval_strategy == "no" and recipe.training_args.save_strategy == "no"


def test_help_shows_the_recipe_argument_and_auto(capsys):
    from hf_clm.commands.cli import main

    for command in ("train", "prepare"):
        assert main([command, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert out.startswith(f"usage: hf-clm {command} [RECIPE] [--key value ...]")
        if command == "train":
            assert "'auto': the newest complete checkpoint in output_dir" in out
        else:  # prepare reads the corpus and tokenizer keys, and its own settings
            assert "--executor {local,slurm,ray}" in out and "--tasks TASKS" in out and "--block_size" in out
            assert "--learning_rate" not in out


def test_ddp_does_not_search_for_unused_parameters_by_default_and_a_recipe_can_turn_it_on(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n")
    assert parse_recipe([path]).training_args.ddp_find_unused_parameters is False
    assert parse_recipe([path, "--ddp_find_unused_parameters", "true"]).training_args.ddp_find_unused_parameters is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rewrite applies only without a GPU")
def test_bf16_without_a_gpu_is_cpu_autocast_and_the_recipe_records_bf16_only(tmp_path):
    recipe = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", "--bf16", "true",
                           "--output_dir", str(tmp_path)])
    assert recipe.training_args.bf16 and recipe.training_args.use_cpu
    written = yaml.safe_load(save_recipe(recipe, tmp_path).read_text())
    assert written["bf16"] is True and "use_cpu" not in written


def test_optim_muon_is_recorded_as_given_and_trainer_holds_its_adamw_half(tmp_path):
    recipe = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", "--optim", "muon",
                           "--muon_learning_rate", "0.02", "--output_dir", str(tmp_path)])
    assert recipe.training_args.optim == "adamw_torch" and recipe.run_args.muon_learning_rate == 0.02
    again = parse_recipe([str(save_recipe(recipe, tmp_path))])
    assert again.training_values["optim"] == "muon" and again.run_args.muon_learning_rate == 0.02


def test_the_key_names_read_from_source_are_the_dataclasses_keys():
    from hf_clm.recipe.keys import recipe_key_names
    from hf_clm.recipe.schema import recipe_fields

    assert sorted(recipe_key_names()) == sorted(f.name for f in recipe_fields())


def test_a_misspelt_key_is_reported_before_torch_or_transformers_is_imported(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text("block_sise: 32\npeft: {method: lora}\n")
    code = ("import sys; from hf_clm.commands.cli import main; code = main(['train', sys.argv[1], '--max-step', '3']); "
            "print(code, 'torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False", "False"], result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "hf-clm: error: unknown recipe key 'max_step' in the command line; did you mean 'max_steps'?; "
        f"unknown recipe key 'block_sise' in {recipe}; did you mean 'block_size'?"]


def test_the_checkpoint_prefix_is_transformers_own():
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from hf_clm.run import files as run_files
    assert run_files.PREFIX_CHECKPOINT_DIR == PREFIX_CHECKPOINT_DIR


# ---- '--KEY none': every key can be unset --------------------------------------------------------


def key_value(recipe, key: str):
    part = next(part for part in recipe[:4] if key in {f.name for f in dataclasses.fields(part)})
    return getattr(part, key)


# Keys the base recipe below needs: unset, the recipe has no corpus or no tokenizer (a recipe problem).
NEEDED = {"train_files": "set exactly one of dataset_name, train_files or builtin_corpus",
          "train_tokenizer": "no tokenizer: set train_tokenizer: true"}


def test_every_key_with_a_default_is_unset_by_none_to_its_default(tmp_path):
    """A table over the recipe's dataclass fields: '--KEY none' gives what a recipe without the key gets."""
    from hf_clm.recipe.parser import key_defaults
    from hf_clm.recipe.schema import recipe_fields

    (tmp_path / "train.txt").write_text("some text\n")
    base = write_recipe(tmp_path, f"train_files: {tmp_path / 'train.txt'}\ntrain_tokenizer: true\n")
    without = parse_recipe([base], command="plan")
    failures = []
    for field in recipe_fields():
        key = field.name
        if key in NEEDED:
            with pytest.raises(HfClmError, match=NEEDED[key]):
                parse_recipe([base, f"--{key}", "none"], command="plan")
            continue
        try:
            unset = parse_recipe([base, f"--{key}", "none"], command="plan")
        except HfClmError as err:
            failures.append((key, str(err)))
            continue
        if key_value(unset, key) != key_value(without, key):
            failures.append((key, key_value(unset, key), key_value(without, key), key_defaults()[key]))
    assert not failures, failures


def test_none_gives_a_recipe_files_key_its_default(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\nmax_steps: 100\n"
                                  "block_size: 64\nlearning_rate: 1e-3\nbf16: true\n")
    recipe = parse_recipe([path, "--max_steps", "none", "--block_size=null", "--learning_rate", "None", "--bf16",
                           "none"], command="plan")
    assert (recipe.training_args.max_steps, recipe.data_args.block_size, recipe.training_args.bf16) == (-1, 128, False)
    assert recipe.training_args.learning_rate == pytest.approx(5e-5)  # transformers' default


def test_a_bad_number_names_the_range_and_how_to_unset(tmp_path):
    path = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\nmax_steps: none\n")
    with pytest.raises(HfClmError) as raised:
        parse_recipe([path])
    assert str(raised.value).endswith("max_steps must be an integer, not 'none' (an integer >= 1, or -1 to train "
                                      "num_train_epochs); remove the line for its default")
    with pytest.raises(HfClmError, match=r"max_steps must be an integer, not 'lots' \(an integer >= 1, or -1 to train "
                                         r"num_train_epochs; '--max_steps none' gives its default\)"):
        parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", "--max_steps", "lots"],
                     command="plan")


# ---- what run_clm.py users type ------------------------------------------------------------------


def test_run_clm_names_are_read_as_this_packages_keys_with_a_note(tmp_path, caplog):
    (tmp_path / "train.txt").write_text("some text\n")
    (tmp_path / "valid.txt").write_text("other text\n")
    path = write_recipe(tmp_path, f"train_file: {tmp_path / 'train.txt'}\nmodel_type: gpt2\ntrain_tokenizer: true\n"
                                  f"do_train: true\n")
    with caplog.at_level("INFO", logger="hf_clm"):
        recipe = parse_recipe([path, "--validation_file", str(tmp_path / "valid.txt"), "--do_eval", "true"],
                              command="plan")
    assert recipe.data_args.train_files == [str(tmp_path / "train.txt")]
    assert recipe.data_args.validation_files == [str(tmp_path / "valid.txt")]
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["train_file is run_clm.py's name: read as train_files",
                     "model_type gpt2: hf-clm builds a GPT-2-style model from scratch anyway (n_layer, n_head, n_embd)",
                     "do_train changes nothing here: hf-clm train always trains (a finished run trains no further)",
                     "validation_file is run_clm.py's name: read as validation_files",
                     "do_eval changes nothing here: hf-clm train always evaluates the final weights and writes "
                     "perplexity.json; eval_strategy: no turns off the evaluations during training"]


def test_a_train_file_flag_replaces_the_recipes_corpus_like_train_files(text_files, tmp_path):
    stdlib = write_recipe(tmp_path, "builtin_corpus: python-stdlib\ntrain_tokenizer: true\n")
    recipe = parse_recipe([stdlib, "--train_file", str(text_files["train"])], command="plan")
    assert recipe.data_args.builtin_corpus is None and recipe.data_args.train_files == [str(text_files["train"])]


def test_relative_paths_resolve_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("some text\n")
    (tmp_path / "recipes").mkdir()
    recipe_file = tmp_path / "recipes" / "r.yaml"
    recipe_file.write_text("train_files: data/train.txt\ntrain_tokenizer: true\n")
    monkeypatch.chdir(tmp_path)
    assert parse_recipe([str(recipe_file)]).data_args.train_files == [str(tmp_path / "data" / "train.txt")]
    monkeypatch.chdir(tmp_path / "recipes")  # the recipe's own folder: data/ is not there
    with pytest.raises(HfClmError) as raised:
        parse_recipe(["r.yaml"])
    assert str(raised.value) == (f"train_files: 'data/train.txt' does not exist (a relative path is resolved from the "
                                 f"current directory, {tmp_path / 'recipes'}: {tmp_path / 'recipes' / 'data' / 'train.txt'}"
                                 f"); give a path from the current directory or an absolute one")


@pytest.mark.parametrize("key, hint", [("base_model", "that is axolotl's key: here model_name_or_path"),
                                       ("micro_batch_size", "that is axolotl's and litgpt's key: here "
                                                            "per_device_train_batch_size"),
                                       ("sequence_len", "that is axolotl's key: here block_size"),
                                       ("out_dir", "that is litgpt's and nanoGPT's key: here output_dir"),
                                       ("max_iters", "that is nanoGPT's key: here max_steps"),
                                       ("blok_size", "did you mean 'block_size'?"),
                                       ("frobnicate", "see 'hf-clm train --help' for the keys")])


def test_foreign_keys_get_their_equivalent_and_only_close_misspellings_a_suggestion(key, hint):
    from hf_clm.recipe.keys import unknown_key_message

    assert unknown_key_message(key, "the command line") == f"unknown recipe key '{key}' in the command line; {hint}"


def test_no_far_fetched_suggestion_for_any_foreign_key():
    from hf_clm.recipe.aliases import FOREIGN
    from hf_clm.recipe.keys import unknown_key_message

    assert not [key for key in FOREIGN if "did you mean" in unknown_key_message(key, "x")]


def test_the_other_ranks_of_a_launch_keep_the_quiet_library_logs(monkeypatch):
    """Trainer sets each non-main process's transformers verbosity from log_level_replica (transformers'
    default: warning, which lets "`loss_type=None` ... unrecognized" through once per rank)."""
    import transformers
    from transformers import TrainingArguments

    from hf_clm.run.verbosity import quiet_libraries

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    quiet_libraries(verbose=False)
    args = parse_recipe(["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true"], command="plan").training_args
    monkeypatch.setattr(TrainingArguments, "should_log", property(lambda self: False))  # a replica
    assert args.get_process_log_level() == transformers.logging.get_verbosity() == transformers.logging.ERROR
