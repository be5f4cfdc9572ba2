"""The command line, in process through main() (the session's finished run, conftest's
``finished_run``, for the commands that read a run) and as a real subprocess (the entry point)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import recipe_args, write_corpus
from transformers import AutoModelForCausalLM, GPT2Config

from hf_clm.commands.cli import main
from hf_clm.errors import HfClmError


@pytest.fixture(scope="module")
def trained_dir(finished_run):
    assert "validation perplexity" in finished_run.stdout
    return finished_run.run_dir, finished_run.files


def tiny_checkpoint(path, vocab_size, n_positions, tokenizer=None):
    AutoModelForCausalLM.from_config(GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_layer=1,
                                                n_head=2, n_embd=16)).save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def bad_inputs(tmp_path, bpe_tokenizer):
    """(argv, expected fragment of the one error line) for each kind of bad input."""
    text = tmp_path / "ok.txt"
    text.write_text("\n\n".join(f"the cat sat on the mat {i}" for i in range(400)))  # distinct: held out by hash
    short = tmp_path / "short.txt"
    short.write_text("only a few words\n\nand a few more\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"na\xefve text\n")
    table = tmp_path / "t.jsonl"
    table.write_text('{"body": "x"}\n' * 30)
    no_weights = tmp_path / "tokenizer-only"
    bpe_tokenizer.save_pretrained(no_weights)
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("builtin_corpus: python-stdlib\nblok_size: 64\n")
    base = ["--train_tokenizer", "true", "--vocab_size", "300", "--sample_by", "paragraph",
            "--output_dir", str(tmp_path / "out")]
    small_ctx = tiny_checkpoint(tmp_path / "ctx16", len(bpe_tokenizer), 16, bpe_tokenizer)
    small_vocab = tiny_checkpoint(tmp_path / "vocab100", 100, 64)
    local_dataset = tmp_path / "local_dataset"
    local_dataset.mkdir()
    (local_dataset / "test.jsonl").write_text('{"text": "the cat sat"}\n', encoding="utf-8")
    (local_dataset / "validation.jsonl").write_text('{"text": "a dog ran"}\n', encoding="utf-8")
    return {
        "missing file": (["train", "--train_files", str(tmp_path / "missing.txt"), *base], "does not exist"),
        "glob matches nothing": (["train", "--train_files", str(tmp_path / "*.parquet"), *base], "matches no file"),
        "empty corpus": (["train", "--train_files", str(empty), *base], "empty"),
        "shorter than one block": (["train", "--train_files", str(short), "--validation_files", str(short),
                                    *base, "--block_size", "512"], "fewer than one block"),
        "text column missing": (["train", "--train_files", str(table), *base], "its columns are: body"),
        "non utf-8": (["train", "--train_files", str(latin), *base], "byte 2 (0xef) is not valid UTF-8"),
        "unknown recipe key": (["train", str(recipe)], "did you mean 'block_size'"),
        "block_size over context": (["train", "--train_files", str(text), "--model_name_or_path", small_ctx,
                                     "--sample_by", "paragraph", "--block_size", "32",
                                     "--output_dir", str(tmp_path / "o2")], "larger than the model's context of 16"),
        "vocab over embeddings": (["train", "--train_files", str(text), "--model_name_or_path", small_vocab,
                                   "--tokenizer_name_or_path", small_ctx, "--sample_by", "paragraph",
                                   "--block_size", "16", "--output_dir", str(tmp_path / "o3")],
                                  f"tokenizer has {len(bpe_tokenizer)} tokens but the model's embeddings only 100"),
        "model dir without tokenizer": (["perplexity", str(tmp_path), "--data", str(text)], "no tokenizer"),
        "stride over window": (["perplexity", small_ctx, "--data", str(text), "--stride", "99"], "--stride 99"),
        "stride zero": (["perplexity", small_ctx, "--data", str(text), "--stride", "0"],
                        "--stride must be at least 1, not 0"),
        "window over context": (["perplexity", small_ctx, "--data", str(text), "--window", "64"],
                                "--window 64 must be between 2 and the model's context of 16"),
        # every document ends with EOS, so any text is >= 2 tokens; the short case is an empty file
        "no evaluation text": (["perplexity", small_ctx, "--data", str(empty)], "is empty"),
        "model dir without weights": (["perplexity", str(no_weights), "--data", str(text)], "no model weights"),
        "empty prompt": (["generate", small_ctx, "  "], "prompt is empty"),
        "cuda without a GPU": (["perplexity", small_ctx, "--data", str(text), "--device", "cuda"],
                               "no CUDA GPU is visible"),
        "not a device": (["explain", small_ctx, "a b c", "--device", "tpu9"], "--device tpu9 is not a device"),
        "hub model offline": (["perplexity", "gpt2-not-here", "--data", str(text)], "HF_HUB_OFFLINE=1"),
        "hub dataset offline": (["perplexity", small_ctx, "--dataset_name", "no-such/dataset"],
                                "--dataset_name no-such/dataset could not be loaded"),
        "missing split": (["perplexity", small_ctx, "--dataset_name", str(local_dataset), "--split", "train"],
                          "--split train is not a split of"),
        "data names the flag": (["perplexity", small_ctx, "--data", str(tmp_path / "nope.md")],
                                "--data: '"),
        "stride with rolling": (["perplexity", small_ctx, "--data", str(text), "--convention", "rolling",
                                 "--stride", "4"], "--stride applies to --convention strided"),
        "batch size zero": (["perplexity", small_ctx, "--data", str(text), "--batch_size", "0"],
                            "--batch_size must be at least 1"),
    }


def station_failing_mid_bar(argv, verbose=False):
    """A command that fails with a progress bar open, as training does on a full disk."""
    from tqdm.auto import tqdm

    bar = tqdm(total=10, desc="Training")
    bar.update(3)
    raise HfClmError("writing checkpoint-2/optimizer.pt failed; is the disk full?")


def test_train_then_perplexity_and_generate(trained_dir, hf_clm_main):
    run_dir, files = trained_dir
    result = hf_clm_main("perplexity", str(run_dir), "--data", str(files["validation"]), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tokens"] > 100 and report["stride"] == report["window"] == 32
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["convention"] == "strided"
    text_bytes = len(files["validation"].read_bytes())
    assert 0.9 * text_bytes < report["bytes"] < text_bytes  # each window's first token is context only
    rolling = json.loads(hf_clm_main("perplexity", str(run_dir), "--data", str(files["validation"]), "--json",
                                "--convention", "rolling").stdout.strip().splitlines()[-1])
    assert rolling["bytes"] == text_bytes and rolling["chars"] == len(files["validation"].read_text())
    half = hf_clm_main("perplexity", str(run_dir), "--data", str(files["validation"]), "--json", "--stride", "16")
    assert json.loads(half.stdout.strip().splitlines()[-1])["stride"] == 16

    first = hf_clm_main("generate", str(run_dir), "the cat", "--max_new_tokens", "12", "--seed", "3")
    again = hf_clm_main("generate", str(run_dir), "the cat", "--max_new_tokens", "12", "--seed", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("the cat") and len(first.stdout) > len("the cat")
    assert first.stdout == again.stdout  # same seed, same text


@pytest.mark.parametrize("command", [[], ["train"], ["perplexity"], ["generate"]])
def test_help_lists_options(command, capsys):
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if command == ["train"]:
        assert "--block_size" in out and "Tokens per training block" in out and "--learning_rate" in out
    if command == ["generate"]:
        assert "--temperature" in out and "--top_p" in out
        for default in ("(default 100)", "(default 1.0)", "(default 50)", "(default 0)"):
            assert default in " ".join(out.split()), default


def test_each_bad_input_is_one_clear_line_and_nonzero_exit(tmp_path, bpe_tokenizer, capsys):
    for name, (argv, fragment) in bad_inputs(tmp_path, bpe_tokenizer).items():
        code = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0, name
        assert err and err[-1].startswith("hf-clm: error: ") and fragment in err[-1], (name, err[-3:])
        assert not any("Traceback" in line for line in err), name
        assert not (tmp_path / "out" / "perplexity.json").exists()


def test_explain_table_and_json(trained_dir, hf_clm_main):
    run_dir, _ = trained_dir
    table = hf_clm_main("explain", str(run_dir), "the cat sat on the mat")
    assert table.returncode == 0, table.stderr[-2000:]
    assert "top predictions" in table.stdout and "mean loss" in table.stdout
    as_json = hf_clm_main("explain", str(run_dir), "the cat sat on the mat", "--json", "--top_k", "2")
    data = json.loads(as_json.stdout)
    assert len(data["positions"][0]["top"]) == 2
    assert data["perplexity"] == pytest.approx(2.718281828 ** data["mean_loss"], rel=1e-6)


def test_report_compares_several_runs(trained_dir, tmp_path, hf_clm_main):
    run_dir, files = trained_dir
    second = tmp_path / "second"
    result = hf_clm_main("train", *recipe_args(files, second, "--max_steps", "10", "--eval_steps", "5", "--n_embd", "16"))
    assert result.returncode == 0, result.stderr[-2000:]
    report = hf_clm_main("report", str(run_dir), str(second), "--output", str(tmp_path / "cmp"))
    assert report.returncode == 0, report.stderr[-2000:]
    runs = json.loads((tmp_path / "cmp" / "report.json").read_text())["runs"]
    assert [r["name"] for r in runs] == ["run", "second"]
    assert runs[0]["parameters"] > runs[1]["parameters"]
    table = (tmp_path / "cmp" / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and rows[2].startswith("| second |")  # header, then one row per run
    bad = hf_clm_main("report", str(tmp_path))
    assert bad.returncode == 2 and "is not a finished run" in bad.stderr


def test_perplexity_reads_any_text_files_and_datasets(trained_dir, tmp_path, hf_clm_main):
    run_dir, files = trained_dir
    docs = tmp_path / "docs"
    (docs / ".git").mkdir(parents=True)
    (docs / "module.py").write_text("the cat sat on a mat\n", encoding="utf-8")
    (docs / "README.md").write_text("# quick brown foxes\n\nbirds sang over green hills\n", encoding="utf-8")
    (docs / "NOTES").write_text("dogs ran past old stone walls", encoding="utf-8")
    (docs / ".git" / "config").write_text("[core]", encoding="utf-8")  # hidden: not a document
    result = hf_clm_main("perplexity", str(run_dir), "--data", str(docs), "--json", "--convention", "rolling")
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    texts = [p.read_text() for p in (docs / "module.py", docs / "README.md", docs / "NOTES")]
    assert row["documents"] == 3 and row["bytes"] == sum(len(t.encode()) for t in texts)
    assert row["words"] == sum(len(__import__("re").split(r"\s+", t)) for t in texts)

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    lines = [json.dumps({"body": t}) for t in texts]
    (dataset / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dataset / "validation.jsonl").write_text(lines[0] + "\n", encoding="utf-8")
    from_dataset = hf_clm_main("perplexity", str(run_dir), "--dataset_name", str(dataset), "--text_column", "body",
                          "--json", "--convention", "rolling")
    assert from_dataset.returncode == 0, from_dataset.stderr[-2000:]
    same = json.loads(from_dataset.stdout.strip().splitlines()[-1])
    assert same["perplexity"] == pytest.approx(row["perplexity"], rel=1e-6) and same["bytes"] == row["bytes"]


def test_several_models_make_a_comparison_report_that_report_accepts(trained_dir, tmp_path, hf_clm_main):
    run_dir, files = trained_dir
    from transformers import AutoTokenizer

    other = tiny_checkpoint(tmp_path / "other", 400, 64, tokenizer=AutoTokenizer.from_pretrained(run_dir))
    result = hf_clm_main("perplexity", str(run_dir), other, "--data", str(files["validation"]),
                    "--output", str(tmp_path / "compare"))
    assert result.returncode == 0, result.stderr[-2000:]
    content = json.loads((tmp_path / "compare" / "report.json").read_text())
    assert [r["model"] for r in content["models"]] == [str(run_dir), other]
    assert all({"perplexity", "bits_per_byte", "tokens", "device", "dtype", "convention"} <= set(r)
               for r in content["models"])
    assert all(r["evaluated_on"] == "valid.txt" and r["sample_by"] == "document" and r["limit"] is None
               for r in content["models"])
    assert (tmp_path / "compare" / "perplexity_by_model.png").stat().st_size > 1000
    markdown = (tmp_path / "compare" / "report.md").read_text()
    assert "| model | perplexity | bits/byte |" in markdown
    # each model at its own default window, its context length: the run's 32, the other's 64
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in markdown.splitlines() if line.startswith("| ")}
    assert "| strided | 32 | 32 |" in rows[str(run_dir)] and "| strided | 64 | 64 |" in rows[other]
    combined = hf_clm_main("report", str(run_dir), str(tmp_path / "compare"), "--output", str(tmp_path / "both"))
    assert combined.returncode == 0, combined.stderr[-2000:]
    table = json.loads((tmp_path / "both" / "report.json").read_text())["runs"]
    assert len(table) == 3
    run_text = json.loads((run_dir / "perplexity.json").read_text())["evaluated_on"]
    assert run_text.startswith("the paragraphs of valid.txt: ")
    assert [r["evaluated_on"] for r in table] == [run_text, "valid.txt", "valid.txt"]
    both = (tmp_path / "both" / "report.md").read_text()
    assert f"| {run_text} | strided, window 32, stride 32 (validation blocks) |" in both
    assert "| valid.txt | strided, window 64, stride 64 |" in both


def test_a_run_records_and_prints_the_text_it_was_validated_on(trained_dir, finished_run):
    run_dir, _ = trained_dir
    summary = json.loads((run_dir / "perplexity.json").read_text())
    counts = json.loads((run_dir / "token_counts.json").read_text())["validation"]
    assert summary["evaluated_on"] == (f"the paragraphs of valid.txt: {counts['documents']} documents -> "
                                       f"{counts['blocks']} blocks of 32 tokens, {summary['tokens']:,} tokens scored")
    assert f"evaluated on           {summary['evaluated_on']}" in finished_run.stdout


def test_perplexity_scores_paragraphs_or_lines_of_text_files_and_the_first_n(tmp_path, bpe_tokenizer, capsys):
    model = tiny_checkpoint(tmp_path / "model", len(bpe_tokenizer), 32, bpe_tokenizer)
    text = tmp_path / "wiki.txt"
    text.write_text("the cat sat\non a mat\n\ndogs ran past\n\n\nquick brown foxes\n")

    def row(*argv):
        assert main(["perplexity", model, "--data", str(text), "--json", "--convention", "rolling", *argv]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    whole = row()
    assert (whole["documents"], whole["sample_by"], whole["limit"], whole["evaluated_on"]) == (1, "document", None,
                                                                                             "wiki.txt")
    assert row("--sample_by", "paragraph")["documents"] == 3  # as training splits .txt files
    assert row("--sample_by", "line")["documents"] == 4  # a blank line is no document
    first = row("--sample_by", "paragraph", "--limit", "2")
    assert (first["documents"], first["limit"], first["sample_by"]) == (2, 2, "paragraph")
    assert first["bytes"] == len("the cat sat\non a mat" + "dogs ran past")  # rolling scores every byte
    assert first["evaluated_on"] == "wiki.txt, one document per paragraph, the first 2 documents"
    assert row("--limit", "5")["documents"] == 1
    assert main(["perplexity", model, "--data", str(text), "--sample_by", "line", "--limit", "3",
                 "--output", str(tmp_path / "cmp")]) == 0
    markdown = (tmp_path / "cmp" / "report.md").read_text()
    assert "wiki.txt, one document per line, the first 3 documents (3 documents)" in markdown
    saved = json.loads((tmp_path / "cmp" / "report.json").read_text())["models"][0]
    assert (saved["sample_by"], saved["limit"], saved["documents"]) == ("line", 3, 3)


def test_bfloat16_on_cpu_agrees_with_float32(trained_dir, hf_clm_main):
    run_dir, files = trained_dir
    figures = {}
    for dtype in ("float32", "bfloat16"):
        result = hf_clm_main("perplexity", str(run_dir), "--data", str(files["validation"]), "--json", "--dtype", dtype,
                        "--device", "cpu")
        assert result.returncode == 0, result.stderr[-2000:]
        figures[dtype] = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["bfloat16"]["dtype"] == "bfloat16"
    # bf16 keeps 8 bits of mantissa: within 2% on perplexity and bits per byte (measured: see docs/commands/perplexity.md)
    assert figures["bfloat16"]["perplexity"] == pytest.approx(figures["float32"]["perplexity"], rel=2e-2)
    assert figures["bfloat16"]["bits_per_byte"] == pytest.approx(figures["float32"]["bits_per_byte"], rel=2e-2)
    explained = hf_clm_main("explain", str(run_dir), "the cat sat on a mat", "--dtype", "bfloat16", "--json")
    assert explained.returncode == 0 and json.loads(explained.stdout)["dtype"] == "bfloat16"


def test_the_error_is_the_last_line_with_a_progress_bar_open(monkeypatch, capsys):
    import hf_clm.commands.report

    monkeypatch.setattr(hf_clm.commands.report, "main", station_failing_mid_bar)
    assert main(["report", "run"]) == 2
    err = capsys.readouterr().err
    assert "Training:  30%" in err
    assert err.strip().splitlines()[-1] == "hf-clm: error: writing checkpoint-2/optimizer.pt failed; is the disk full?"


def test_the_error_is_the_last_line_of_a_process_that_exits_with_a_bar_open(tmp_path):
    code = ("import sys, hf_clm.commands.cli, hf_clm.commands.report; from unit import test_cli; "
            "hf_clm.commands.report.main = test_cli.station_failing_mid_bar; "
            "sys.exit(hf_clm.commands.cli.main(['report', 'run']))")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("hf-clm: error: writing checkpoint-2/optimizer.pt")


def test_perplexity_of_a_one_byte_text_prints_a_dash_for_the_figures_it_has_no_text_for(tmp_path, bpe_tokenizer,
                                                                                         capsys):
    model = tiny_checkpoint(tmp_path / "model", len(bpe_tokenizer), 32, bpe_tokenizer)
    one_byte = tmp_path / "one-byte.txt"
    one_byte.write_text("a")
    for convention in ("strided", "rolling"):
        assert main(["perplexity", model, "--data", str(one_byte), "--convention", convention]) == 0, convention
        line = capsys.readouterr().out.strip().splitlines()[-1]
        if convention == "strided":  # the one target is the EOS after the byte, which stands for no text
            assert "| – bits/byte | – bits/char | 1 tokens |" in line and "special token" in line
    eos_only = tmp_path / "eos.txt"
    eos_only.write_text(bpe_tokenizer.eos_token)
    assert main(["perplexity", model, "--data", str(eos_only), "--convention", "rolling"]) == 0
    assert "word perplexity –" in capsys.readouterr().out


def test_perplexity_scores_the_text_column_and_the_recipe_it_is_given(tmp_path, bpe_tokenizer, capsys):
    model = tiny_checkpoint(tmp_path / "model", len(bpe_tokenizer), 32, bpe_tokenizer)
    texts = ["the cat sat on a mat", "dogs ran past quick brown foxes"]
    table = tmp_path / "table.json"
    table.write_text(json.dumps([{"text": "zz", "body": t} for t in texts]))
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

    def figures(*argv):
        assert main(["perplexity", model, *argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    assert figures("--data", str(table), "--text_column", "body")["bytes"] == figures("--data", str(plain))["bytes"]
    files = write_corpus(tmp_path / "corpus")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"train_files: {files['train']}\nvalidation_files: {files['validation']}\n"
                      f"sample_by: paragraph\nmodel_name_or_path: {model}\n")
    assert figures("--recipe", str(recipe))["documents"] == 20
    # reading a recipe's validation documents runs nothing: its output_dir and trackers do not matter
    recipe.write_text(recipe.read_text() + f"output_dir: {table}\nreport_to: wandb\n")
    assert figures("--recipe", str(recipe))["documents"] == 20


@pytest.mark.parametrize("command, not_imported", [("plan", ["torch", "transformers", "datasets"]),
                                                   ("train", ["datasets", "transformers.trainer", "hf_clm.training.train"])])


def test_help_imports_only_what_it_prints(command, not_imported):
    """plan's help imports no library; train's lists TrainingArguments' fields, so it imports transformers
    (and torch, accelerate and peft under it) for them, and nothing else: no datasets, no Trainer (a loaded 2-core machine took 20-25 s for every import)."""
    code = ("import contextlib, io, sys\nfrom hf_clm.commands.cli import main\n"
            f"with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            f"    main([{command!r}, '--help'])\n"
            "assert out.getvalue().startswith('usage: hf-clm'), out.getvalue()[:200]\n"
            f"print(sorted(m for m in {not_imported!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
