"""Every mistake a user can make in a recipe, a flag or a data file: one line `hf-clm: error: ...`
naming the key, the value and what is allowed, exit 2, before any data work, nothing written."""

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import make_documents
from transformers import AutoModelForCausalLM, GPT2Config

from hf_clm.commands.cli import main

RECIPE = {"sample_by": "paragraph", "train_tokenizer": True, "vocab_size": 300, "block_size": 16, "n_layer": 1,
          "n_head": 2, "n_embd": 16, "max_steps": 2, "per_device_train_batch_size": 2}


def write_recipe(tmp_path, name: str, text: str | bytes) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def recipe_with(tmp_path, corpus, name: str, **changes) -> str:
    values = {"train_files": str(corpus), **RECIPE, "output_dir": str(tmp_path / "out"), **changes}
    return write_recipe(tmp_path, name, yaml.safe_dump(values))


def jsonl(tmp_path, name: str, rows, encoding="utf-8") -> str:
    path = tmp_path / name
    path.write_bytes("".join(json.dumps({"text": row}, ensure_ascii=False) + "\n" for row in rows).encode(encoding))
    return str(path)


def bad_inputs(tmp_path):
    """name -> (argv, the whole expected error line after 'hf-clm: error: ', or a fragment of it)."""
    corpus = tmp_path / "ok.txt"
    corpus.write_text("\n\n".join(make_documents(60)))
    one_file = tmp_path / "one.txt"
    one_file.write_text(" ".join(make_documents(3)))
    base = recipe_with(tmp_path, corpus, "base")
    docs = make_documents(30)
    binary = tmp_path / "binary.parquet"
    pq.write_table(pa.table({"text": pa.array([d.encode() for d in docs], pa.binary())}), binary)
    checkpoint = tmp_path / "pretrained"
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=500, n_positions=32, n_layer=1, n_head=2,
                                                n_embd=16)).save_pretrained(checkpoint)
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder")
    dangling = tmp_path / "dangling-output"
    dangling.symlink_to(tmp_path / "nowhere")
    foreign = tmp_path / "mine"
    (foreign / "checkpoint-abc").mkdir(parents=True)
    (foreign / "checkpoint-abc" / "mine.txt").write_text("keep me")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(checkpoint),
                                                             "peft_type": "LORA"}))
    config_only = tmp_path / "config-only"
    GPT2Config(vocab_size=500, n_positions=32, n_layer=1, n_head=2, n_embd=16).save_pretrained(config_only)
    hidden_only = tmp_path / "hidden-only"
    hidden_only.mkdir()
    (hidden_only / ".notes").write_text("a hidden file is not a document")
    rehearsal_folder = tmp_path / "out-rehearsal"
    rehearsal_folder.mkdir()
    (rehearsal_folder / "rehearsal.json").write_text('{"steps": 2, "finished": false}\n')
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    flags = ["--train_files", str(corpus), "--sample_by", "paragraph", "--train_tokenizer", "true",
             "--vocab_size", "300", "--output_dir", str(tmp_path / "out")]

    def yaml_case(name, expected, **changes):
        return (["train", recipe_with(tmp_path, corpus, name, **changes)], f"{name}.yaml: {expected}")

    cases = {
        # wrong YAML types
        "float block_size": yaml_case("bs", "block_size must be an integer, not 64.0", block_size=64.0),
        "float max_steps": yaml_case("ms", "max_steps must be an integer, not 2.0", max_steps=2.0),
        "fractional vocab_size": yaml_case("vs", "vocab_size must be an integer, not 512.5", vocab_size=512.5),
        "float n_layer": yaml_case("nl", "n_layer must be an integer, not 1.0", n_layer=1.0),
        "float batch size": yaml_case("pb", "per_device_train_batch_size must be an integer, not 4.0",
                                      per_device_train_batch_size=4.0),
        "list block_size": yaml_case("lb", "block_size must be an integer, not [32]", block_size=[32]),
        "number train_files": yaml_case("tf", "train_files must be text or a list of text or null, not 42",
                                        train_files=42),
        "fractional peft r": (["train", write_recipe(tmp_path, "r", "train_files: x.txt\nmodel_name_or_path: gpt2\n"
                                                                    "peft: {method: lora, r: 4.5}\n")],
                              "r.yaml: peft r must be an integer, not 4.5"),
        "empty block_size": (["train", write_recipe(tmp_path, "empty", f"train_files: {corpus}\nblock_size:\n")],
                             "empty.yaml: block_size has no value; give an integer or remove the line"),
        "duplicate key": (["train", write_recipe(tmp_path, "dup", f"train_files: {corpus}\nblock_size: 32\n"
                                                                  "train_tokenizer: true\nblock_size: 64\n")],
                          "dup.yaml: key 'block_size' appears twice (lines 2 and 4); keep one"),
        "yaml not utf-8": (["train", write_recipe(tmp_path, "latin", "output_dir: caf\xe9\n".encode("latin-1"))],
                           "error: recipe " + str(tmp_path / "latin.yaml") + " is not UTF-8 text (byte 15, 0xe9); "
                           "save it as UTF-8"),
        "not a strategy": yaml_case("ev", "eval_strategy must be one of no, steps, epoch, not 'often'",
                                    eval_strategy="often"),
        # ranges, in YAML and as flags
        "batch size 0": (["train", recipe_with(tmp_path, corpus, "b0", per_device_train_batch_size=0)],
                         "per_device_train_batch_size must be an integer >= 1, not 0"),
        "batch size -1": (["train", *flags, "--per_device_train_batch_size", "-1"],
                          "per_device_train_batch_size must be an integer >= 1, not -1"),
        "accumulation 0": (["train", *flags, "--gradient_accumulation_steps", "0"],
                           "gradient_accumulation_steps must be an integer >= 1, not 0"),
        "learning rate -1": (["train", *flags, "--learning_rate", "-1"], "learning_rate must be a number > 0, not -1.0"),
        "learning rate nan": (["train", *flags, "--learning_rate", "nan"], "learning_rate must be a number > 0, not nan"),
        "n_head 0": (["train", *flags, "--n_head", "0"], "n_head must be an integer >= 1, not 0"),
        "dropout 2": (["train", *flags, "--dropout", "2"], "dropout must be a number in [0, 1), not 2.0"),
        "workers -1": (["train", *flags, "--preprocessing_num_workers", "-1"],
                       "preprocessing_num_workers must be an integer >= 1, not -1"),
        "dataloader workers -1": (["train", *flags, "--dataloader_num_workers", "-1"],
                                  "dataloader_num_workers must be an integer >= 0, not -1"),
        "float flag": (["train", *flags, "--block_size", "4.0"], "block_size must be an integer, not '4.0'"),
        "bool flag": (["train", *flags, "--streaming", "maybe"], "streaming must be true or false, not 'maybe'"),
        "choice flag": (["train", *flags, "--eval-strategy", "often"],
                        "eval_strategy must be one of no, steps, epoch, not 'often'"),
        "max_steps 0": (["train", *flags, "--max_steps", "0"],
                        "max_steps must be an integer >= 1, or -1 to train num_train_epochs, not 0"),
        "num_train_epochs 0": (["train", *flags, "--num_train_epochs", "0"], "num_train_epochs must be a number > 0"),
        "validation percentage 0": (["train", *flags, "--validation_split_percentage", "0"],
                                    "validation_split_percentage must be an integer from 1 to 99"),
        "perplexity batch 0": (["perplexity", str(checkpoint), "--data", str(corpus), "--batch_size", "0"],
                               "--batch_size must be at least 1, not 0"),
        # recipes that cannot mean what they say
        "pretrained model with a new tokenizer": (["train", *flags, "--model_name_or_path", str(checkpoint),
                                                   "--train_tokenizer", "true"],
                                                  "a pretrained model only works with the tokenizer it was trained with"),
        "two corpus sources in one recipe": (["train", write_recipe(tmp_path, "two", f"train_files: {corpus}\n"
                                                                                    "builtin_corpus: python-stdlib\n"
                                                                                    "train_tokenizer: true\n")],
                                             "got train_files, builtin_corpus; unset one with --KEY none"),
        "dash spelling skips the default recipe": (["train", "--train-files", str(tmp_path / "missing.txt"),
                                                    "--train-tokenizer", "true"],
                                                   f"train_files: '{tmp_path / 'missing.txt'}' does not exist"),
        "stray argument": (["train", *flags, "extra"],
                           "unexpected argument 'extra'; the recipe file must end in .yaml or .yml"),
        # data files
        "null text column": (["train", base, "--train_files", jsonl(tmp_path, "null.jsonl", [None] * 30)],
                             "text_column 'text' of the train split holds only nulls, no text"),
        "numeric text column": (["train", base, "--train_files", jsonl(tmp_path, "num.jsonl", range(30))],
                                "text_column 'text' of the train split holds int64 values, not text"),
        "list text column": (["train", base, "--train_files", jsonl(tmp_path, "list.jsonl", [[d] for d in docs])],
                             "text_column 'text' of the train split holds lists, not text"),
        "binary text column": (["train", base, "--train_files", str(binary)],
                               "holds bytes, not text (store the text as UTF-8 strings)"),
        "latin-1 jsonl": (["train", base, "--train_files",
                           jsonl(tmp_path, "latin.jsonl", ["caf\xe9 " + d for d in docs], "latin-1")],
                          "latin.jsonl: byte 13 (0xe9) is not valid UTF-8"),
        "one file, one document": (["train", base, "--train_files", str(one_file), "--sample_by", "document"],
                                   "for .txt files, sample_by: paragraph (or line) makes each file several documents"),
        # the Hub, offline (HF_HUB_OFFLINE=1 in the tests)
        "offline hub dataset": (["train", base, "--dataset_name", "wikitext", "--dataset_config_name",
                                 "wikitext-2-raw-v1"],
                                "HF_HUB_OFFLINE=1 is set: only the local cache is read; give local files with "
                                "train_files"),
        "offline hub tokenizer": (["train", base, "--tokenizer_name_or_path", "gpt2"],
                                  "tokenizer_name_or_path 'gpt2' is not a local path and not in the local Hugging "
                                  "Face cache, and HF_HUB_OFFLINE=1 is set"),
        "offline hub model": (["train", base, "--model_name_or_path", "gpt2"],
                              "model_name_or_path 'gpt2' is not a local path and not in the local Hugging Face cache"),
        "every offline name at once": (["train", base, "--train_tokenizer", "false", "--model_name_or_path", "gpt2",
                                        "--tokenizer_name_or_path", "gpt2-large"],
                                       "model_name_or_path 'gpt2' is not a local path and not in the local Hugging "
                                       "Face cache, and HF_HUB_OFFLINE=1 is set: only the local cache is read; unset "
                                       "HF_HUB_OFFLINE to download it, or give a local checkpoint folder "
                                       "(model_name_or_path: PATH); "
                                       "tokenizer_name_or_path 'gpt2-large' is not a local path"),
        "model path that does not exist": (["train", base, "--model_name_or_path", str(tmp_path / "no-model")],
                                           f"model_name_or_path '{tmp_path / 'no-model'}' does not exist"),
        "tokenizer path that does not exist": (["train", base, "--tokenizer_name_or_path", str(tmp_path / "no-tok"),
                                                "--train_tokenizer", "false"],
                                               f"tokenizer_name_or_path '{tmp_path / 'no-tok'}' does not exist"),
        # out of the libraries' ranges
        "block size past int32": (["train", recipe_with(tmp_path, corpus, "huge", block_size=2147483648)],
                                  "block_size must be an integer from 2 (one input and one target) to 1,048,576, "
                                  "not 2147483648"),
        "seed -1": (["train", *flags, "--seed", "-1"], "seed must be an integer from 0 to 4,294,967,295"),
        "seed 2**40": (["train", *flags, "--seed", "1099511627776"], "seed must be an integer from 0 to 4,294,967,295"),
        # optional packages that are not installed
        "flash attention not installed": (["train", *flags, "--attn_implementation", "flash_attention_2"],
                                          "attn_implementation: flash_attention_2 needs the flash-attn package"),
        "deepspeed not installed": (["train", recipe_with(tmp_path, corpus, "ds", deepspeed="missing.json")],
                                    "needs the deepspeed package: pip install 'hf-clm[deepspeed]'"),
        "tracker not installed": (["train", *flags, "--report_to", "wandb"],
                                  "report_to: wandb needs the wandb package: pip install wandb"),
        # folders that cannot be written into
        "output_dir is a file": (["train", *flags, "--output_dir", str(a_file)],
                                 f"output_dir {a_file} is a file, not a folder; choose another folder"),
        "output_dir below a file": (["train", *flags, "--output_dir", str(a_file / "out")],
                                    f"cannot be created: {a_file} is a file"),
        "output_dir a broken link": (["train", *flags, "--output_dir", str(dangling)],
                                     "which does not exist; choose another folder"),
        "output_dir in /proc": (["train", *flags, "--output_dir", "/proc/self/hf_clm_out"], "cannot be written to"),
        "output_dir with a line break": (["train", *flags, "--output_dir", str(tmp_path / "out\nx")],
                                         "holds a line break; choose a folder name without one"),
        "output_dir empty": (["train", *flags, "--output_dir", ""], "output_dir is empty"),
        "prepared_dataset is a file": (["prepare", *flags, "--prepared_dataset", str(a_file)],
                                       f"prepared_dataset {a_file} is a file, not a folder"),
        # sharded preparation
        "shard past the last": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "sh"), "--shard", "2",
                                 "--num_shards", "2"], "--shard must be from 0 to 1 (--num_shards 2), not 2"),
        "shard negative": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "sh"), "--shard", "-1",
                            "--num_shards", "2"], "--shard must be from 0 to 1 (--num_shards 2), not -1"),
        "shard without a count": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "sh"), "--shard", "0"],
                                  "--shard and --num_shards go together"),
        "shard not a number": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "sh"), "--shard", "x",
                                "--num_shards", "2"], "argument --shard: invalid int value: 'x'"),
        "no shards": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "sh"), "--shard", "0",
                       "--num_shards", "0"], "--num_shards must be at least 1, not 0"),
        "tokenizer only of a shard": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "sh"), "--shard", "0",
                                       "--num_shards", "2", "--tokenizer_only"], "--tokenizer_only prepares no blocks"),
        "more shards than parts with documents": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "many"),
                                                   "--shard", "0", "--num_shards", "100000"],
                                                  "part 0 of 100000 of the corpus holds no training document"),
        # preparation as a pipeline
        "unknown executor": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "px"), "--executor", "k8s"],
                             "executor must be one of local, slurm, ray, not 'k8s'"),
        "no tasks": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "px"), "--tasks", "0"],
                     "tasks must be an integer >= 1, not 0"),
        "shard of a pipeline": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "px"), "--shard", "0",
                                 "--num_shards", "2", "--tasks", "2"], "--shard runs one part here, by hand"),
        "sbatch_args not JSON": (["prepare", *flags, "--prepared_dataset", str(tmp_path / "px"), "--sbatch_args",
                                  "account=lm"], "sbatch_args must be a JSON mapping on the command line"),
        "foreign checkpoint folder": (["train", *flags, "--output_dir", str(foreign)],
                                      "holds checkpoint-abc, which hf-clm did not write"),
        # a training-time budget
        "time budget 0": (["train", *flags, "--max_steps", "-1", "--max_train_seconds", "0"],
                          "max_train_seconds must be a number of seconds > 0, not 0.0"),
        "time budget nan": (["train", *flags, "--max_steps", "-1", "--max_train_seconds", "nan"],
                            "max_train_seconds must be a number of seconds > 0, not nan"),
        "time budget and max_steps": (["train", *flags, "--max_steps", "50", "--max_train_seconds", "60"],
                                      "set max_train_seconds or max_steps, not both"),
        "time budget and warm-up steps": (["train", *flags, "--max_steps", "-1", "--max_train_seconds", "60",
                                           "--warmup_steps", "50"], "warmup_steps is a fraction of the budget"),
        # a rehearsal (train --rehearse K)
        "rehearse 0": (["train", *flags, "--rehearse", "0"],
                       "rehearse must be an integer >= 1 (the optimizer steps to rehearse), not 0"),
        "rehearse -2": (["train", *flags, "--rehearse", "-2"],
                        "rehearse must be an integer >= 1 (the optimizer steps to rehearse), not -2"),
        "rehearse 1.5": (["train", *flags, "--rehearse", "1.5"], "rehearse must be an integer, not '1.5'"),
        "rehearse and push_to_hub": (["train", *flags, "--rehearse", "2", "--push_to_hub", "true"],
                                     ("--push_to_hub contradicts --rehearse: a rehearsal trains 2 steps into its own "
                                      "folder, resumes from its own checkpoint and finishes nothing (no merge, no "
                                      "push); drop it (a recipe file's values are left for the real run)")),
        "rehearse and max_steps": (["train", *flags, "--rehearse", "2", "--max_steps", "50", "--resume_from_checkpoint",
                                    "auto"], "--resume_from_checkpoint, --max_steps contradict --rehearse"),
        "rehearse a Hub corpus": (["train", str(Path(__file__).resolve().parents[2] / "recipes" /
                                                "gpt2-124m-fineweb.yaml"), "--rehearse", "2",
                                   "--output_dir", str(tmp_path / "out")],
                                  ("rehearse reads local text, and the recipe's corpus is dataset_name "
                                   "HuggingFaceFW/fineweb-edu (streamed from the Hub); pass --train_files FILE (and "
                                   "--validation_files FILE) with a local sample of it")),
        "rehearse above the run's own steps": (["train", recipe_with(tmp_path, corpus, "rh", max_steps=2),
                                                "--rehearse", "10"],
                                               "rehearse 10 is more steps than the run itself trains (max_steps 2)"),
        "rehearse 10^13": (["train", *flags, "--rehearse", "10000000000000"],
                           "rehearse must be at most 10,000 steps, not 10,000,000,000,000"),
        "a real run into a rehearsal's folder": (["train", *flags, "--output_dir", str(rehearsal_folder),
                                                  "--resume_from_checkpoint", "auto"],
                                                 "is a rehearsal's folder (rehearsal.json"),
        # trackers, spelt every way
        "report_to bogus": (["train", *flags, "--report_to", "bogus"],
                            "report_to must be none, all, or trackers among azure_ml"),
        "report_to [bogus]": (["train", *flags, "--report_to", "[tensorboard, bogus]"], "not 'bogus'"),
        # recipe files and flags that read as something else
        "a -- before the recipe": (["train", "--", base], "'--' is not a recipe key"),
        "a tab in the YAML": (["train", write_recipe(tmp_path, "tab", f"train_files: {corpus}\nblock_size:\t32\n")],
                              "line 2, column 12: found character '\\t' that cannot start any token (a tab"),
        "a YAML merge key": (["train", write_recipe(tmp_path, "merge", f"common: &c {{block_size: 32}}\n<<: *c\n"
                                                                      f"train_files: {corpus}\n")],
                             "merge.yaml: line 2: the merge key '<<' is not supported in a recipe"),
        "a 1 MB key": (["train", write_recipe(tmp_path, "long", "k" * 1_000_000 + ": 1\n")],
                       "a key of more than 1,024 characters"),
        "resume from a file": (["train", *flags, "--resume_from_checkpoint", str(a_file)],
                               f"resume_from_checkpoint {a_file} is a file, not a checkpoint folder"),
        # keys that do not apply, inputs that are not what they seem
        "muon key without muon": (["train", recipe_with(tmp_path, corpus, "mu", muon_learning_rate=0.02)],
                                  "muon_learning_rate applies to optim: muon only"),
        "lora key without peft": (["train", *flags, "--lora_r", "16"], "lora_r applies to peft: {method: lora} only"),
        "lora adapter as the model": (["train", base, "--model_name_or_path", str(adapter),
                                       "--train_tokenizer", "false"], "is a LoRA adapter (adapter_config.json)"),
        "tokenizer folder without a vocabulary": (["train", base, "--train_tokenizer", "false",
                                                   "--tokenizer_name_or_path", str(config_only)],
                                                  "has 1 token(s); a tokenizer needs at least 16"),
        "a folder of hidden files only": (["train", base, "--train_files", str(hidden_only)],
                                          "directory holds no visible file"),
        "a misspelt flag": (["train", base, "--blok_size", "32"],
                            "unknown recipe key 'blok_size' in the command line; did you mean 'block_size'?"),
        # what users of run_clm.py, axolotl, litgpt and nanoGPT type
        "axolotl base_model": (["train", base, "--base_model", "gpt2"],
                               "unknown recipe key 'base_model' in the command line; that is axolotl's key: here "
                               "model_name_or_path"),
        "nanoGPT keys in a recipe": (["train", write_recipe(tmp_path, "nano", f"train_files: {corpus}\n"
                                                                              "batch_size: 12\nmax_iters: 100\n")],
                                     "unknown recipe key 'batch_size' in " + str(tmp_path / "nano.yaml") + "; that is "
                                     "nanoGPT's key: here per_device_train_batch_size; unknown recipe key 'max_iters'"),
        "litgpt out_dir": (["train", base, "--out_dir", "x"], "that is litgpt's and nanoGPT's key: here output_dir"),
        "a nanoGPT config": (["train", str(tmp_path / "train_shakespeare_char.py")],
                             "recipes are YAML; nanoGPT-style Python configs are not read"),
        "a nanoGPT config after the flags": (["train", "--max_steps", "5", str(tmp_path / "config.py")],
                                             "config.py: recipes are YAML; nanoGPT-style Python configs are not read"),
        "a foreign model_type": (["train", base, "--model_type", "llama"],
                                 "model_type llama: from scratch hf-clm builds a GPT-2-style model only"),
        "train_file beside train_files": (["train", write_recipe(tmp_path, "alias", f"train_files: {corpus}\n"
                                                                                     f"train_file: {corpus}\n")],
                                          "alias.yaml gives both train_file and train_files; keep train_files"),
        "a relative path that is not here": (["train", base, "--train_files", "no/such.txt"],
                                             "train_files: 'no/such.txt' does not exist (a relative path is resolved "
                                             f"from the current directory, {os.getcwd()}: "
                                             f"{os.path.join(os.getcwd(), 'no', 'such.txt')})"),
        "max_steps none in a recipe": yaml_case("msn", "max_steps must be an integer, not 'none' (an integer >= 1, or "
                                                       "-1 to train num_train_epochs); remove the line for its default",
                                                max_steps="none"),
        "max_steps a word": (["train", *flags, "--max_steps", "lots"],
                             "max_steps must be an integer, not 'lots' (an integer >= 1, or -1 to train "
                             "num_train_epochs; '--max_steps none' gives its default)"),
        "a stream with nothing left to train on": (["train", base, "--train_files", str(one_file), "--sample_by",
                                                    "document", "--streaming", "true", "--max_steps", "3"],
                                                   "the streamed corpus has no training documents: without a "
                                                   "validation split a stream validates on its first documents "
                                                   "(max_eval_samples, by default 1,000), and these were all 1 of them"),
        "a pipe as a train file": (["train", base, "--train_files", str(fifo)], "is not a regular file"),
        # generation beyond the context
        "prompt fills the context": (["generate", str(checkpoint), " ".join(["word"] * 40)], "leaves no room"),
    }
    return cases


def lora_adapter(base, folder) -> str:
    """A LoRA adapter (untrained) on the checkpoint ``base``, saved as a LoRA run saves it."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    model.save_pretrained(folder)
    return str(folder)


def word_level_model(folder) -> str:
    """A model whose tokenizer reads whitespace as nothing: a blank text has no token at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "cat": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=3, n_positions=16, n_layer=1, n_head=1, n_embd=8,
                                                bos_token_id=1, eos_token_id=1)).save_pretrained(folder)
    return str(folder)


def command_bad_inputs(tmp_path):
    """The commands' flags and folders: name -> (argv, expected fragment of the error line). Uses the
    checkpoint and corpus bad_inputs writes (the checkpoint gets its tokenizer before the cases run)."""
    checkpoint, corpus = str(tmp_path / "pretrained"), str(tmp_path / "ok.txt")
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a folder\n")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    finished_run = tmp_path / "finished-run"
    finished_run.mkdir()
    (finished_run / "perplexity.json").write_text("{}\n")
    lora = lora_adapter(checkpoint, tmp_path / "lora-run")
    interrupted_merge = tmp_path / "lora-run" / "merged"  # a merge killed after its tokenizer_config.json
    interrupted_merge.mkdir()
    (interrupted_merge / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}\n')
    no_weights = tmp_path / "no-weights"
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_head=2, n_embd=16)).config.save_pretrained(no_weights)
    (no_weights / "tokenizer_config.json").write_text("{}\n")
    orphan_adapter = Path(lora_adapter(shutil.copytree(checkpoint, tmp_path / "gone-base"), tmp_path / "orphan"))
    word_level_model(tmp_path / "orphan-words")  # the adapter's own tokenizer, as a LoRA run saves it
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "orphan-words" / name, orphan_adapter)
    shutil.rmtree(tmp_path / "gone-base")  # the base model folder moved away after training
    one_byte = tmp_path / "one-byte.txt"
    one_byte.write_text("a")
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n  ")
    table = tmp_path / "table.json"
    table.write_text(json.dumps([{"text": "zz", "body": "the cat sat on the mat"}]))
    mixed = tmp_path / "mixed-dataset"
    mixed.mkdir()
    (mixed / "a.txt").write_text("the cat sat\n")
    (mixed / "b.jsonl").write_text('{"text": "a dog ran"}\n')
    perplexity = ["perplexity", checkpoint, "--data", corpus]
    generate = ["generate", checkpoint, "hello"]

    def output_cases(command, argv):
        return {
            f"{command} --output a file": ([*argv, "--output", str(a_file)],
                                           f"--output {a_file} is a file, not a folder; choose another folder"),
            f"{command} --output below a file": ([*argv, "--output", str(a_file / "sub")],
                                                 f"cannot be created: {a_file} is a file; choose another folder"),
            f"{command} --output a broken link": ([*argv, "--output", str(dangling)],
                                                  "is a symbolic link to"),
            f"{command} --output under /proc": ([*argv, "--output", "/proc/hf-clm-output"],
                                                "--output /proc/hf-clm-output cannot be written to"),
        }

    return {
        # output folders: refused before any model is loaded
        **output_cases("perplexity", perplexity),
        **output_cases("report", ["report", str(finished_run)]),
        **output_cases("merge", ["merge", lora]),
        "perplexity --output a run directory": ([*perplexity, "--output", str(finished_run)], "is a run directory"),
        "merge into the run itself": (["merge", lora, "--output", lora], "is the run directory itself"),
        "merge into a folder above the run": (["merge", lora, "--output", str(tmp_path)],
                                              "holds the run directory"),
        "merge over another model": (["merge", lora, "--output", checkpoint],
                                     "already holds files (config.json"),
        "a comparison report into one of its runs": (["report", str(finished_run), str(finished_run),
                                                      "--output", str(finished_run)], "is a run directory"),
        "a LoRA whose local base folder is gone": (["generate", str(orphan_adapter), "hello"],
                                                   f"the base model folder {tmp_path / 'gone-base'} named in "),
        # argparse's own errors, one line each
        "perplexity --limit 1.5": ([*perplexity, "--limit", "1.5"],
                                   "--limit must be an integer, not '1.5'; see 'hf-clm perplexity --help'"),
        "perplexity --sample_by sentence": ([*perplexity, "--sample_by", "sentence"],
                                            "--sample_by must be one of document, paragraph, line, not 'sentence'"),
        "report without a run": (["report"], "hf-clm report needs RUN_DIR; see 'hf-clm report --help'"),
        "an unknown flag": ([*generate, "--bogus", "1"], "hf-clm generate: unrecognized arguments: --bogus 1"),
        "an unknown command": (["bogus"], "COMMAND must be one of train, prepare"),
        # numeric flags, in the libraries' ranges
        "seed -1": ([*generate, "--seed", "-1"], "--seed must be an integer from 0 to 4,294,967,295, not -1"),
        "seed 2**40": ([*generate, "--seed", str(2 ** 40)],
                       f"--seed must be an integer from 0 to 4,294,967,295, not {2 ** 40}"),
        "temperature nan": ([*generate, "--temperature", "nan"], "--temperature must be a finite number >= 0"),
        "temperature inf": ([*generate, "--temperature", "inf"], "--temperature must be a finite number >= 0"),
        "temperature -1": ([*generate, "--temperature", "-1"], "--temperature must be a finite number >= 0"),
        "temperature 1e-300": ([*generate, "--temperature", "1e-300"], "--temperature must be 0 (greedy) or at least"),
        "top_p 0": ([*generate, "--top_p", "0"], "--top_p must be a number in (0, 1]"),
        "top_p nan": ([*generate, "--top_p", "nan"], "--top_p must be a number in (0, 1]"),
        "top_k -1": ([*generate, "--top_k", "-1"], "--top_k must be at least 0, not -1"),
        "max_new_tokens 0": ([*generate, "--max_new_tokens", "0"], "--max_new_tokens must be at least 1, not 0"),
        "window 1": ([*perplexity, "--window", "1"], "--window must be at least 2, not 1"),
        "explain top_k 0": (["explain", checkpoint, "the cat", "--top_k", "0"], "--top_k must be at least 1, not 0"),
        # nothing to score
        "a text of no tokens": (["perplexity", word_level_model(tmp_path / "words"), "--data", str(blank)],
                                "the text is too short to score: 0 tokens"),
        # a folder an interrupted merge left
        "an interrupted merge": (["perplexity", str(interrupted_merge), "--data", corpus],
                                 "is not a complete model: no config.json, no model weights (*.safetensors)"),
        "config without weights": (["generate", str(no_weights), "hello"], "no model weights (*.safetensors)"),
        # text sources: every flag given is used, or refused
        "text_column of a table": ([*perplexity[:2], "--data", str(table), "--text_column", "title"],
                                   "text_column 'title' is not a column of the evaluation split; its columns are: "
                                   + "text, body"),
        "text_column of text files": ([*perplexity, "--text_column", "body"],
                                      "--text_column body: --data gives text files"),
        "split and config without a dataset": ([*perplexity, "--split", "nosuchsplit", "--dataset_config_name", "zzz"],
                                               "--split and --dataset_config_name apply to --dataset_name only"),
        "text_column with a recipe": ([*perplexity[:2], "--recipe", str(tmp_path / "base.yaml"), "--text_column",
                                       "body"], "--text_column applies to --dataset_name and --data tables, not to --recipe"),
        "a dataset folder of mixed formats": ([*perplexity[:2], "--dataset_name", str(mixed), "--split", "train"],
                                              "its data files mix formats (json: b.jsonl; text: a.txt)"),
    }


def report_bad_inputs(tmp_path):
    """perplexity's --limit and --sample_by: refused where they do not apply. Uses the checkpoint,
    corpus, table and recipe the cases above write."""
    perplexity = ["perplexity", str(tmp_path / "pretrained")]
    dataset = tmp_path / "a-dataset"
    dataset.mkdir()
    (dataset / "test.jsonl").write_text('{"text": "the cat sat"}\n')
    return {
        "limit 0": ([*perplexity, "--data", str(tmp_path / "ok.txt"), "--limit", "0"],
                    "--limit must be at least 1, not 0"),
        "sample_by of a table": ([*perplexity, "--data", str(tmp_path / "table.json"), "--sample_by", "line"],
                                 "--sample_by line: --data gives json tables, one document per row"),
        "sample_by with a dataset": ([*perplexity, "--dataset_name", str(dataset), "--sample_by", "paragraph"],
                                     "--sample_by applies to --data text files, not to --dataset_name"),
        "sample_by with a recipe": ([*perplexity, "--recipe", str(tmp_path / "base.yaml"), "--sample_by", "line"],
                                    "--sample_by applies to --data text files, not to --recipe (the recipe"),
    }


def finished_fake_run(folder, recipe: dict) -> str:
    """``folder`` (a model or adapter already there) made a finished run: a tokenizer, the recipe and the
    finished-run marker, as training writes them."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from hf_clm.run.artifacts import write_finished_marker

    words = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "cat": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<eos>", unk_token="<unk>").save_pretrained(folder)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(folder)}))
    write_finished_marker({"perplexity": 3.0, "bits_per_byte": 1.0, "block_size": 16}, folder, step=2)
    return str(folder)


def publish_bad_inputs(tmp_path):
    """push and push_to_hub: what cannot be published, refused before any request. Uses the checkpoint
    and corpus bad_inputs writes."""
    checkpoint, corpus = tmp_path / "pretrained", str(tmp_path / "ok.txt")
    lora = finished_fake_run(Path(lora_adapter(checkpoint, tmp_path / "published-lora")),
                             {"model_name_or_path": str(checkpoint), "peft_method": "lora", "train_files": [corpus]})
    half_merged = shutil.copytree(lora, tmp_path / "half-merged")
    (half_merged / "merged").mkdir()
    GPT2Config(vocab_size=500, n_positions=32, n_layer=1, n_head=2, n_embd=16).save_pretrained(half_merged / "merged")
    AutoModelForCausalLM.from_pretrained(checkpoint).save_pretrained(tmp_path / "published-scratch")
    scratch = finished_fake_run(tmp_path / "published-scratch", {"train_files": [corpus]})
    push = ["--repo-id", "tester/x", "--license", "mit"]
    train = ["train", str(tmp_path / "base.yaml"), "--push_to_hub", "true", "--hub_model_id", "tester/x"]
    return {
        "push an adapter on a local base": (["push", lora, *push],
                                            "which nobody else can load: push its merged model (hf-clm merge"),
        "push an adapter on a local base, merged already": (["push", str(half_merged), *push],
                                                            "which nobody else can load: push its merged model "
                                                            f"(hf-clm push {half_merged} --merged) or name"),
        "push without a license": (["push", lora, "--repo-id", "tester/x", "--base_model", "tester/base"],
                                   "no license for the model card: pass --license SPDX-ID"),
        "push --merged without a merged model": (["push", lora, "--merged", *push], "has no merged model"),
        "push a half-written merged model": (["push", str(half_merged / "merged"), *push],
                                             "merged is not a complete model (tokenizer.json, *.safetensors missing)"),
        "push --merged of a whole model": (["push", scratch, "--merged", *push], "--merged applies to a LoRA run"),
        "push --base_model of a run from scratch": (["push", scratch, "--base_model", "tester/base", *push],
                                                    "the run was trained from scratch and has no base model"),
        "push --base_model that is no Hub id": (["push", lora, "--base_model", "not/a/hub id", *push],
                                                "--base_model not/a/hub id is not a Hub model id"),
        "push --license not a license": (["push", scratch, "--repo-id", "tester/x", "--license", "not a license",
                                          "--dry_run"], "license 'not a license' is not a license id the Hub accepts"),
        "push --license MIT": (["push", scratch, "--repo-id", "tester/x", "--license", "MIT", "--dry_run"],
                               "license 'MIT' is spelt 'mit' on the Hub (lowercase)"),
        "push --license with a newline": (["push", scratch, "--repo-id", "tester/x", "--license", "mit\nextra: 1",
                                           "--dry_run"], "is not a license id the Hub accepts"),
        "push --revision bad..branch": (["push", scratch, *push, "--revision", "bad..branch", "--dry_run"],
                                        "--revision 'bad..branch' is not a valid git branch name"),
        "push_to_hub without a license": (train, "push_to_hub publishes the model: set its license in the recipe"),
        "push_to_hub of an adapter on a local base": ([*train, "--license", "mit", "--model_name_or_path",
                                                       str(checkpoint), "--train_tokenizer", "false",
                                                       "--peft_method", "lora"],
                                                      "push_to_hub: a LoRA adapter on the local model"),
    }


def plan_configs(tmp_path) -> dict[str, str]:
    """DeepSpeed and accelerate configs plan cannot size, and a model of 8,192 positions (its config only)."""
    from transformers import LlamaConfig

    texts = {"ds-auto.json": json.dumps({"zero_optimization": {"stage": "auto"}}), "ds-list.json": "[1, 2]",
             "ds-bad.json": "{not json", "ds3.json": json.dumps({"zero_optimization": {"stage": 3}}),
             "acc-abc.yaml": "distributed_type: MULTI_GPU\nnum_processes: abc\n",
             "acc-minus.yaml": "distributed_type: MULTI_GPU\nnum_processes: -2\n",
             "acc-zero.yaml": "distributed_type: MULTI_GPU\nnum_processes: 0\n",
             "acc-fraction.yaml": "distributed_type: MULTI_GPU\nnum_processes: 2.7\n",
             "acc-fsdp-list.yaml": "distributed_type: FSDP\nnum_processes: 2\nfsdp_config: [1, 2]\n",
             "acc-stage-auto.yaml": "distributed_type: DEEPSPEED\nnum_processes: 2\ndeepspeed_config:\n  zero_stage: auto\n"}
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=8192).save_pretrained(tmp_path / "llama-8k")
    return {name: str(tmp_path / name) for name in [*texts, "llama-8k"]}


def plan_bad_inputs(tmp_path):
    """plan: a run that does not fit the named device (by how much, and the changes that make it fit),
    an unknown device, no processes, configs and devices it cannot size, a model it cannot read without
    the network, a block longer than the model's context. Uses the recipe bad_inputs writes."""
    flagship = str(Path(__file__).resolve().parents[2] / "recipes" / "gpt2-124m-fineweb.yaml")
    base = str(tmp_path / "base.yaml")
    files = plan_configs(tmp_path)
    stage = "must be 0, 1, 2 or 3, not 'auto' (plan sizes the ZeRO stage the run uses: give it)"
    processes = "num_processes must be an integer of at least 1, not"
    pretrained = ["--train_tokenizer", "false", "--vocab_size", "8192"]
    return {
        "plan that does not fit": (["plan", flagship, "--vocab_size", "50257", "--processes", "8", "--gpu",
                                    "A100-40GB"],
                                   "the run does not fit A100 40GB: 58.5 GiB per device, 22.5 GiB over the 36.0 GiB "
                                   "usable (90% of 40.0 GiB); it fits with: --per_device_train_batch_size 32 "
                                   "--gradient_accumulation_steps 2 (30.5 GiB)"),
        "plan on an unknown gpu": (["plan", base, "--gpu", "B300"],
                                   "unknown --gpu 'B300'; known: H200, H100 SXM"),
        "plan on an empty gpu": (["plan", base, "--gpu", ""], "unknown --gpu ''; known: H200, H100 SXM"),
        "plan on a gpu and its memory": (["plan", base, "--gpu", "H100", "--gpu_memory_gb", "0"],
                                         "give --gpu NAME or --gpu_memory_gb X --gpu_tflops Y, not both"),
        "plan on infinite memory": (["plan", base, "--gpu_memory_gb", "inf"],
                                    "--gpu_memory_gb must be a finite number > 0, not inf"),
        "plan at infinite speed": (["plan", base, "--gpu_memory_gb", "80", "--gpu_tflops", "inf"],
                                   "--gpu_tflops must be a finite number > 0, not inf"),
        "plan on an A100 of no size": (["plan", base, "--gpu", "A100"],
                                       "A100 comes in several sizes: name one of A100 40GB, A100 80GB"),
        "plan over 0 processes": (["plan", base, "--processes", "0"], "--processes must be at least 1, not 0"),
        "plan a ZeRO stage left auto": (["plan", base, "--deepspeed", files["ds-auto.json"]],
                                        f"ds-auto.json: zero_optimization.stage {stage}"),
        "plan a DeepSpeed list": (["plan", base, "--deepspeed", files["ds-list.json"]],
                                  "ds-list.json is a JSON list, not an object of DeepSpeed settings"),
        "plan a DeepSpeed file of bad JSON": (["plan", base, "--deepspeed", files["ds-bad.json"]],
                                              "ds-bad.json: Expecting property name enclosed in double quotes"),
        "plan inline DeepSpeed of bad JSON": (["plan", base, "--deepspeed", "{not json"],
                                              "deepspeed config inline JSON: Expecting property name"),
        "plan fsdp with deepspeed": (["plan", base, "--fsdp", "full_shard", "--deepspeed", files["ds3.json"]],
                                     "invalid recipe: set fsdp or deepspeed, not both"),
        "plan num_processes abc": (["plan", base, "--accelerate_config", files["acc-abc.yaml"]], f"{processes} 'abc'"),
        "plan num_processes -2": (["plan", base, "--accelerate_config", files["acc-minus.yaml"]], f"{processes} -2"),
        "plan num_processes 0": (["plan", base, "--accelerate_config", files["acc-zero.yaml"]], f"{processes} 0"),
        "plan num_processes 2.7": (["plan", base, "--accelerate_config", files["acc-fraction.yaml"]],
                                   f"{processes} 2.7"),
        "plan fsdp_config a list": (["plan", base, "--accelerate_config", files["acc-fsdp-list.yaml"]],
                                    "fsdp_config must be a mapping of fsdp settings, not [1, 2]"),
        "plan accelerate zero_stage auto": (["plan", base, "--accelerate_config", files["acc-stage-auto.yaml"]],
                                            f"acc-stage-auto.yaml: zero_stage {stage}"),
        "plan a block longer than the context": (["plan", base, *pretrained, "--model_name_or_path",
                                                  files["llama-8k"], "--block_size", "100000"],
                                                 "block_size 100000 is larger than the model's context of 8192 "
                                                 "tokens; lower block_size to at most 8192"),
        "plan an uncached Hub model": (["plan", base, *pretrained, "--model_name_or_path", "meta-llama/Llama-3.1-8B"],
                                       "model_name_or_path meta-llama/Llama-3.1-8B: its config.json is not in the "
                                       "local Hugging Face cache"),
        "plan an unknown uncached tokenizer": (["plan", base, "--train_tokenizer", "false",
                                                "--tokenizer_name_or_path", "tester/no-such-tokenizer"],
                                               "the tokenizer tester/no-such-tokenizer is not in the local Hugging "
                                               "Face cache and its size is not among the Hub tokenizers plan knows; "
                                               "give --vocab_size N"),
    }


def mixture_bad_inputs(tmp_path):
    """``mixture:`` sources and weights."""
    corpus = tmp_path / "mix-ok.txt"
    corpus.write_text("\n\n".join(make_documents(60)))
    empty = tmp_path / "mix-empty.txt"
    empty.write_text("")
    rows = jsonl(tmp_path, "mix-rows.jsonl", make_documents(30))

    def mixture_case(name, expected, *sources):
        values = {**RECIPE, "output_dir": str(tmp_path / "out"), "mixture": list(sources)}
        return (["train", write_recipe(tmp_path, name, yaml.safe_dump(values))], expected)

    ok = {"train_files": str(corpus), "weight": 1}
    return {
        "mixture negative weight": mixture_case(
            "mneg", "mixture source 2 (mix-empty): weight must be 0 or more (its share of the training blocks), "
                    "not -0.5", ok, {"train_files": str(empty), "weight": -0.5}),
        "mixture all weights zero": mixture_case(
            "mzero", "mixture: every weight is 0; give each source its share of the training blocks",
            {**ok, "weight": 0}, {"train_files": str(rows), "weight": 0}),
        "mixture weight not a number": mixture_case(
            "mnan", "mixture source 1 (mix-ok): weight must be a number (its share of the training blocks), not "
                    "'half'", {**ok, "weight": "half"}),
        "mixture source naming two corpora": mixture_case(
            "mtwo", "mixture source 1 must name exactly one corpus: dataset_name, train_files or prepared_dataset "
                    "(got dataset_name, train_files; a mixture of two corpora is two sources)",
            {**ok, "dataset_name": "wikitext"}),
        "mixture source empty": mixture_case(
            "mempty", f"mixture source 'mix-empty' (mix-empty.txt): the train split of the corpus is empty: {empty} "
                      f"hold no text", ok, {"train_files": str(empty), "weight": 1}),
        "mixture source without the text column": mixture_case(
            "mcolumn", "mixture source 'mix-rows' (mix-rows.jsonl): text_column 'body' is not a column of the "
                       "train split; its columns are: text", ok,
            {"train_files": rows, "weight": 1, "text_column": "body"}),
        "mixture_exhausted without a mixture": (["train", recipe_with(tmp_path, corpus, "mstop",
                                                                     mixture_exhausted="stop")],
                                                "mixture_exhausted: stop applies to a mixture only; add mixture: or "
                                                "unset it"),
        "mixture with a corpus key": (["train", recipe_with(tmp_path, corpus, "mboth", mixture=[ok])],
                                      "mixture: names its sources itself; unset train_files (--KEY none)"),
    }


def test_each_bad_input_is_one_line_naming_key_value_and_allowed(tmp_path, capsys, bpe_tokenizer):
    cases = {**bad_inputs(tmp_path), **command_bad_inputs(tmp_path), **report_bad_inputs(tmp_path),
             **publish_bad_inputs(tmp_path), **plan_bad_inputs(tmp_path), **mixture_bad_inputs(tmp_path)}
    bpe_tokenizer.save_pretrained(tmp_path / "pretrained")
    failures = []
    for name, (argv, expected) in cases.items():
        code = main(argv)
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if code != 2 or not last.startswith("hf-clm: error: ") or expected not in last or "Traceback" in err:
            failures.append((name, code, last[:400]))
        recipe_error = argv[0] == "train" and "Tokenizing" in err and "text_column" not in expected
        if recipe_error and ("must be" in expected or "appears twice" in expected or "no value" in expected):
            failures.append((name, "data work before the recipe error", err[-300:]))
        assert not (tmp_path / "out").exists(), name
    assert not failures, "\n".join(map(str, failures))
    assert (tmp_path / "mine" / "checkpoint-abc" / "mine.txt").read_text() == "keep me"


def test_pipeline_bad_inputs_name_what_is_missing(tmp_path, capsys, monkeypatch):
    """The executor's needs, each missing in turn: sbatch, the ray package, a reachable Ray cluster,
    datatrove; and a task that fails names itself and its log, and leaves no folder train reads."""
    import sys

    corpus = tmp_path / "ok.txt"
    corpus.write_text("\n\n".join(make_documents(3)))
    flags = ["--train_files", str(corpus), "--validation_files", str(corpus), "--sample_by", "paragraph",
             "--tokenizer_name_or_path", str(tmp_path / "tok"), "--block_size", "8"]
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(make_documents(20), vocab_size=300, special_tokens=["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>").save_pretrained(tmp_path / "tok")
    cases = [  # (name, argv, environment change, expected)
        ("slurm without sbatch", ["--executor", "slurm"], lambda m: m.setenv("PATH", str(tmp_path)),
         "executor slurm needs Slurm's sbatch on PATH, and there is none"),
        ("ray not installed", ["--executor", "ray"], lambda m: m.setitem(sys.modules, "ray", None),
         "executor ray needs the ray package, which is not installed: pip install 'hf-clm[ray]'"),
        ("no ray cluster", ["--executor", "ray", "--ray_address", "127.0.0.1:1"], lambda m: None,
         "executor ray: no Ray cluster answers at 127.0.0.1:1"),
        ("datatrove not installed", ["--tasks", "2"], lambda m: m.setitem(sys.modules, "datatrove", None),
         "runs through datatrove, which is not installed: pip install 'hf-clm[cluster]'"),
        ("parts without documents", ["--tasks", "5"], lambda m: None, "tasks 5: parts 2, 3 of the corpus would "
         "hold no training document"),
        ("a task fails", ["--tasks", "2", "--max_train_samples", "1"], lambda m: None, "prepare task 0 of 2 failed: "
         "max_train_samples takes the first documents of the whole corpus"),
    ]
    failures = []
    for name, extra, change, expected in cases:
        target = tmp_path / name.replace(" ", "-")
        with monkeypatch.context() as patched:
            change(patched)
            code = main(["prepare", *flags, "--prepared_dataset", str(target), *extra])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        if code != 2 or not last.startswith("hf-clm: error: ") or expected not in last:
            failures.append((name, code, last[:400]))
        assert not (target / "prepared.json").exists() and not list(target.glob("shard-*.json")), name
    assert not failures, "\n".join(map(str, failures))
    assert f"its log: {tmp_path / 'a-task-fails' / '.pipeline' / 'logs' / 'task_00000.log'}" in last
    assert (tmp_path / "a-task-fails" / ".pipeline" / "logs" / "task_00000.log").is_file()


SECRET = "hf_SECRETsecret1234567890"


def test_no_error_line_shows_a_token(tmp_path, capsys):
    """A token typed where it does not belong (every command's unknown-flag path) or given a wrong
    type in a recipe is masked in every message, argparse's included."""
    corpus = tmp_path / "ok.txt"
    corpus.write_text("\n\n".join(make_documents(20)))
    unknown_flag = [["push", str(tmp_path), "--repo-id", "me/t", "--license", "mit", "--hub_token", SECRET],
                    *([command, str(tmp_path), *extra, "--hub_token", SECRET] for command, extra in
                      (("perplexity", ["--data", str(corpus)]), ("generate", ["hi"]), ("explain", ["hi"]),
                       ("report", []), ("merge", []))),
                    ["merge", str(tmp_path), f"--hub-token={SECRET}"],
                    ["train", str(corpus), "--my_token", SECRET],
                    ["prepare", "--my-token", SECRET, "--train_files", str(corpus)],
                    ["bogus", "--hub_token", SECRET]]
    recipes = [["train", recipe_with(tmp_path, corpus, f"secret{i}", hub_token=value)]
               for i, value in enumerate(([SECRET], {"a": SECRET}, [{"x": [SECRET]}]))]
    recipes.append(["train", write_recipe(tmp_path, "bare", f"train_files: {corpus}\nhub_token: [{SECRET}]\n")])
    for argv in unknown_flag + recipes:
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2 and err.strip().splitlines()[-1].startswith("hf-clm: error: "), (argv, err[-300:])
        assert SECRET not in out + err and SECRET[3:] not in out + err, (argv, err[-300:])
