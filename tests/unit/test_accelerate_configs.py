"""The shipped accelerate configs, read and turned into plugins by accelerate itself (no GPU needed):
what ``accelerate launch --config_file`` would hand each process."""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from conftest import REPO

CONFIGS = REPO / "recipes" / "accelerate"


def launch_environment(config: Path, *flags: str) -> dict[str, str]:
    """The environment ``accelerate launch`` gives the processes, as its launchers build it."""
    args = launch_command_parser().parse_args(["--config_file", str(config), *flags, "-m", "hf_clm", "train"])
    args, defaults, precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def accelerate_variables(environment: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in environment.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_deepspeed_zero2_config_is_parsed_and_validated_by_accelerate(monkeypatch):
    config = CONFIGS / "deepspeed-zero2.yaml"
    assert load_config_from_file(str(config)).distributed_type == DistributedType.DEEPSPEED
    environment = launch_environment(config)
    assert environment["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert environment["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in accelerate_variables(environment).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # what each process builds from that environment
    assert plugin.zero_stage == 2
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "none"
    assert zero["offload_param"]["device"] == "none"
    # batch size, accumulation and clipping come from the recipe through Trainer
    assert plugin.deepspeed_config["gradient_accumulation_steps"] == "auto"
    assert plugin.deepspeed_config["gradient_clipping"] == "auto"


def test_fsdp_config_gives_fsdp2_full_shard_by_transformer_block(monkeypatch):
    config = CONFIGS / "fsdp.yaml"
    environment = launch_environment(config, "--num_processes", "2", "--mixed_precision", "no")
    assert environment["ACCELERATE_USE_FSDP"] == "true" and environment["ACCELERATE_MIXED_PRECISION"] == "no"
    for key, value in accelerate_variables(environment).items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["GPT2Block"]
    assert str(plugin.state_dict_type).endswith(".SHARDED_STATE_DICT")  # checkpoints: each rank writes its part


def test_a_config_key_accelerate_does_not_know_is_refused(tmp_path):
    config = yaml.safe_load((CONFIGS / "deepspeed-zero2.yaml").read_text())
    config["zero_stag"] = 2
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="zero_stag"):
        load_config_from_file(str(path))


def test_the_gpu_checks_fsdp_row_uses_the_shipped_fsdp_config_on_one_process():
    from bench.gpu import fsdp_on_one_gpu_environment

    launched = accelerate_variables(launch_environment(CONFIGS / "fsdp.yaml", "--num_processes", "1"))
    for key, value in fsdp_on_one_gpu_environment().items():
        if key.startswith(("ACCELERATE_", "FSDP_")):
            assert launched[key].lower() == value.lower(), key


def test_the_gpu_checks_deepspeed_row_uses_the_shipped_zero2_config_on_one_process(monkeypatch):
    from bench.gpu import deepspeed_on_one_gpu_environment

    environment = deepspeed_on_one_gpu_environment()
    assert environment["ACCELERATE_USE_DEEPSPEED"] == "true" and environment["WORLD_SIZE"] == "1"
    for key, value in accelerate_variables(environment).items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()  # what Trainer builds from ACCELERATE_USE_DEEPSPEED
    assert plugin.zero_stage == 2 and plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "none"
