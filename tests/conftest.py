"""Shared fixtures: an isolated offline HF cache, small generated corpora, a trained tokenizer, the
command line in process (``hf_clm_main``) and as a real subprocess (``run_hf_clm``), and one finished
run (``finished_run``) shared by the tests that only read a run.

Tiers: tests marked ``full`` need real processes (kills, launchers, file-size limits, the
``python -m hf_clm`` entry point itself) or train for more than a few seconds; ``make test`` runs
them, ``make test-fast`` (``-m "not slow and not full"``) does not.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"public test data not found at {SHARED_DATA}")


@pytest.fixture(scope="session", autouse=True)
def offline_hf_cache(tmp_path_factory):
    """Every test runs offline against its own Hugging Face caches (never the user's)."""
    home = tmp_path_factory.mktemp("hf_home")
    os.environ.update(HF_HOME=str(home), HF_DATASETS_CACHE=str(home / "datasets"), HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_DATASETS_CACHE = Path(home / "datasets")
    datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at import, possibly before this fixture
    yield home


WORDS = ("the cat sat on a mat while dogs ran past quick brown foxes and birds sang over green hills "
         "under blue skies near old stone walls by the river").split()


def make_documents(n: int, seed: int = 0, words: int = 60, step: int = 7) -> list[str]:
    """Deterministic pseudo-English documents of varied length, with learnable structure: each
    word is followed by one of two fixed successors (a model can beat a unigram baseline);
    another ``step`` gives other successors, i.e. a different corpus over the same words."""
    rng = random.Random(seed)
    documents = []
    for _ in range(n):
        index, text = rng.randrange(len(WORDS)), []
        for _ in range(rng.randint(words // 2, words * 2)):
            text.append(WORDS[index])
            index = (index * step + rng.choice((1, 2))) % len(WORDS)
        documents.append(" ".join(text) + ".")
    return documents


@pytest.fixture
def text_files(tmp_path) -> dict[str, Path]:
    """A training and a validation .txt file (one document per paragraph)."""
    return write_corpus(tmp_path)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE trained by the package on a generated corpus."""
    from datasets import Dataset

    from hf_clm.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(Dataset.from_dict({"text": make_documents(200, seed=3)}), vocab_size=400)


def recipe_args(text_files: dict[str, Path], output_dir: Path, *extra: str) -> list[str]:
    """CLI flags for a seconds-long from-scratch run on the generated text files."""
    return ["--train_files", str(text_files["train"]), "--validation_files", str(text_files["validation"]),
            "--sample_by", "paragraph", "--train_tokenizer", "true", "--vocab_size", "400",
            "--block_size", "32", "--n_layer", "2", "--n_head", "2", "--n_embd", "32",
            "--max_steps", "30", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
            "--eval_steps", "15", "--save_steps", "15", "--logging_steps", "5",
            "--output_dir", str(output_dir), "--seed", "0", "--disable_tqdm", "true", *extra]


def write_corpus(root: Path, step: int = 7, train_documents: int = 120) -> dict[str, Path]:
    """A training and a validation .txt file of generated documents under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"train": root / "train.txt", "validation": root / "valid.txt"}
    files["train"].write_text("\n\n".join(make_documents(train_documents, seed=1, step=step)) + "\n", encoding="utf-8")
    files["validation"].write_text("\n\n".join(make_documents(20, seed=2, step=step)) + "\n", encoding="utf-8")
    return files


# ---- the command line as a real process -------------------------------------------------------

def hf_clm_command(*args) -> list[str]:
    """``python -m hf_clm ARGS`` with this interpreter (for Popen, launchers' script arguments)."""
    return [sys.executable, "-m", "hf_clm", *map(str, args)]


# For processes that run beside others (kills, launches of several ranks): one thread each.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def subprocess_env(env: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment updated with ``env`` (a value of None removes the key)."""
    merged = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def file_size_limit(fsize: int):
    """A preexec_fn for a full disk: writes past ``fsize`` bytes fail with EFBIG instead of killing."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return limit


def run_python_module(module: str, *args, env: dict[str, str | None] | None = None, cwd=None,
                      timeout: float = 600, fsize: int | None = None, **popen_kwargs) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` as a real process, its output captured as text; ``env`` updates this
    process's environment (None removes a variable), ``fsize`` caps the size of files it writes."""
    if fsize is not None:
        popen_kwargs["preexec_fn"] = file_size_limit(fsize)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(env), cwd=cwd, **popen_kwargs)


def run_hf_clm(*args, env: dict[str, str | None] | None = None, cwd=None, timeout: float = 600,
               fsize: int | None = None, **popen_kwargs) -> subprocess.CompletedProcess:
    """``python -m hf_clm ARGS`` as a real process. For what needs a process: kills, launchers,
    RLIMIT_FSIZE (``fsize``), the entry point itself and its stderr as a whole."""
    return run_python_module("hf_clm", *args, env=env, cwd=cwd, timeout=timeout, fsize=fsize, **popen_kwargs)


def train_losses(run_dir: Path) -> list[float]:
    """The training losses Trainer logged (trainer_state.json), in order: the curve runs of different
    launches (1 process, 2 processes, 2 machines) with the same global batch are compared on."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@contextlib.contextmanager
def lock_held_by_another_process(folder: Path, part: str | None = None):
    """A real process holding ``folder``'s lock (its part ``part``, shared, when given) until the
    block ends; yields that process."""
    code = ("import sys; from hf_clm.run.locks import folder_lock\n"
            f"with folder_lock({str(folder)!r}, 'folder', part={part!r}):\n"
            "    print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=subprocess_env({"PYTHONPATH": str(REPO)}))
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


# ---- the command line in process ----------------------------------------------------------------

@dataclass
class CliResult:
    """What ``main(argv)`` returned and printed, shaped like subprocess.CompletedProcess."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_in_process(*args) -> CliResult:
    """``hf_clm.commands.cli.main(ARGS)`` in this process; stdout and stderr captured, the package's log lines
    on stderr with the format of a real run (pytest's own log handlers keep basicConfig from adding one)."""
    from hf_clm.commands.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        root.removeHandler(handler)
    return CliResult(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture
def hf_clm_main(monkeypatch):
    """Run the command line in process: ``hf_clm_main(*args, env=None, cwd=None)`` -> CliResult.
    ``env`` is applied with monkeypatch (a value of None removes the variable), ``cwd`` with chdir,
    both for that call only."""
    def call(*args, env: dict[str, str | None] | None = None, cwd=None) -> CliResult:
        with monkeypatch.context() as patch:
            for key, value in (env or {}).items():
                if value is None:
                    patch.delenv(key, raising=False)
                else:
                    patch.setenv(key, value)
            if cwd is not None:
                patch.chdir(cwd)
            return run_in_process(*args)
    return call


# ---- one finished run for the tests that only read a run ----------------------------------------

@dataclass(frozen=True)
class FinishedRun:
    run_dir: Path  # named "run"
    files: dict[str, Path]  # the corpus it was trained on
    stdout: str
    stderr: str


FINISHED_RUN_FLAGS = ("--max_steps", "4", "--save_steps", "2", "--eval_steps", "4", "--license", "apache-2.0")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, offline_hf_cache) -> FinishedRun:
    """A seconds-long finished run (4 steps, checkpoints 2 and 4, license apache-2.0), trained once per
    session in process. Read it only; a test that changes a run works on a shutil.copytree copy."""
    root = tmp_path_factory.mktemp("finished")
    files = write_corpus(root / "corpus")
    result = run_in_process("train", *recipe_args(files, root / "run", *FINISHED_RUN_FLAGS))
    assert result.returncode == 0, result.stderr[-3000:]
    return FinishedRun(root / "run", files, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def finished_lora_run(finished_run, tmp_path_factory) -> FinishedRun:
    """A seconds-long finished LoRA run (4 steps, warmup_steps 2, merged at the end, no license) on the
    session's finished run as a local base model, trained once per session in process. Read it only."""
    root = tmp_path_factory.mktemp("finished-lora")
    result = run_in_process("train", *recipe_args(
        finished_run.files, root / "run", "--max_steps", "4", "--eval_steps", "4", "--save_steps", "4",
        "--warmup_steps", "2", "--model_name_or_path", str(finished_run.run_dir), "--train_tokenizer", "false",
        "--peft_method", "lora", "--lora_r", "4", "--merge_adapter", "true"))
    assert result.returncode == 0, result.stderr[-3000:]
    return FinishedRun(root / "run", finished_run.files, result.stdout, result.stderr)


# ---- the Hub stand-in (hub_server.py) and the command line pointed at it -------------------------

TOKEN = "hf_localTestTokenThatMustNeverLeak42"


def hub_env(endpoint: str, token: str | None = TOKEN) -> dict[str, str | None]:
    """The environment of a process that pushes to ``endpoint`` with ``token`` (None: HF_TOKEN unset)."""
    return {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": token}


@pytest.fixture
def hub_cli(hf_clm_main, monkeypatch):
    """hf_clm(env, *args): the command line in process with ``env`` (from hub_env) in effect for that call."""
    from huggingface_hub import constants

    from hf_clm.data import sources as hub_sources
    def call(env: dict[str, str | None], *args: str):
        with monkeypatch.context() as patch:
            # read from the environment when huggingface_hub was imported: set as a new process would read them
            patch.setattr(constants, "ENDPOINT", env["HF_ENDPOINT"])
            patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                          env["HF_ENDPOINT"] + "/{repo_id}/resolve/{revision}/{filename}")
            patch.setattr(constants, "HF_HUB_OFFLINE", False)
            patch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
            hub_sources.hub_reachable.cache_clear()
            try:
                return hf_clm_main(*args, env=env)
            finally:
                hub_sources.hub_reachable.cache_clear()
    return call


@pytest.fixture
def hub():
    """(state, endpoint) of a Hub stand-in started for the test: what it received is in ``state``."""
    from hub_server import start_hub

    server, state, endpoint = start_hub(TOKEN)
    yield state, endpoint
    server.shutdown()


# Now and then a torch gloo worker on a loaded CPU aborts in C++ as a launch starts ("terminate called
# without an active exception"): torch's, not the package's. Such a launch is started once more, from
# clean output folders; any other failure is reported as it is.
GLOO_ABORT = "terminate called without an active exception"


def run_launch(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """A torchrun / accelerate launch (``subprocess.run``, output captured as text)."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode == 0 or GLOO_ABORT not in result.stderr:
        return result
    for flag in ("--output_dir", "training_probe.py"):  # the run's folder; the probe's record folder
        place = next((i for i, arg in enumerate(command) if arg == flag or arg.endswith(flag)), None)
        if place is not None and place + 1 < len(command):
            shutil.rmtree(command[place + 1], ignore_errors=True)
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


# ---- fixtures shared by a unit module and its integration half ----

from hf_clm.commands.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def llama_runs(tmp_path_factory):
    from support.finetune import bos_tokenizer, finetune_args, lora_args

    root = tmp_path_factory.mktemp("llama")
    base = root / "base"
    tokenizer = bos_tokenizer()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    corpus = write_corpus(root / "corpus")
    assert main(finetune_args(corpus, base, root / "full")) == 0
    assert main(finetune_args(corpus, base, root / "lora", *lora_args("q_proj", "v_proj", r=8))) == 0
    assert main(["merge", str(root / "lora")]) == 0
    return root, base, corpus

@pytest.fixture(scope="module")
def small_context_model(bpe_tokenizer):
    from support.generate import CONTEXT

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=CONTEXT,
                                                        n_layer=1, n_head=2, n_embd=16))
    model.generation_config.eos_token_id = None  # never stop early: every test runs to its length
    return model.eval()

@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline_hf_cache):
    root = tmp_path_factory.mktemp("prepare")
    files = write_corpus(root)
    target = root / "blocks"
    flags = recipe_args(files, root / "unused", "--max_steps", "10", "--eval_steps", "10")
    result = run_in_process("prepare", *flags, "--prepared_dataset", str(target))
    assert result.returncode == 0, result.stderr[-3000:]
    return root, files, target, result.stdout

@pytest.fixture(scope="module")
def sharded(prepared, tmp_path_factory):
    """The fixture's corpus prepared again in two shards, shard 1 first: it refuses to start
    before the trained tokenizer exists, which --tokenizer_only makes."""
    from support.prepare import prepare_argv

    root, files, one_machine, _ = prepared
    target = tmp_path_factory.mktemp("sharded") / "blocks"
    argv = prepare_argv(files, root / "unused", target)
    early = run_in_process("prepare", *argv, "--shard", "1", "--num_shards", "2")
    assert early.returncode == 2 and f"run 'hf-clm prepare RECIPE --prepared_dataset {target} --tokenizer_only' once " \
        "first" in early.stderr
    assert run_in_process("prepare", *argv, "--tokenizer_only").returncode == 0
    for shard in ("1", "0"):
        result = run_in_process("prepare", *argv, "--shard", shard, "--num_shards", "2")
        assert result.returncode == 0, result.stderr[-3000:]
    return root, files, one_machine, target

@pytest.fixture
def train(hf_clm_main):
    """A 4-step training (checkpoints at 2 and 4) in process: train(files, run_dir, *extra)."""
    from support.run_integrity import train_args

    return lambda files, run_dir, *extra, **kwargs: hf_clm_main(*train_args(files, run_dir, *extra), **kwargs)

@pytest.fixture(scope="module")
def corpus(finished_run):
    return finished_run.files

@pytest.fixture(scope="module")
def finished(finished_run):
    """A finished 4-step run (checkpoints 2 and 4) trained on ``corpus``; tests change only copies of it."""
    return finished_run.run_dir
