"""hf-clm plan: the arithmetic on small shapes, parameters against the real models, the flagship recipe."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA, requires_shared_data, subprocess_env
from transformers import AutoModelForCausalLM, LlamaConfig

from hf_clm.commands.cli import main

REPO = Path(__file__).resolve().parents[2]
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
    from hf_clm.planning.meta import meta_model, model_config
    from hf_clm.recipe.parser import parse_recipe
    from hf_clm.training.optimizer import hidden_matrix_names

    recipe = small_recipe(tmp_path)
    plan = planned(capsys, recipe, "--optim", "muon")
    lm = meta_model(parsed := parse_recipe([recipe], command="plan"), model_config(parsed)[0])
    hidden = sum(p.numel() for n, p in lm.named_parameters() if n in set(hidden_matrix_names(lm)))
    assert plan["memory_per_device"]["optimizer"] == 4 * (2 * plan["parameters"] - hidden)


def test_parameters_equal_the_real_gpt2_model(tmp_path, capsys):
    from hf_clm.data.tokenizer import read_tokenizer
    from hf_clm.model.build import build_model
    from hf_clm.recipe.parser import parse_recipe

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


SHAPES = {  # n_layer, n_head, n_embd, block_size, n_positions, dropout
    "one layer": (1, 2, 16, 16, None, 0.0), "dropout": (3, 4, 48, 64, None, 0.1),
    "positions beyond the block": (2, 2, 32, 32, 128, 0.0), "eight heads": (4, 8, 64, 128, 256, 0.2),
    "positions short of the block": (2, 2, 32, 64, 32, 0.0),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_plan_sizes_the_model_train_builds(shape, tmp_path, capsys, bpe_tokenizer):
    """One config builder: the plan's parameters are the built model's, and a shape the builder refuses
    is refused by both with the same line."""
    from hf_clm.errors import HfClmError
    from hf_clm.model.build import build_model
    from hf_clm.recipe.parser import parse_recipe

    bpe_tokenizer.save_pretrained(tmp_path / "tok")
    layers, heads, width, block, positions, dropout = SHAPES[shape]
    recipe = small_recipe(tmp_path, train_tokenizer=False, tokenizer_name_or_path=str(tmp_path / "tok"),
                          n_layer=layers, n_head=heads, n_embd=width, block_size=block, n_positions=positions,
                          dropout=dropout)
    parsed = parse_recipe([recipe], command="plan")
    try:
        built = build_model(parsed.model_args, bpe_tokenizer, block)
    except HfClmError as refused:
        assert main(["plan", recipe]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"hf-clm: error: {refused}"
        return
    assert shape != "positions short of the block"
    plan = planned(capsys, recipe)
    assert plan["parameters"] == built.num_parameters()
    assert f"vocabulary {len(bpe_tokenizer):,} (the tokenizer" in plan["model"]


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


def test_a_tokenizer_not_on_this_machine_is_sized_from_the_known_hub_vocabularies(capsys):
    plan = planned(capsys, FLAGSHIP, "--processes", "8")
    assert plan["parameters"] == 124_439_808  # GPT-2 small's, from gpt2's 50,257 tokens
    assert "the Hub tokenizer gpt2" in plan["model"] and "--vocab_size N gives another" in plan["model"]
    given = planned(capsys, FLAGSHIP, "--processes", "8", "--vocab_size", "50304")
    assert given["parameters"] == 124_439_808 + 47 * 768 and "--vocab_size N" not in given["model"]


TIMED_PLAN = """
import sys, time
from hf_clm.commands.cli import main
import hf_clm.commands.plan, hf_clm.planning.plan, hf_clm.recipe.parser  # the imports, not timed
started = time.monotonic()
code = main(sys.argv[1:])
print(f"plan took {time.monotonic() - started:.1f} s", file=sys.stderr)
sys.exit(code)
"""


def test_plan_resolves_the_tokenizer_offline_in_seconds_without_retries(tmp_path):
    """A real process with the Hub unreachable and HF_HUB_OFFLINE unset: plan reads only local files,
    so it neither waits for the Hub (huggingface_hub's five retries sleep 23 s a file) nor prints
    their warnings."""
    result = subprocess.run([sys.executable, "-c", TIMED_PLAN, "plan", FLAGSHIP, "--gpu", "A100 80GB", "--processes",
                             "4"], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env=subprocess_env({"HF_HUB_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9",
                                                "HF_HOME": str(tmp_path)}))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "124,439,808" in result.stdout and "Retry" not in result.stderr and "thrown while" not in result.stderr
    seconds = float(re.search(r"plan took ([\d.]+) s", result.stderr).group(1))
    assert seconds < 20, seconds
    assert "--processes 4 changes the recipe's global batch: 64 blocks x 4 processes = 256 blocks" in result.stderr


def test_processes_that_change_the_accelerate_configs_global_batch_are_named(tmp_path, caplog):
    from hf_clm.commands.cli import main as cli_main

    config = str(REPO / "recipes/accelerate/fsdp.yaml")  # 8 processes
    assert cli_main(["plan", small_recipe(tmp_path), "--accelerate_config", config, "--processes", "4"]) == 0
    assert ("--processes 4 changes the recipe's global batch: 4 blocks x 4 processes = 16 blocks (512 tokens) per "
            "step, where 8 processes give 32; --gradient_accumulation_steps 2 keeps the recipe's") in caplog.text
    caplog.clear()
    assert cli_main(["plan", small_recipe(tmp_path), "--accelerate_config", config, "--processes", "8"]) == 0
    assert "global batch" not in caplog.text


@pytest.mark.parametrize("recipe", ["shakespeare-baby.yaml", "default.yaml"])
def test_a_time_budget_is_planned_as_the_budget_with_estimated_steps(recipe, capsys):
    path = str(REPO / "recipes" / recipe)
    budget = planned(capsys, path)
    assert budget["seconds_to_finish"] == budget["time_budget_seconds"] > 0 and budget["steps"] is None
    on_l4 = planned(capsys, path, "--gpu", "L4")
    tokens_per_second = 0.4 * 121e12 / on_l4["flops_per_token"]
    assert on_l4["seconds_to_finish"] == budget["time_budget_seconds"] and on_l4["steps_estimated"]
    assert on_l4["steps"] == int(budget["time_budget_seconds"] * tokens_per_second // on_l4["tokens_per_step"])
    assert on_l4["tokens_total"] == on_l4["steps"] * on_l4["tokens_per_step"]
    assert main(["plan", path, "--gpu", "L4"]) == 0
    table = capsys.readouterr().out
    assert f"~{on_l4['steps']:,} steps" in table and "(estimates: the" in table
    assert re.search(r"^time to finish\s+1\.0 min \(the max_train_seconds budget\)$", table, re.MULTILINE) \
        if recipe == "shakespeare-baby.yaml" else "5.0 min (the max_train_seconds budget)" in table


def test_a_16_bit_checkpoint_keeps_16_bit_activations(tmp_path, capsys):
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.save_pretrained(tmp_path / "fp32")
    config.dtype = "bfloat16"
    config.save_pretrained(tmp_path / "bf16")
    recipe = small_recipe(tmp_path, train_tokenizer=False, model_name_or_path=str(tmp_path / "bf16"))
    bf16 = planned(capsys, recipe)["memory_per_device"]
    fp32_mixed = planned(capsys, recipe, "--model_name_or_path", str(tmp_path / "fp32"), "--bf16", "true")
    fp32 = planned(capsys, recipe, "--model_name_or_path", str(tmp_path / "fp32"))["memory_per_device"]
    assert bf16["activations"] == fp32_mixed["memory_per_device"]["activations"] < fp32["activations"]
    assert bf16["weights"] == fp32["weights"] // 2


def test_a_flash_attention_kernel_is_planned_without_its_package(tmp_path, capsys):
    sdpa = planned(capsys, small_recipe(tmp_path))
    flash = planned(capsys, small_recipe(tmp_path), "--attn_implementation", "flash_attention_2")
    assert flash["memory_per_device"] == sdpa["memory_per_device"] and flash["parameters"] == sdpa["parameters"]


def test_the_flagship_comment_gives_the_time_plan_gives(capsys):
    """The recipe's comment quotes plan ('N min on K x GPU'); each figure is what plan prints for it."""
    from hf_clm.planning.plan import duration

    header = "".join(line for line in Path(FLAGSHIP).read_text().splitlines(keepends=True) if line.startswith("#"))
    quoted = re.findall(r"([\d.]+ (?:min|h)) on (\d+) x ([A-Z][\w ]*?\d+\w*)(?= at| \(|,|;|\.)", header)
    assert len(quoted) >= 2, header
    for figure, processes, gpu in quoted:
        code = main(["plan", FLAGSHIP, "--processes", processes, "--gpu", gpu, "--json"])
        plan = json.loads(capsys.readouterr().out)
        assert code == 0 and duration(plan["seconds_to_finish"]) == figure, (figure, processes, gpu)


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
    assert "does not fit A100 40GB" in err and "--per_device_train_batch_size 32" in err
    for name, plan in (("8x H100", h100), ("8x A100-40GB", a100)):
        memory = {k: round(v / 2**30, 2) for k, v in plan["memory_per_device"].items()}
        print(name, memory, f"checkpoint {plan['checkpoint_bytes'] / 2**30:.2f} GiB",
              f"{plan['seconds_to_finish'] / 3600:.2f} h")


def test_more_processes_warn_that_the_recipes_global_batch_changes(tmp_path, caplog, capsys):
    with caplog.at_level("WARNING", logger="hf_clm"):
        planned(capsys, small_recipe(tmp_path, gradient_accumulation_steps=2), "--processes", "4")
    assert [r.getMessage().split(" per ")[0] for r in caplog.records] == [
        "plan: --processes 4 changes the recipe's global batch: 8 blocks x 4 processes = 32 blocks (1,024 tokens)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_clm"):
        planned(capsys, small_recipe(tmp_path))
    assert not caplog.records
