"""Bad-input sweep: corrupt, missing and unreadable inputs to every command, counted.

Usage: python tests/helpers/bad_input_sweep.py WORK_DIR

Each case is a command on a damaged input. "clear" = a last stderr line starting with
``hf-clm: error:`` that names the damaged file or value, a non-zero exit and no traceback;
"accepted" = exit 0 (the input was usable or was rebuilt); anything else is "unclear".
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
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
        target.mkdir()
        (target / ".hf_clm.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                          "locked_at": time.time(), "command": "hf-clm train"}))
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

    counts = {"clear": 0, "accepted": 0, "unclear": 0}
    for name, setup in cases:
        argv, needle = setup()
        result = hf_clm(*argv)
        line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        if result.returncode == 0:
            verdict = "accepted"
        elif line.startswith("hf-clm: error:") and needle in line and "Traceback" not in result.stderr:
            verdict = "clear"
        else:
            verdict = "unclear"
        counts[verdict] += 1
        print(f"{verdict:<9} {name}: exit {result.returncode}: {line[:160]}", flush=True)
    print(f"bad inputs tried {len(cases)}, clear errors {counts['clear']}, accepted {counts['accepted']}, "
          f"unclear {counts['unclear']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
