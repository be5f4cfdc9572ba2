"""hf-clm plan: the arithmetic on small shapes, parameters against the real models, the flagship recipe."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA, requires_shared_data
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_clm.commands.cli import main

REPO = Path(__file__).resolve().parent.parent
FLAGSHIP = str(REPO / "recipes" / "gpt2-124m-fineweb.yaml")
SMALL = {"train_files": "corpus.txt", "train_tokenizer": True, "vocab_size": 300, "block_size": 32, "n_layer": 2,
         "n_head": 2, "n_embd": 32, "max_steps": 10, "per_device_train_batch_size": 4}


def small_recipe(tmp_path, **changes) -> str:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "output_dir": str(tmp_path / "out"), **changes}))
    return str(path)


def planned(capsys, *argv) -> dict:
    code = main(["plan", *argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_fp32_adamw_holds_4_bytes_of_weights_4_of_gradients_8_of_state_per_parameter(tmp_path, capsys):
    plan = planned(capsys, small_recipe(tmp_path))
    parameters, memory = plan["parameters"], plan["memory_per_device"]
    assert plan["trainable_parameters"] == parameters
    assert (memory["weights"], memory["gradients"], memory["optimizer"]) == (4 * parameters, 4 * parameters,
                                                                               8 * parameters)
    assert memory["compute_copy"] == 0
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    assert plan["tokens_per_step"] == 4 * 32 and plan["steps"] == 10 and plan["tokens_total"] == 1280
    assert plan["fits"] is None and plan["seconds_to_finish"] is None


def test_bf16_adds_a_16_bit_copy_of_the_weights(tmp_path, capsys):
    plan = planned(capsys, small_recipe(tmp_path), "--bf16", "true")
    assert plan["memory_per_device"]["compute_copy"] == 2 * plan["parameters"]
    assert plan["precision"] == "bf16 mixed"


def test_fsdp_over_two_halves_the_sharded_terms_and_zero2_only_optimizer_and_gradients(tmp_path, capsys):
    recipe = small_recipe(tmp_path)
    one = planned(capsys, recipe)["memory_per_device"]
    fsdp = planned(capsys, recipe, "--processes", "2", "--fsdp", "full_shard")
    assert fsdp["parallelism"] == "fsdp full_shard" and fsdp["tokens_per_step"] == 2 * 4 * 32
    for term in ("weights", "gradients", "optimizer"):
        assert fsdp["memory_per_device"][term] == one[term] / 2, term
    assert fsdp["memory_per_device"]["activations"] == one["activations"]
    config = tmp_path / "zero2.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    zero2 = planned(capsys, recipe, "--processes", "2", "--deepspeed", str(config))["memory_per_device"]
    assert zero2["weights"] == one["weights"]
    assert (zero2["gradients"], zero2["optimizer"]) == (one["gradients"] / 2, one["optimizer"] / 2)
    ddp = planned(capsys, recipe, "--processes", "2")["memory_per_device"]
    assert ddp["gradients"] == 2 * one["gradients"]  # DDP's reducer buckets


def test_an_accelerate_config_gives_processes_and_parallelism(tmp_path, capsys):
    plan = planned(capsys, small_recipe(tmp_path), "--accelerate_config", str(REPO / "recipes/accelerate/fsdp.yaml"))
    assert (plan["processes"], plan["parallelism"]) == (8, "fsdp full_shard")
    plan = planned(capsys, small_recipe(tmp_path), "--accelerate_config",
                   str(REPO / "recipes/accelerate/deepspeed-zero2.yaml"), "--processes", "4")
    assert (plan["processes"], plan["parallelism"]) == (4, "deepspeed zero-2")


def test_gradient_checkpointing_lowers_activations(tmp_path, capsys):
    recipe = small_recipe(tmp_path, n_layer=6)
    plain = planned(capsys, recipe)["memory_per_device"]["activations"]
    checkpointed = planned(capsys, recipe, "--gradient_checkpointing", "true")["memory_per_device"]["activations"]
    assert checkpointed < plain


def test_muon_keeps_one_state_for_hidden_matrices(tmp_path, capsys):
    from hf_clm.training.optimizer import hidden_matrix_names
    from hf_clm.planning.memory import meta_model, model_config
    from hf_clm.recipe.parser import parse_recipe

    recipe = small_recipe(tmp_path)
    plan = planned(capsys, recipe, "--optim", "muon")
    lm = meta_model(parsed := parse_recipe([recipe], command="plan"), model_config(parsed)[0])
    hidden = sum(p.numel() for n, p in lm.named_parameters() if n in set(hidden_matrix_names(lm)))
    assert plan["memory_per_device"]["optimizer"] == 4 * (2 * plan["parameters"] - hidden)


def test_parameters_equal_the_real_gpt2_model(tmp_path, capsys):
    from hf_clm.model.build import build_model
    from hf_clm.recipe.parser import parse_recipe
    from hf_clm.data.tokenizer import read_tokenizer

    tokenizer_dir = tmp_path / "tok"
    read_tokenizer(REPO.parent / "shared" / "data" / "tiny-gpt2").save_pretrained(tokenizer_dir) \
        if (SHARED_DATA / "tiny-gpt2").is_dir() else pytest.skip("tiny-gpt2 not in shared data")
    recipe = small_recipe(tmp_path, train_tokenizer=False, tokenizer_name_or_path=str(tokenizer_dir), n_layer=3,
                          n_embd=48, n_head=4, block_size=64)
    plan = planned(capsys, recipe)
    parsed = parse_recipe([recipe], command="plan")
    real = build_model(parsed.model_args, read_tokenizer(tokenizer_dir), 64)
    assert plan["parameters"] == real.num_parameters()
    assert plan["memory_per_device"]["weights"] == 4 * real.num_parameters()
    from hf_clm.training.throughput import flops_per_token
    assert plan["flops_per_token"] == flops_per_token(real, 64)


def test_parameters_equal_a_tiny_llama_from_its_config_folder(tmp_path, capsys):
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.save_pretrained(tmp_path / "llama")
    recipe = small_recipe(tmp_path, train_tokenizer=False, model_name_or_path=str(tmp_path / "llama"))
    plan = planned(capsys, recipe)
    assert plan["parameters"] == AutoModelForCausalLM.from_config(config).num_parameters()
    assert plan["model"] == f"the config of {tmp_path / 'llama'}"


@requires_shared_data
def test_lora_trains_only_the_adapter(tmp_path, capsys):
    from hf_clm.model.build import with_lora_adapter
    from hf_clm.recipe.parser import parse_recipe

    recipe = str(REPO / "recipes" / "lora-tiny-gpt2.yaml")
    plan = planned(capsys, recipe, "--output_dir", str(tmp_path / "out"))
    parsed = parse_recipe([recipe, "--output_dir", str(tmp_path / "out")])
    real = with_lora_adapter(AutoModelForCausalLM.from_pretrained(parsed.model_args.model_name_or_path),
                             parsed.model_args)
    trainable, total = real.get_nb_trainable_parameters()
    assert (plan["trainable_parameters"], plan["parameters"]) == (trainable, total)
    memory = plan["memory_per_device"]
    assert memory["optimizer"] == 8 * trainable and memory["gradients"] == 4 * trainable
    assert memory["weights"] == 4 * total  # the frozen base and the adapter, fp32
    assert plan["checkpoint_bytes"] < 4 * trainable + 8 * trainable + 64 * 1024  # the adapter only


def test_json_round_trip_and_table(tmp_path, capsys):
    recipe = small_recipe(tmp_path)
    plan = planned(capsys, recipe, "--gpu", "L4")
    assert set(plan["memory_per_device"]) == {"weights", "compute_copy", "gradients", "optimizer", "activations",
                                              "total"}
    assert json.loads(json.dumps(plan)) == plan
    assert plan["fits"] is True and plan["device"]["name"] == "L4" and plan["seconds_to_finish"] > 0
    assert main(["plan", recipe, "--gpu", "L4"]) == 0
    table = capsys.readouterr().out
    assert "memory per device" in table and "L4" in table and "fits" in table


def flagship(capsys, gpu: str) -> tuple[int, dict, str]:
    code = main(["plan", FLAGSHIP, "--vocab_size", "50257", "--processes", "8", "--gpu", gpu, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_the_flagship_fits_8_h100_and_not_8_a100_40gb(capsys):
    code, h100, _ = flagship(capsys, "H100")
    assert code == 0 and h100["fits"] and h100["parameters"] == 124_439_808
    assert h100["tokens_per_step"] == 524_288 and h100["tokens_total"] == 524_288 * 19_073
    code, a100, err = flagship(capsys, "A100-40GB")
    assert code == 2 and a100["fits"] is False
    assert "does not fit A100 40GB" in err and "--gradient_checkpointing true" in err
    for name, plan in (("8x H100", h100), ("8x A100-40GB", a100)):
        memory = {k: round(v / 2**30, 2) for k, v in plan["memory_per_device"].items()}
        print(name, memory, f"checkpoint {plan['checkpoint_bytes'] / 2**30:.2f} GiB",
              f"{plan['seconds_to_finish'] / 3600:.2f} h")


def test_more_processes_warn_that_the_recipes_global_batch_changes(tmp_path, caplog, capsys):
    with caplog.at_level("WARNING", logger="hf_clm"):
        planned(capsys, small_recipe(tmp_path, gradient_accumulation_steps=2), "--processes", "4")
    assert [r.getMessage() for r in caplog.records] == [
        "over 4 processes the global batch is 32 blocks = 1,024 tokens per step (4 per_device_train_batch_size x 2 "
        "gradient_accumulation_steps x 4 processes), 4x the recipe's 8 on one process: its learning rate and steps "
        "were set for that batch; to keep 8, divide per_device_train_batch_size or "
        "gradient_accumulation_steps by 4"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_clm"):
        planned(capsys, small_recipe(tmp_path))
    assert not caplog.records
