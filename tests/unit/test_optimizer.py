"""optim: muon (Muon for hidden matrices, AdamW for the rest), warmup_stable_decay and max_tokens,
through real Trainer runs that resume from a checkpoint."""

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, TrainingArguments

from hf_clm.recipe.parser import parse_recipe
from hf_clm.recipe.schema import save_recipe
from hf_clm.training.optimizer import muon_parameter_groups


def names_of(model, groups) -> set[str]:
    ids = {id(p) for group in groups for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_muon_takes_the_hidden_matrices_and_adamw_embeddings_head_biases_and_norms(family, tmp_path):
    if family == "gpt2":
        config = GPT2Config(vocab_size=50, n_positions=16, n_layer=2, n_head=2, n_embd=16)
        hidden = {f"transformer.h.{i}.{m}.weight" for i in range(2)
                  for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
        decayed = {"transformer.wte.weight", "transformer.wpe.weight"}  # the head is tied to wte
    else:
        config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
        hidden = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
        decayed = {"model.embed_tokens.weight", "lm_head.weight"}
    model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, report_to="none")
    adamw, muon = muon_parameter_groups(model, args, muon_learning_rate=0.02)

    assert names_of(model, muon) == hidden
    assert muon[0]["lr"] == 0.02 and muon[0]["weight_decay"] == 0.1
    assert names_of(model, adamw[:1]) == decayed and adamw[0]["weight_decay"] == 0.1
    no_decay = names_of(model, adamw[1:])
    assert adamw[1]["weight_decay"] == 0.0 and no_decay and all(p.ndim == 1 for n, p in model.named_parameters()
                                                                    if n in no_decay)
    every = [n for n, _ in model.named_parameters()]
    assert sorted(hidden | decayed | no_decay) == sorted(every)  # each parameter in exactly one group


def test_max_tokens_gives_the_steps_of_the_global_batch_and_is_what_the_recipe_records(tmp_path):
    argv = ["--builtin_corpus", "python-stdlib", "--train_tokenizer", "true", "--block_size", "64",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "3", "--max_tokens", "100000",
            "--lr_scheduler_type", "warmup_stable_decay", "--lr_scheduler_kwargs", '{"decay_ratio": 0.25}',
            "--output_dir", str(tmp_path)]
    recipe = parse_recipe(argv)
    assert recipe.training_args.max_steps == 66  # ceil(100,000 / (8 x 3 x 1 process x 64))
    assert recipe.training_args.lr_scheduler_kwargs == {"num_decay_steps": 16}  # round(0.25 x 66)
    written = yaml.safe_load(save_recipe(recipe, tmp_path).read_text())
    assert written["max_tokens"] == 100000 and "max_steps" not in written
    again = parse_recipe([str(tmp_path / "recipe.yaml")])
    assert again.training_args.max_steps == 66 and again.training_args.lr_scheduler_kwargs == {"num_decay_steps": 16}


def test_a_decay_ratio_written_in_yaml_stays_a_ratio_in_the_recorded_recipe(tmp_path):
    path = tmp_path / "wsd.yaml"
    path.write_text("builtin_corpus: python-stdlib\ntrain_tokenizer: true\nmax_steps: 10\n"
                    "lr_scheduler_type: warmup_stable_decay\nlr_scheduler_kwargs: {decay_ratio: 0.5}\n")
    recipe = parse_recipe([str(path), "--output_dir", str(tmp_path / "run")])
    assert recipe.training_args.lr_scheduler_kwargs == {"num_decay_steps": 5}
    written = yaml.safe_load(save_recipe(recipe, tmp_path / "run").read_text())
    assert written["lr_scheduler_kwargs"] == {"decay_ratio": 0.5}


def test_stacked_muon_makes_torchs_muon_updates_exactly():
    """The batched Newton-Schulz iteration over same-shaped matrices gives torch.optim.Muon's updates,
    tall and wide matrices, momentum and weight decay over several steps, and the same state."""
    from hf_clm.training.optimizer import StackedMuon

    torch.manual_seed(0)
    shapes = [(16, 48), (16, 16), (64, 16), (16, 48), (64, 16)]
    reference = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]
    stacked = [torch.nn.Parameter(p.detach().clone()) for p in reference]
    start = [p.detach().clone() for p in reference]
    kwargs = {"lr": 6e-3, "weight_decay": 0.1, "adjust_lr_fn": "match_rms_adamw"}
    optimizers = torch.optim.Muon(reference, **kwargs), StackedMuon(stacked, **kwargs)
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for params in (reference, stacked):
            for p, g in zip(params, grads):
                p.grad = g.clone()
        for optimizer in optimizers:
            optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(reference, stacked))
    assert not any(torch.equal(p, q) for p, q in zip(start, stacked))  # the steps moved every matrix
    assert optimizers[1].state_dict()["state"][0].keys() == optimizers[0].state_dict()["state"][0].keys()
