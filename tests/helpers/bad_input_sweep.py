"""Bad-input sweep: corrupt, missing, unreadable and mistyped inputs to every command, counted.

Run by hand (it trains a few seconds-long runs and takes minutes):

    PYTHONPATH=. python tests/helpers/bad_input_sweep.py WORK_DIR

WORK_DIR is created and filled with the runs, folders and files the cases damage. Prints one line
per case (verdict, name, exit status, the last stderr line) and then the counts:

    bad inputs tried N, clear C, rightly accepted A, traceback T, accepted but wrong W, unclear U

"clear" = a non-zero exit whose last stderr line starts with ``hf-clm: error:`` and names the damaged
file or value, without a traceback; "rightly accepted" = exit 0 where the input is usable (the case
says so, and its check of the output passes); "traceback" = a Python traceback on stderr;
"accepted but wrong" = exit 0 on an input that should be refused, a check of the output that fails,
or a secret (a Hub token) shown on stdout or stderr; anything else is "unclear".
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import recipe_args, run_hf_clm, write_corpus  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def hf_clm(*args: str) -> subprocess.CompletedProcess:
    return run_hf_clm(*args, env=ENV, timeout=None)


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def main(work: Path) -> None:
    files = write_corpus(work / "corpus")
    base = lambda out, *extra: recipe_args(files, out, "--max_steps", "4", "--save_steps", "2", "--eval_steps", "4",
                                           *extra)
    run = work / "run"
    assert hf_clm("train", *base(run)).returncode == 0
    prepared = work / "prepared"
    assert hf_clm("prepare", *base(work / "unused", "--prepared_dataset", prepared)).returncode == 0

    def copy(src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, work / name))

    def with_text(name: str, data: bytes) -> Path:
        path = work / name
        path.write_bytes(data)
        return path

    cases = []

    def case(name, setup):
        cases.append((name, setup))

    case("train_files missing", lambda: (["train", *base(work / "o1"), "--train_files", work / "nope.txt"], "nope.txt"))
    case("train_files glob matches nothing", lambda: (["train", *base(work / "o2"), "--train_files", work / "*.zzz"], "*.zzz"))
    case("latin-1 train file", lambda: (["train", *base(work / "o3"), "--train_files",
                                         with_text("latin.txt", "café ".encode("latin-1") * 50)], "latin.txt"))
    case("empty train file", lambda: (["train", *base(work / "o4"), "--train_files", with_text("empty.txt", b"")], "empty.txt"))
    case("broken json lines", lambda: (["train", *base(work / "o5"), "--train_files", with_text("bad.jsonl", b'{"text": "a"}\n{oops\n'),
                                        "--validation_files", with_text("ok.jsonl", b'{"text": "a b c"}\n')], "json"))
    case("csv without the text column", lambda: (["train", *base(work / "o6"), "--train_files", with_text("t.csv", b"body\nhello\n"),
                                                  "--validation_files", with_text("v.csv", b"body\nhello\n")], "text_column"))
    case("corrupt parquet", lambda: (["train", *base(work / "o7"), "--train_files", with_text("t.parquet", b"PAR1garbage"),
                                      "--validation_files", with_text("v.parquet", b"PAR1garbage")], "parquet"))
    case("recipe not YAML", lambda: (["train", with_text("r1.yaml", b"a: [1, 2\n")], "r1.yaml"))
    case("recipe not a mapping", lambda: (["train", with_text("r2.yaml", b"- 1\n- 2\n")], "r2.yaml"))
    case("recipe file missing", lambda: (["train", work / "nope.yaml"], "nope.yaml"))
    case("unknown recipe key", lambda: (["train", *base(work / "o8"), "--blok_size", "3"], "blok_size"))
    case("model_name_or_path missing", lambda: (["train", *base(work / "o9"), "--model_name_or_path", work / "no-model",
                                                 "--train_tokenizer", "false"], "no-model"))

    def truncated_model():
        model = copy(run, "model-trunc")
        truncate(model / "model.safetensors")
        return ["train", *base(work / "o10"), "--model_name_or_path", model, "--train_tokenizer", "false"], "model.safetensors"
    case("model_name_or_path with truncated weights", truncated_model)

    def bad_tokenizer_source():
        model = copy(run, "tok-bad")
        (model / "tokenizer.json").write_text("{")
        return ["train", *base(work / "o11"), "--tokenizer_name_or_path", model, "--train_tokenizer", "false"], "tok-bad"
    case("tokenizer_name_or_path with damaged tokenizer.json", bad_tokenizer_source)
    case("prepared_dataset missing", lambda: (["train", *base(work / "o12"), "--prepared_dataset", work / "nope"], "nope"))

    def prepared_damage(what):
        def setup():
            target = copy(prepared, f"prep-{what}")
            if what == "arrow":
                next((target / "train").glob("*.arrow")).unlink()
            elif what == "json":
                (target / "prepared.json").write_text("")
            elif what == "truncated-arrow":
                truncate(next((target / "validation").glob("*.arrow")))
            else:
                (target / "tokenizer" / "tokenizer.json").write_text("{")
            return ["train", *base(work / f"o-{what}"), "--prepared_dataset", target], target.name
        return setup
    for what in ("arrow", "json", "truncated-arrow", "tokenizer"):
        case(f"prepared_dataset damaged ({what})", prepared_damage(what))

    def run_damage(what, command, extra=()):
        def setup():
            target = copy(run, f"run-{what}-{command}")
            if what == "weights":
                truncate(target / "model.safetensors")
            elif what == "tokenizer":
                (target / "tokenizer.json").write_text('{"model": ')
            elif what == "marker":
                (target / "perplexity.json").write_text("")
            elif what == "state":
                (target / "trainer_state.json").write_text("{")
            elif what == "recipe":
                (target / "recipe.yaml").write_text("a: [")
            elif what == "swapped":
                from safetensors.torch import load_file, save_file
                tensors = load_file(target / "model.safetensors")
                save_file({k: v * 2 for k, v in tensors.items()}, target / "model.safetensors")
            return [command, target, *extra], target.name
        return setup
    for what, command, extra in [("weights", "generate", ["hi"]), ("tokenizer", "generate", ["hi"]),
                                 ("weights", "perplexity", ["--data", files["validation"]]),
                                 ("tokenizer", "explain", ["a b"]), ("weights", "explain", ["a b"]),
                                 ("marker", "report", []), ("state", "report", []),
                                 ("weights", "push", ["--repo-id", "a/b"]), ("tokenizer", "push", ["--repo-id", "a/b"]),
                                 ("marker", "push", ["--repo-id", "a/b"]), ("recipe", "push", ["--repo-id", "a/b"]),
                                 ("swapped", "push", ["--repo-id", "a/b"])]:
        case(f"run dir damaged ({what}) -> {command}", run_damage(what, command, extra))

    def torn_checkpoint():
        target = copy(run, "resume-torn")
        truncate(target / "checkpoint-2" / "optimizer.pt")
        return ["train", *base(target, "--resume_from_checkpoint", target / "checkpoint-2")], "checkpoint-2"
    case("resume_from_checkpoint with truncated optimizer.pt", torn_checkpoint)
    case("resume_from_checkpoint missing", lambda: (["train", *base(work / "o13", "--resume_from_checkpoint",
                                                                     work / "checkpoint-9")], "checkpoint-9"))
    case("diverging learning rate", lambda: (["train", *base(work / "o14", "--learning_rate", "1e6")], "diverged"))

    def locked():
        target = work / "locked"
        holder = subprocess.Popen([sys.executable, "-c", "import sys; from hf_clm.run.locks import folder_lock\n"
                                   f"with folder_lock({str(target)!r}, 'output_dir'):\n"
                                   "    print('held', flush=True); sys.stdin.read()"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()  # held until this sweep ends
        return ["train", *base(target)], "in use by"
    case("output_dir locked by a running job", locked)
    case("overwrite with a typo'd path", lambda: (["train", *base(copy(run, "overwrite-typo"), "--overwrite_output_dir", "true"),
                                                   "--train_files", work / "trian.txt"], "trian.txt"))
    case("finished output_dir without overwrite", lambda: (["train", *base(copy(run, "again"))], "finished run"))

    def unreadable():
        path = with_text("secret.txt", b"some text here\n\n" * 50)
        path.chmod(0)
        return ["train", *base(work / "o15"), "--train_files", path], "secret.txt"
    if os.geteuid() != 0:  # root reads a file whatever its mode
        case("unreadable train file", unreadable)

    add_cases(case, work, run, prepared, base, with_text, copy, files)
    counts = dict.fromkeys(VERDICTS, 0)
    for name, setup in cases:
        argv, needle, *rest = setup()
        check = rest[0] if rest else None
        result = hf_clm(*argv)
        verdict = verdict_of(result, needle, check)
        counts[verdict] += 1
        line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        print(f"{verdict:<17} {name}: exit {result.returncode}: {line[:160]}", flush=True)
    print(f"bad inputs tried {len(cases)}, clear {counts['clear']}, rightly accepted {counts['rightly accepted']}, "
          f"traceback {counts['traceback']}, accepted but wrong {counts['accepted but wrong']}, "
          f"unclear {counts['unclear']}")


def add_cases(case, work: Path, run: Path, prepared: Path, base, with_text, copy, files) -> None:
    """Each instance of what a tester hit (secrets, provenance, rehearsals, integrity, trackers,
    publishing, error format): one case each."""
    recipe_flags = base(work / "unused")
    # secrets: a token where it does not belong never appears on the screen
    for command, extra in (("push", ["--repo-id", "me/t", "--license", "mit"]), ("perplexity", ["--data", files["validation"]]),
                           ("generate", ["hi"]), ("explain", ["hi"]), ("report", []), ("merge", [])):
        case(f"secret: {command} --hub_token", lambda c=command, e=extra: ([c, run, *e, "--hub_token", SECRET],
                                                                            "unrecognized arguments"))
    for name, value in (("list", f"[{SECRET}]"), ("mapping", f"{{a: {SECRET}}}")):
        case(f"secret: recipe hub_token as a {name}", lambda n=name, v=value: (
            ["train", with_text(f"secret-{n}.yaml", f"train_files: {files['train']}\nhub_token: {v}\n".encode())],
            "hub_token"))
    # provenance
    case("corpus flag beside a prepared folder", lambda: (
        ["train", *base(work / "p1", "--prepared_dataset", prepared), "--train_files",
         with_text("other.txt", b"other words here\n\n" * 80)], "was made from"))

    def other_corpus_shard():
        target = work / "shards-mixed"
        assert hf_clm("prepare", *base(work / "u", "--prepared_dataset", target), "--tokenizer_only").returncode == 0
        assert hf_clm("prepare", *base(work / "u", "--prepared_dataset", target), "--shard", "0",
                      "--num_shards", "2").returncode == 0
        text = files["train"].read_text().replace("the", "a")  # as many documents, other texts
        other = with_text("train-other.txt", text.encode())
        return ["prepare", *base(work / "u", "--prepared_dataset", target), "--train_files", other, "--shard", "1",
                "--num_shards", "2"], "another corpus"
    case("shards of two corpora of as many documents", other_corpus_shard)

    def swapped_shard():
        target = work / "shards-swapped"
        for shard in ("0", "1"):
            if shard == "0":
                hf_clm("prepare", *base(work / "u", "--prepared_dataset", target), "--tokenizer_only")
            assert hf_clm("prepare", *base(work / "u", "--prepared_dataset", target), "--shard", shard,
                          "--num_shards", "2").returncode == 0
        shutil.rmtree(target / "train-00000-of-00002")
        shutil.copytree(target / "train-00001-of-00002", target / "train-00000-of-00002")
        return ["train", *base(work / "p2", "--prepared_dataset", target)], "train-00000-of-00002"
    case("a shard folder replaced by another shard's blocks", swapped_shard)

    def tokenizer_elsewhere():
        target = work / "shards-tok"
        for shard, folder in (("0", "tok-a"), ("1", "tok-b")):
            tokenizer = copy(run, f"{folder}")
            argv = ["prepare", *base(work / "u", "--prepared_dataset", target, "--train_tokenizer", "false",
                                     "--tokenizer_name_or_path", tokenizer), "--shard", shard, "--num_shards", "2"]
            if shard == "0":
                assert hf_clm(*argv).returncode == 0
        return argv, ACCEPT
    case("the same tokenizer at another path, for a shard", tokenizer_elsewhere)
    # rehearsals
    def rehearsal_folder():
        folder = work / "r-rehearsal"
        folder.mkdir(exist_ok=True)
        (folder / "rehearsal.json").write_text('{"steps": 2, "finished": false}\n')
        return ["train", *base(folder, "--resume_from_checkpoint", "auto")], "rehearsal"
    case("a real run into a rehearsal's folder", rehearsal_folder)
    case("--rehearse 10^13", lambda: (["train", *recipe_flags, "--rehearse", "10000000000000"], "rehearse"))
    # integrity on read
    def flipped_arrow():
        target = copy(prepared, "prep-flipped")
        arrow = next((target / "train").glob("*.arrow"))
        data = bytearray(arrow.read_bytes())
        data[len(data) // 2:len(data) // 2 + 4] = (1_000_000).to_bytes(4, "little")
        arrow.write_bytes(bytes(data))
        return ["train", *base(work / "p3", "--prepared_dataset", target)], "prep-flipped"
    case("bytes flipped in a prepared Arrow file", flipped_arrow)

    def flipped_checkpoint():
        target = copy(run, "resume-flipped")
        optimizer = target / "checkpoint-2" / "optimizer.pt"
        data = bytearray(optimizer.read_bytes())
        header = data.find(b"PK\x03\x04", len(data) // 3)
        data[header:header + 4] = bytes(4)
        optimizer.write_bytes(bytes(data))
        return ["train", *base(target, "--resume_from_checkpoint", target / "checkpoint-2")], "checkpoint-2"
    case("a checkpoint archive with a flipped header (sizes match)", flipped_checkpoint)
    # trackers
    for value, needle in (("bogus", "report_to"), ("tensorboard,bogus", "bogus"), ("", ACCEPT), ("[none]", ACCEPT)):
        case(f"--report_to {value!r}", lambda v=value, n=needle: (["train", *base(work / f"rt-{len(v)}"), "--report_to", v], n))
    # publishing
    push = ["push", run, "--repo-id", "me/t", "--dry_run"]
    for license_, needle in (("not a license", "not a license id"), ("MIT", "lowercase"), ("mit\nx: 1", "not a license id")):
        case(f"push --license {license_!r}", lambda l=license_, n=needle: ([*push, "--license", l], n))
    case("push --revision bad..branch", lambda: ([*push, "--license", "mit", "--revision", "bad..branch"], "--revision"))
    case("output_dir with a line break", lambda: (["train", *base(work / "line\nbreak")], "line break"))
    # the evaluate metric is Python API, not a command: see tests/test_metric.py
    case("perplexity --limit 10^12", lambda: (["perplexity", run, "--data", files["validation"], "--limit",
                                                "1000000000000"], ACCEPT,
                                               lambda r: "1,000,000,000,000 documents" in r.stdout and
                                               "says it scored 10^12 documents" or None))

    def too_many_shards():
        target = work / "shards-many"
        return ["prepare", *base(work / "u", "--prepared_dataset", target), "--shard", "0", "--num_shards", "100000"], \
            "holds no training document"
    case("more shards than documents", too_many_shards)
    # error format
    for argv, needle in ((["perplexity", run, "--data", files["validation"], "--limit", "1.5"], "--limit"),
                         (["perplexity", run, "--data", files["validation"], "--sample_by", "sentence"], "--sample_by"),
                         (["report"], "RUN_DIR"), (["generate", run, "hi", "--bogus"], "--bogus"),
                         (["train", "--", with_text("dd.yaml", f"train_files: {files['train']}\n".encode())], "'--'"),
                         (["train", with_text("tab.yaml", f"train_files: {files['train']}\nblock_size:\t32\n".encode())], "tab"),
                         (["train", with_text("mk.yaml", b"c: &c {block_size: 32}\n<<: *c\n")], "merge key"),
                         (["train", with_text("long.yaml", b"k" * 1_000_000 + b": 1\n")], "1,024 characters"),
                         (["train", *base(work / "o-rf", "--resume_from_checkpoint", files["train"])], "is a file")):
        case(f"error format: {' '.join(map(str, argv))[:60]}", lambda a=argv, n=needle: (a, n))

    def orphan_lora():
        base_copy = copy(run, "lora-base")
        lora = work / "lora-orphan"
        assert hf_clm("train", *base(lora, "--model_name_or_path", base_copy, "--train_tokenizer", "false",
                                     "--peft_method", "lora", "--lora_r", "2")).returncode == 0
        shutil.rmtree(base_copy)
        return ["generate", lora, "hi"], "base model folder"
    case("a LoRA whose local base folder is gone", orphan_lora)


VERDICTS = ("clear", "rightly accepted", "traceback", "accepted but wrong", "unclear")
SECRET = "hf_SweepSecretToken0123456789"
ACCEPT = None  # a case's needle when the input is usable and exit 0 is right


def verdict_of(result: subprocess.CompletedProcess, needle: str | None, check=None) -> str:
    line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    if SECRET in result.stdout + result.stderr or SECRET[3:] in result.stdout + result.stderr:
        return "accepted but wrong"
    if "Traceback" in result.stderr:
        return "traceback"
    if result.returncode == 0:
        return "rightly accepted" if needle is ACCEPT and (check is None or check(result) is None) \
            else "accepted but wrong"
    if line.startswith("hf-clm: error:") and needle is not ACCEPT and needle in line:
        return "clear"
    return "unclear"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
