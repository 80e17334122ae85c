"""Every command's outputs: written atomically, never onto an input, and `--overwrite` replaces only the command's
own earlier output. Each case is a user's folder that an earlier version deleted or wrote over."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import seeded, tiny_config

from hf_gpt import HfGptForCausalLM
from hf_gpt.cli import main
from hf_gpt.files import RECORD, atomic_directory, check_output_dir, read_record, write_record
from hf_gpt.train.pretraining_setup import PretrainArguments


def run_cli(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of `hf-gpt ARGV`, in this process."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's refusals
        code = e.code
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    """The error, after any progress bars: one clear line, no traceback."""
    lines = [line for line in err.strip().splitlines() if "%|" not in line]
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_tokenizer):
    folder = tmp_path_factory.mktemp("outputs") / "model"
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0)
    seeded(HfGptForCausalLM, config).save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    text = "The quick brown fox jumps over the lazy dog. "
    path.write_text("".join(json.dumps({"text": f"{i} {text * 20}"}) + "\n" for i in range(20)), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The ownership rules themselves.


def test_a_folder_is_replaced_only_when_all_of_it_is_the_same_commands_output(tmp_path):
    folder = tmp_path / "out"
    with atomic_directory(folder, kind="prepare-data") as staging:
        (staging / "train.bin").write_bytes(b"12")
        (staging / "sub").mkdir()
        (staging / "sub" / "a.txt").write_text("a")
    record = read_record(folder)
    assert record["kind"] == "prepare-data" and record["files"] == ["sub/a.txt", "train.bin"]
    assert "command" in record
    check_output_dir(folder, overwrite=True, kind="prepare-data")  # all ours: may be replaced
    with pytest.raises(ValueError, match="not empty; pass overwrite=True"):
        check_output_dir(folder, overwrite=False, kind="prepare-data")
    with pytest.raises(ValueError, match="was written by 'prepare-data', not 'train-tokenizer'"):
        check_output_dir(folder, overwrite=True, kind="train-tokenizer")
    for name in ("thesis.txt", "sub/notes.md"):
        (folder / name).write_text("the user's")
        with pytest.raises(ValueError, match=f"holds {folder / name}, which 'prepare-data' did not write"):
            check_output_dir(folder, overwrite=True, kind="prepare-data")
        (folder / name).unlink()
    (folder / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="holds .*link"):
        check_output_dir(folder, overwrite=True, kind="prepare-data")
    (folder / "link").unlink()
    (tmp_path / "alias").symlink_to(folder)
    with pytest.raises(ValueError, match=f"alias is a symbolic link; give the folder it points to, {folder}"):
        check_output_dir(tmp_path / "alias", overwrite=True, kind="prepare-data")


def test_files_arriving_during_the_work_stop_the_replacement(tmp_path):
    folder = tmp_path / "out"
    with atomic_directory(folder, kind="convert") as staging:
        (staging / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="thesis.tex"):
        with atomic_directory(folder, overwrite=True, kind="convert") as staging:
            (staging / "config.json").write_text('{"new": 1}')
            (folder / "thesis.tex").write_text("written meanwhile")
    assert (folder / "config.json").read_text() == "{}" and (folder / "thesis.tex").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging left behind


def test_nested_outputs_answer_for_themselves_and_owned_folders_grow(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    write_record(run, "pretrain", owned_folders=("checkpoints", "logs"))
    (run / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run / "checkpoints" / "step-00000001" / "optimizer.bin").write_bytes(b"x")
    (run / "logs").mkdir()
    (run / "logs" / "events.out").write_bytes(b"x")
    with atomic_directory(run / "model", kind="pretrain") as staging:
        (staging / "config.json").write_text("{}")
    check_output_dir(run, overwrite=True, kind="pretrain")
    (run / "model" / "my-notes.txt").write_text("the user's")
    with pytest.raises(ValueError, match="my-notes.txt"):
        check_output_dir(run, overwrite=True, kind="pretrain")


def test_stale_staging_of_a_dead_process_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{pid}-abc"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"0" * 1000)
    live = tmp_path / f".out.tmp-{os.getpid()}-xyz"  # a write in progress in a live process: left alone
    live.mkdir()
    other = tmp_path / f".other.tmp-{pid}-abc"  # another output's: left alone
    other.mkdir()
    with atomic_directory(tmp_path / "out", kind="prepare-data") as staging:
        (staging / "manifest.json").write_text("{}")
    assert not stale.exists() and live.exists() and other.exists()


# ---------------------------------------------------------------------------------------------------------------
# The commands that deleted or overwrote a user's files.


def test_quickstart_leaves_a_pretraining_run_alone(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    write_record(run, "pretrain", owned_folders=("checkpoints", "logs"))
    (run / "NOTES.txt").write_text("my notes")
    before = snapshot(run)
    code, err = run_cli(capsys, "quickstart", "--output", run, "--max-steps", "1")
    assert code == 2 and "was written by 'pretrain', not 'quickstart'" in one_line(err)
    assert snapshot(run) == before
    (run / "NOTES.txt").unlink()  # even a clean pretraining run is not the quickstart's to replace
    code, err = run_cli(capsys, "quickstart", "--output", run, "--max-steps", "1")
    assert code == 2 and "was written by 'pretrain', not 'quickstart'" in one_line(err)


def test_prepare_data_overwrite_keeps_a_folder_with_the_users_files(tmp_path, capsys, corpus, trained_tokenizer_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")  # looks like ours, is not
    (folder / "thesis.txt").write_text("four years of work")
    args = ("prepare-data", corpus, "--tokenizer", trained_tokenizer_dir, "--workers", "1", "--val-fraction", "0.1")
    args = (*args, "--output")
    code, err = run_cli(capsys, *args, folder, "--overwrite")
    assert code == 2 and f"{folder} has no {RECORD}" in one_line(err)
    assert (folder / "thesis.txt").read_text() == "four years of work"
    other = tmp_path / "data2"
    assert run_cli(capsys, *args, other)[0] == 0
    (other / "thesis.txt").write_text("added later")
    code, err = run_cli(capsys, *args, other, "--overwrite")
    assert code == 2 and "thesis.txt, which 'prepare-data' did not write" in one_line(err)
    (other / "thesis.txt").unlink()
    assert run_cli(capsys, *args, other, "--overwrite", "--val-fraction", "0.2")[0] == 0
    assert json.loads((other / "manifest.json").read_text())["val_fraction"] == 0.2  # its own output: replaced


def test_pretrain_overwrite_keeps_a_run_with_the_users_files(tmp_path, capsys, corpus, trained_tokenizer_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (run / "thesis.tex").write_text("\\section{}")
    code, err = run_cli(capsys, "pretrain", corpus, "--tokenizer", trained_tokenizer_dir, "--output", run,
                        "--overwrite", "--max-steps", "1", "--warmup-steps", "0")  # fmt: skip
    assert code == 2 and f"has no {RECORD}" in one_line(err)
    assert (run / "thesis.tex").exists() and (run / "run.json").read_text() == "{}"


def test_train_tokenizer_overwrite_keeps_a_folder_with_the_users_files(tmp_path, capsys, corpus):
    folder = tmp_path / "tok"
    args = ("train-tokenizer", corpus, "--vocab-size", "300", "--output", folder)
    assert run_cli(capsys, *args)[0] == 0
    (folder / "secrets.yaml").write_text("token: x")
    code, err = run_cli(capsys, *args, "--overwrite")
    assert code == 2 and "secrets.yaml" in one_line(err)
    assert (folder / "secrets.yaml").exists()


def test_finetune_overwrite_keeps_a_folder_with_the_users_files(tmp_path, capsys, model_dir):
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2}) + "\n" for i in range(20)))
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "data.csv").write_text("a,b\n")
    code, err = run_cli(capsys, "finetune", model_dir, rows, "--task", "classification", "--output", folder,
                        "--overwrite")  # fmt: skip
    assert code == 2 and f"has no {RECORD}" in one_line(err)
    assert (folder / "data.csv").exists()
    code, err = run_cli(capsys, "finetune", model_dir, rows, "--task", "classification", "--output", model_dir / "ft")
    assert code == 2 and "would be inside the input folder" in one_line(err)


@pytest.mark.parametrize("direction", ["import", "export"])
def test_converters_never_replace_their_source_or_a_users_folder(tmp_path, capsys, model_dir, direction):
    from hf_gpt.conversion.gpt2 import main as gpt2_main

    before = snapshot(model_dir)
    assert gpt2_main([direction, str(model_dir), str(model_dir), "--overwrite"]) == 2
    assert "is inside the output folder" in one_line(capsys.readouterr().err)
    assert snapshot(model_dir) == before
    folder = tmp_path / "users"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "data.csv").write_text("a,b\n")
    assert gpt2_main([direction, str(model_dir), str(folder), "--overwrite"]) == 2
    assert f"has no {RECORD}" in one_line(capsys.readouterr().err)
    assert (folder / "data.csv").exists()


def test_eval_never_writes_onto_its_inputs_or_a_users_file(tmp_path, capsys, model_dir):
    text = tmp_path / "a.txt"
    text.write_text("Some text to score. " * 10, encoding="utf-8")
    before = text.read_bytes()
    code, err = run_cli(capsys, "eval", "perplexity", model_dir, text, "--output", text)
    assert code == 2 and "is inside the output folder" in one_line(err) and text.read_bytes() == before
    code, err = run_cli(capsys, "eval", "perplexity", model_dir, text, "--output", model_dir / "config.json")
    assert code == 2 and "inside the input folder" in one_line(err)
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps({"context": "Pick:", "choices": ["a", "b"], "answer": 0}) + "\n")
    code, err = run_cli(capsys, "eval", "fewshot", model_dir, task, "--shots", "0", "--output", task)
    assert code == 2 and "is inside the output folder" in one_line(err)
    users = tmp_path / "results.json"
    users.write_text('{"mine": true}')
    code, err = run_cli(capsys, "eval", "perplexity", model_dir, text, "--output", users)
    assert code == 2 and "was not written by 'hf-gpt eval perplexity'" in one_line(err)
    assert json.loads(users.read_text()) == {"mine": True}
    ours = tmp_path / "ppl.json"
    for _ in range(2):  # an earlier result of the same command is replaced
        assert run_cli(capsys, "eval", "perplexity", model_dir, text, "--output", ours)[0] == 0
    assert json.loads(ours.read_text())["written_by"] == "hf-gpt eval perplexity"


def test_lm_eval_export_replaces_only_its_own_export(tmp_path, capsys):
    task = tmp_path / "tasks" / "mc.jsonl"
    task.parent.mkdir()
    task.write_text(json.dumps({"context": "Pick:", "choices": ["a", "b"], "answer": 0}) + "\n")
    folder = tmp_path / "lm"
    folder.mkdir()
    (folder / "hfgpt_mc.yaml").write_text("task: mine\n")
    code, err = run_cli(capsys, "eval", "export-lm-eval", task, folder)
    assert code == 2 and "was not written by" in one_line(err)
    assert (folder / "hfgpt_mc.yaml").read_text() == "task: mine\n"
    (folder / "hfgpt_mc.yaml").unlink()
    (folder / "hfgpt_mc.test.jsonl").write_text("{}\n")  # the user's file with our data file's name
    assert run_cli(capsys, "eval", "export-lm-eval", task, folder)[0] == 2
    (folder / "hfgpt_mc.test.jsonl").unlink()
    for _ in range(2):  # then our own export is replaced
        assert run_cli(capsys, "eval", "export-lm-eval", task, folder)[0] == 0
    assert run_cli(capsys, "eval", "export-lm-eval", task, task.parent)[0] == 0  # beside its input is fine


# ---------------------------------------------------------------------------------------------------------------
# Resume, refused runs, and what the command changes in the user's config.


def test_the_same_run_folder_spelled_another_way_is_the_same_run(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    values = {"data": ["data"], "model": "gpt2-tiny"}
    monkeypatch.chdir(tmp_path)
    here = PretrainArguments(output_dir="run/", **values).to_json()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    there = PretrainArguments(output_dir=str(tmp_path / "run"), data=[str(tmp_path / "data")], model="gpt2-tiny")
    assert there.to_json() == here


def test_a_refused_seed_leaves_no_run_folder(tmp_path, capsys, corpus, trained_tokenizer_dir):
    code, err = run_cli(capsys, "pretrain", corpus, "--tokenizer", trained_tokenizer_dir, "--output", tmp_path / "r",
                        "--seed", "-1")  # fmt: skip
    assert code == 2 and "--seed" in one_line(err)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        PretrainArguments(output_dir=str(tmp_path / "r"), data=[str(corpus)], seed=-1).check()
    assert not (tmp_path / "r").exists()


def test_a_too_small_vocabulary_is_refused_and_every_change_is_printed(tmp_path, capsys, trained_tokenizer):
    from hf_gpt.train.pretraining_setup import build_config

    small = tmp_path / "small.json"
    small.write_text(json.dumps(tiny_config(vocab_size=100, bos_token_id=0, eos_token_id=0).to_dict()))
    with pytest.raises(ValueError, match=r"vocab_size \(100\) is smaller than the tokenizer's vocabulary \(700"):
        build_config(str(small), {}, trained_tokenizer)
    large = tmp_path / "large.json"
    large.write_text(json.dumps(tiny_config(vocab_size=1024, bos_token_id=5, eos_token_id=5).to_dict()))
    config = build_config(str(large), {}, trained_tokenizer)
    assert config.vocab_size == len(trained_tokenizer)
    out = capsys.readouterr().out
    assert f"vocab_size 1024 -> {len(trained_tokenizer)}" in out and "bos_token_id 5 -> 0" in out
    config = build_config(str(large), {"vocab_size": 768}, trained_tokenizer)
    assert config.vocab_size == 768  # a padded vocabulary, asked for
    with pytest.raises(ValueError, match=r"vocab_size \(512\) is smaller"):
        build_config("gpt2-tiny", {"vocab_size": 512}, trained_tokenizer)
    config = build_config("gpt2-tiny", {}, trained_tokenizer)
    assert config.vocab_size == len(trained_tokenizer)
    assert f"vocab_size 1024 -> {len(trained_tokenizer)}" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# Bad numbers and bad files: one line naming the flag or the file.


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["pretrain", "d", "--output", "o", "--max-grad-norm", "-1"], "--max-grad-norm"),
        (["pretrain", "d", "--output", "o", "--max-grad-norm", "0"], "--max-grad-norm"),
        (["pretrain", "d", "--output", "o", "--weight-decay", "-1"], "--weight-decay"),
        (["pretrain", "d", "--output", "o", "--peak-tflops", "nan"], "--peak-tflops"),
        (["pretrain", "d", "--output", "o", "--peak-tflops", "-1"], "--peak-tflops"),
        (["finetune", "m", "t", "--task", "classification", "--output", "o", "--lr", "0"], "--learning-rate"),
        (["finetune", "m", "t", "--task", "classification", "--output", "o", "--weight-decay", "-1"], "--weight-decay"),
        (["finetune", "m", "t", "--task", "classification", "--output", "o", "--lm-weight", "nan"], "--lm-weight"),
        (["finetune", "m", "t", "--task", "classification", "--output", "o", "--max-length", "-5"], "--max-length"),
        (
            ["train-tokenizer", "c", "--output", "o", "--vocab-size", "300", "--model-max-length", "-1"],
            "--model-max-length",
        ),
        (
            ["train-tokenizer", "c", "--output", "o", "--vocab-size", "300", "--model-max-length", "0"],
            "--model-max-length",
        ),
        (["train-tokenizer", "c", "--output", "o", "--vocab-size", "300", "--min-frequency", "-3"], "--min-frequency"),
        (["generate", "m", "--top-p", "1.5"], "--top-p"),
        (["estimate", "gpt2", "--gpus", "0"], "--gpus"),
    ],
)
def test_numeric_flags_out_of_range_are_one_line_naming_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert flag in one_line(capsys.readouterr().err)


def test_damaged_files_are_named(tmp_path, capsys, model_dir, trained_tokenizer_dir, corpus):
    data = tmp_path / "data"
    assert run_cli(capsys, "prepare-data", corpus, "--tokenizer", trained_tokenizer_dir, "--output", data,
                   "--workers", "1", "--val-fraction", "0")[0] == 0  # fmt: skip
    manifest = json.loads((data / "manifest.json").read_text())
    without_splits = json.dumps({k: v for k, v in manifest.items() if k != "splits"})
    for damaged, message in [
        ("{not json", "manifest.json: not valid JSON"),
        (without_splits, "manifest.json is damaged"),
    ]:
        (data / "manifest.json").write_text(damaged)
        code, err = run_cli(capsys, "pretrain", data, "--tokenizer", trained_tokenizer_dir, "--output",
                            tmp_path / "run")  # fmt: skip
        assert code == 2 and message in one_line(err)
    task = tmp_path / "task.jsonl"
    task.write_bytes(b'{"context": "\xff", "choices": ["a", "b"], "answer": 0}\n')
    code, err = run_cli(capsys, "eval", "fewshot", model_dir, task, "--shots", "0")
    assert code == 2 and str(task) in one_line(err)
    words = tmp_path / "words.txt"
    words.write_bytes(b"hello \xff world")
    code, err = run_cli(capsys, "eval", "fewshot", model_dir, "--task", "reversed-words", "--words", words)
    assert code == 2 and f"word list {words} is not UTF-8" in one_line(err)
    code, err = run_cli(capsys, "eval", "perplexity", model_dir, tmp_path)
    assert code == 2 and "is a folder, not a file" in one_line(err)
    code, err = run_cli(capsys, "prepare-data", corpus, "--tokenizer", tmp_path, "--output", tmp_path / "x")
    assert code == 2 and f"{tmp_path} holds no tokenizer" in one_line(err)
    broken = tmp_path / "broken-tokenizer"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{")
    code, err = run_cli(capsys, "prepare-data", corpus, "--tokenizer", broken, "--output", tmp_path / "x")
    assert code == 2 and f"the tokenizer in {broken} cannot be loaded" in one_line(err)


def test_a_corrupt_or_truncated_weights_file_is_one_line(tmp_path, capsys, model_dir):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = run_cli(capsys, "generate", damaged, "Hello", "--max-new-tokens", "2")
    assert code == 2 and f"the weights of {damaged} cannot be read" in one_line(err)
    text = tmp_path / "a.txt"
    text.write_text("Some text.")
    code, err = run_cli(capsys, "eval", "perplexity", damaged, text)
    assert code == 2 and "cannot be read" in one_line(err)


def test_a_mistyped_model_folder_is_reported_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    code, err = run_cli(capsys, "generate", "run/modle", "Hello")  # looks like org/name, but run/ is here
    assert code == 2 and "model folder run/modle does not exist" in one_line(err)


def test_a_prompt_of_invalid_utf8_is_one_line(capsys, model_dir):
    prompt = b"caf\xe9".decode("utf-8", "surrogateescape")  # what the shell hands over for Latin-1 bytes
    code, err = run_cli(capsys, "generate", model_dir, prompt)
    assert code == 2 and "the prompt is not valid UTF-8" in one_line(err)


def test_a_full_disk_is_an_environment_failure(tmp_path, capsys, corpus, monkeypatch):
    import errno

    import hf_gpt.data.tokenizer

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf_gpt.data.tokenizer, "write_text_atomic", full)
    code, err = run_cli(capsys, "train-tokenizer", corpus, "--vocab-size", "300", "--output", tmp_path / "tok")
    assert code == 1 and f"No space left on device (writing {tmp_path / 'tok'})" in one_line(err)
    assert list(tmp_path.iterdir()) == [corpus]  # the staging folder went with the failure


@pytest.mark.slow
def test_encoding_workers_exit_when_prepare_data_is_killed(tmp_path, trained_tokenizer_dir):
    big = tmp_path / "big.txt"
    big.write_text("The quick brown fox jumps over the lazy dog. " * 400_000, encoding="utf-8")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_gpt.cli", "prepare-data", str(big), "--tokenizer", str(trained_tokenizer_dir),
               "--output", str(out), "--workers", "2"]  # fmt: skip
    parent = subprocess.Popen(command, cwd=Path(__file__).parent.parent, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    children_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = [int(p) for p in children_file.read_text().split()] if children_file.exists() else []
    assert len(workers) >= 2, "the workers never started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "Z" not in status(pid) for pid in workers):
        assert time.monotonic() < deadline, "encoding workers outlived their killed parent"
        time.sleep(0.5)
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert staging  # the kill left its staging folder; the next run removes it
    subprocess.run([*command[:-2], "--workers", "1", "--val-fraction", "0"], check=True, capture_output=True,
                   cwd=Path(__file__).parent.parent)  # fmt: skip
    assert not any(p.exists() for p in staging) and (out / "manifest.json").is_file()


def status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"


def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback():
    script = Path(sys.executable).with_name("hf-gpt")  # the installed console script
    process = subprocess.Popen([script, "estimate", "gpt2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # torch and transformers are still importing
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_weights_that_would_run_code_or_are_corrupt_are_one_line(tmp_path, capsys, model_dir, monkeypatch):
    import shutil

    import torch
    from hf_gpt.conversion.gpt2 import main as gpt2_main
    from hf_gpt.conversion.nanogpt import main as nanogpt_main
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.chdir(tmp_path)
    source = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300, bos_token_id=0, eos_token_id=0)
                    ).save_pretrained(source)  # fmt: skip
    (source / "model.safetensors").unlink()
    torch.save({"weights": RunsCode()}, source / "pytorch_model.bin")
    assert gpt2_main(["import", str(source), str(tmp_path / "out")]) == 2
    assert "are not plain tensors (Trying to load unsupported GLOBAL" in one_line(capsys.readouterr().err)
    assert nanogpt_main(["import", str(source / "pytorch_model.bin"), str(tmp_path / "out")]) == 2
    assert "nothing in it was run" in one_line(capsys.readouterr().err)
    assert not (tmp_path / "PWNED").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(model_dir, damaged)
    (damaged / "model.safetensors").write_bytes(b"garbage")
    assert gpt2_main(["export", str(damaged), str(tmp_path / "out")]) == 2
    assert f"the weights of {damaged} cannot be read" in one_line(capsys.readouterr().err)
    rows = tmp_path / "train.jsonl"
    rows.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2}) + "\n" for i in range(20)))
    code, err = run_cli(capsys, "finetune", damaged, rows, "--task", "classification", "--output", tmp_path / "ft")
    assert code == 2 and f"the weights of {damaged} cannot be read" in one_line(err)


def test_an_existing_output_under_a_read_only_parent_is_replaced_in_place(tmp_path, monkeypatch):
    import hf_gpt.files

    folder = tmp_path / "out"
    with atomic_directory(folder, kind="prepare-data") as staging:
        (staging / "old.bin").write_bytes(b"old")
    real_access = os.access
    # Root may write anywhere, so the read-only parent is simulated where the check asks.
    monkeypatch.setattr(hf_gpt.files.os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    with pytest.raises(ValueError, match=f"cannot write to {tmp_path}"):
        check_output_dir(tmp_path / "new", kind="prepare-data")
    with atomic_directory(folder, overwrite=True, kind="prepare-data") as staging:
        assert staging.parent == folder
        (staging / "new.bin").write_bytes(b"new")
    assert sorted(p.name for p in folder.iterdir()) == [RECORD, "new.bin"]
    assert read_record(folder)["files"] == ["new.bin"]


@pytest.mark.parametrize(
    "options, message",
    [({"min_frequency": -3}, "min_frequency must be an integer >= 0"),
     ({"model_max_length": 0}, "model_max_length must be an integer >= 1")],
)  # fmt: skip
def test_the_library_refuses_the_same_numbers(tmp_path, corpus, options, message):
    from hf_gpt.data.tokenizer import train_bpe_tokenizer

    with pytest.raises(ValueError, match=message):
        train_bpe_tokenizer([corpus], 300, tmp_path / "tok", show_progress=False, **options)
    assert not (tmp_path / "tok").exists()


def test_a_damaged_run_json_is_named_on_resume(tmp_path, capsys, corpus, trained_tokenizer_dir):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"output_dir": ')  # cut short by a full disk, say
    code, err = run_cli(capsys, "pretrain", corpus, "--tokenizer", trained_tokenizer_dir, "--output", run, "--resume")
    assert code == 2 and f"the run's arguments {run / 'run.json'}: not valid JSON" in one_line(err)
