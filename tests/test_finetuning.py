"""GPT-1 style fine-tuning: task transforms in the tokenizer, the four task shapes, results that load."""

import json
import math
import random
import signal
import subprocess

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import (
    check_killed_and_resumed_like_whole,
    check_two_processes_train_like_one,
    device_reads_of_a_step,
    run_metrics,
    seeded,
    step_losses,
    tiny_config,
    wait_for,
)
from huggingface_hub import ModelCard
from test_tokenizer import console_script
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_gpt import HfGptConfig, HfGptDoubleHeadsModel, HfGptForCausalLM
from hf_gpt.train.checkpoints import complete_checkpoints
from hf_gpt.train.finetuning import FinetuneArguments, finetune, task_forward
from hf_gpt.train.loop import TrainingDiverged
from hf_gpt.train.task_transforms import DELIMITER, EXTRACT, START, add_task_tokens, get_task

WORDS = "the a quick brown fox jumps over lazy dog cat sat on mat it was best of times".split()


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def base_model(tmp_path_factory, trained_tokenizer):
    """A small 'pretrained' GPT (random weights) with the session's tokenizer."""
    folder = tmp_path_factory.mktemp("finetune") / "base"
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, initializer_range=0.02)
    seeded(HfGptForCausalLM, config, seed=0).save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def sentiment_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["positive", "negative"])
        word = "good" if label == "positive" else "bad"
        rows.append({"text": f"{words(rng, 3)} {word} {words(rng, 3)}", "label": label})
    return rows


def tiny_run(tmp_path, base_model, train, task, **overrides) -> FinetuneArguments:
    values = dict(
        model=str(base_model),
        train=train,
        output_dir=str(tmp_path / "out"),
        task=task,
        epochs=4,
        batch_size=16,
        learning_rate=3e-3,
        warmup_ratio=0.1,
        val_fraction=0.2,
    )
    return FinetuneArguments(**{**values, **overrides})


def test_the_tokenizer_applies_gpt1_input_transforms(base_model, tmp_path):
    tokenizer = add_task_tokens(AutoTokenizer.from_pretrained(base_model))
    start, delim, extract = tokenizer.convert_tokens_to_ids([START, DELIMITER, EXTRACT])
    plain = AutoTokenizer.from_pretrained(base_model)
    a, b = plain("the cat")["input_ids"], plain(" sat on")["input_ids"]
    assert tokenizer("the cat")["input_ids"] == [start, *a, extract]
    assert tokenizer("the cat", " sat on")["input_ids"] == [start, *a, delim, *b, extract]
    tokenizer.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok")  # the transform travels with the folder
    assert again("the cat", " sat on")["input_ids"] == [start, *a, delim, *b, extract]
    truncated = again("the cat " * 50, " sat on", truncation="longest_first", max_length=12)["input_ids"]
    assert len(truncated) == 12 and truncated[0] == start and truncated[-1] == extract and delim in truncated


def test_classification_learns_and_loads_with_auto_classes_and_pipeline(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(240, seed=1))
    output = finetune(tiny_run(tmp_path, base_model, train, "classification"))
    results = json.loads((output / "eval_results.json").read_text())
    assert results["val_accuracy"] >= 0.9 and results["val_examples"] == 48  # chance is 0.5
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.vocab_size == 703  # three task tokens added
    classify = pipeline("text-classification", model=str(output))
    held_out = sentiment_rows(40, seed=99)
    predicted = [p["label"] for p in classify([r["text"] for r in held_out])]
    assert sum(p == r["label"] for p, r in zip(predicted, held_out, strict=True)) >= 36
    card = (output / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "Validation accuracy" in card
    (result,) = ModelCard.load(output / "README.md").data.eval_results
    assert (result.metric_type, result.metric_value) == ("accuracy", round(results["val_accuracy"], 4))
    assert result.dataset_name == "train.jsonl (held-out 20%)"


def test_entailment_reads_both_segments(base_model, tmp_path):
    rng = random.Random(2)
    rows = []
    for _ in range(400):
        colour, claim = rng.choice(["red", "blue"]), rng.choice(["red", "blue"])
        rows.append({"premise": f"{words(rng, 3)} is {colour}", "hypothesis": f"it is {claim}",
                     "label": "entailment" if colour == claim else "contradiction"})  # fmt: skip
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    output = finetune(tiny_run(tmp_path, base_model, train, "entailment", epochs=8))
    accuracy = json.loads((output / "eval_results.json").read_text())["val_accuracy"]
    assert accuracy >= 0.9  # neither segment alone says anything: chance is 0.5
    classify = pipeline("text-classification", model=str(output))
    assert classify({"text": "the lazy dog is red", "text_pair": "it is red"})["label"] == "entailment"
    assert classify({"text": "the lazy dog is red", "text_pair": "it is blue"})["label"] == "contradiction"


def test_similarity_scores_both_orders(base_model, tmp_path):
    rng = random.Random(3)
    rows = [{"text_a": words(rng, 4), "text_b": words(rng, 4), "label": rng.choice(["0", "1"])} for _ in range(40)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    output = finetune(tiny_run(tmp_path, base_model, train, "similarity", epochs=1))
    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    task = get_task("similarity")

    def scores(a, b):
        both = [tokenizer(a, b)["input_ids"], tokenizer(b, a)["input_ids"]]
        length = max(map(len, both))
        ids = torch.tensor([[s + [0] * (length - len(s)) for s in both]])
        mask = torch.tensor([[[1] * len(s) + [0] * (length - len(s)) for s in both]])
        batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0])}
        scored = task_forward(model, batch, task, with_lm=False)[0]
        # The loaded model takes the (batch, sequences, length) pair itself: its scores are the sum of each order's.
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, scored)
        separately = sum(model(input_ids=ids[:, i], attention_mask=mask[:, i]).logits for i in range(2))
        torch.testing.assert_close(scored, separately)
        return scored

    torch.testing.assert_close(scores("the cat sat", "on a mat"), scores("on a mat", "the cat sat"))


def test_multiple_choice_learns(base_model, tmp_path):
    rng = random.Random(4)
    rows = []
    for _ in range(240):
        answer = rng.randrange(3)
        choices = [f"{words(rng, 2)} {'good' if i == answer else 'bad'}" for i in range(3)]
        rows.append({"context": f"which is good? {words(rng, 3)}", "choices": choices, "label": answer})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    output = finetune(tiny_run(tmp_path, base_model, train, "multiple-choice"))
    assert json.loads((output / "eval_results.json").read_text())["val_accuracy"] >= 0.9  # chance is 1/3
    model = HfGptDoubleHeadsModel.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    encoded = [tokenizer("which is good? the cat", c)["input_ids"] for c in ("cat bad", "dog good", "mat bad")]
    length = max(map(len, encoded))
    ids = torch.tensor([[s + [0] * (length - len(s)) for s in encoded]])
    mask = torch.tensor([[[1] * len(s) + [0] * (length - len(s)) for s in encoded]])
    with torch.no_grad():
        assert model(input_ids=ids, attention_mask=mask).mc_logits.argmax(-1).item() == 1


def test_cli_csv_with_renamed_columns(base_model, tmp_path):
    rows = sentiment_rows(60, seed=5)
    csv = tmp_path / "train.csv"
    csv.write_text("sentence,gold\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows), encoding="utf-8")
    done = subprocess.run(
        [console_script(), "finetune", str(base_model), str(csv), "--task", "classification", "--output",
         str(tmp_path / "out"), "--column", "text=sentence", "--column", "label=gold", "--epochs", "1",
         "--batch-size", "8", "--lr", "1e-3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "validation accuracy" in done.stdout and f"model saved to {tmp_path / 'out'}" in done.stdout
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "rows, task, message",
    [
        ([{"text": "x", "label": "a"}] * 10, "classification", r"a single label \['a'\]"),
        ([{"sentence": "x", "label": "a"}] * 10, "classification", r"train.jsonl:1: no column 'text' for text"),
        ([{"context": "x", "choices": ["a", "b"], "label": 2}] * 10, "multiple_choice", "label 2 is not the index"),
        ([{"text": "x", "label": "a"}] * 10, "summarisation", "unknown task 'summarisation'"),
    ],
)
def test_bad_task_files_are_named(base_model, tmp_path, rows, task, message):
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        finetune(tiny_run(tmp_path, base_model, train, task))
    assert not (tmp_path / "out").exists()


CSV_LINES = ["text,label", *(f"{r['text']},{r['label']}" for r in sentiment_rows(8, seed=6))]
CHOICES = {"context": "which?", "choices": ["a", "b", "c"], "label": 1}


def jsonl_lines(*rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def csv_lines(*lines) -> str:
    return "".join(line + "\n" for line in lines)


@pytest.mark.parametrize(
    "name, text, task, message",
    [
        # A blank line is still a line: the bad row is the file's line 7.
        ("train.jsonl", jsonl_lines(*sentiment_rows(5, seed=7)) + "\n" + jsonl_lines({"text": "x", "label": None}),
         "classification", r"train.jsonl:7: label is null; every example needs its label"),
        ("train.jsonl", jsonl_lines(*sentiment_rows(4, seed=7), {"text": None, "label": "positive"}),
         "classification", r"train.jsonl:5: text is null"),
        ("train.jsonl", jsonl_lines(*sentiment_rows(4, seed=7), {"text": "x", "label": 0.5}),
         "classification", r"train.jsonl:5: label 0.5 is not a class name.*regression"),
        # csv.DictReader read the rest of the file into the open quote's field, and the row as class "None".
        ("train.csv", csv_lines(*CSV_LINES[:3], '"an open quote,positive', *CSV_LINES[3:]),
         "classification", r"train.csv:4: not valid CSV \(unexpected end of data; a quote left open\?\)"),
        ("train.csv", csv_lines(*CSV_LINES, "an unquoted, comma,negative"),
         "classification", r"train.csv:10: 3 fields, but the header has 2"),
        ("train.jsonl", jsonl_lines(*[CHOICES] * 9, {**CHOICES, "label": 1.7}),
         "multiple_choice", r"train.jsonl:10: label 1.7 must be the index of the right choice"),
        ("train.jsonl", jsonl_lines(*[CHOICES] * 9, {**CHOICES, "label": None}),
         "multiple_choice", r"train.jsonl:10: label is null"),
        ("train.jsonl", jsonl_lines({**CHOICES, "choices": 5}, *[CHOICES] * 9),
         "multiple_choice", r"train.jsonl:1: choices must be a list of at least 2 strings, got 5"),
        ("train.jsonl", jsonl_lines(*[CHOICES] * 9, {**CHOICES, "choices": ["a", "b"]}),
         "multiple_choice", r"train.jsonl:10: 2 choices, but .*train.jsonl:1 has 3; every example needs the same"),
    ],
)  # fmt: skip
def test_bad_rows_are_named_by_file_and_line(base_model, tmp_path, name, text, task, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):  # the file validates itself: no held-out split reorders its rows
        finetune(tiny_run(tmp_path, base_model, str(path), task, validation=str(path)))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"learning_rate": 0.0}, r"learning_rate must be a finite number > 0, got 0.0"),
        ({"learning_rate": math.inf}, r"learning_rate must be a finite number > 0, got inf"),
        ({"weight_decay": -1.0}, r"weight_decay must be a finite number >= 0, got -1.0"),
        ({"weight_decay": math.nan}, r"weight_decay must be a finite number >= 0, got nan"),
        ({"lm_weight": math.nan}, r"lm_weight must be a finite number >= 0, got nan"),
        ({"max_length": 0}, r"max_length must be an integer >= 1 or None, got 0"),
        ({"seed": -1}, r"seed must be an integer in \[0, .*\], got -1"),
    ],
)
def test_bad_numbers_are_refused_by_name(base_model, tmp_path, override, message):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, seed=8))
    with pytest.raises(ValueError, match=message):
        finetune(tiny_run(tmp_path, base_model, train, "classification", **override))
    assert not (tmp_path / "out").exists()


# Adam moves every weight by about the learning rate: 1e30 makes the second step's forward overflow.
DIVERGING = dict(learning_rate=1e30, warmup_ratio=0.0, epochs=1, batch_size=4)


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, seed=9))  # 16 rows: 4 steps
    with pytest.raises(
        TrainingDiverged, match=r"the loss is nan at step 2 of 4; training stopped, the last good checkpoint is .*01"
    ):
        finetune(tiny_run(tmp_path, base_model, train, "classification", save_every=1, **DIVERGING))
    assert [p.name for p in complete_checkpoints(tmp_path / "out" / "checkpoints")] == ["step-00000001"]
    assert not (tmp_path / "out" / "model").exists()


def test_non_finite_weights_are_never_saved(base_model, tmp_path):
    # An inf in a position no example reaches: every loss is finite, and training (no gradient, no decay
    # for embeddings) leaves the inf where it is, to be caught when saving.
    model = HfGptForCausalLM.from_pretrained(base_model)
    with torch.no_grad():
        model.transformer.wpe.weight[-1, 0] = math.inf
    model.save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(base_model).save_pretrained(tmp_path / "base")
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, seed=10))
    with pytest.raises(TrainingDiverged, match=r"1 weight tensors are not finite .*wpe.weight.*nothing was written"):
        finetune(tiny_run(tmp_path, tmp_path / "base", train, "classification", epochs=1, max_length=32))
    assert not (tmp_path / "out" / "model").exists()


def test_cli_exits_1_with_one_line_when_fine_tuning_diverges(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, seed=9))
    done = subprocess.run(
        [console_script(), "finetune", str(base_model), train, "--task", "classification", "--output",
         str(tmp_path / "out"), "--lr", "1e30", "--warmup-ratio", "0", "--epochs", "1", "--batch-size", "4"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1].startswith("hf-gpt finetune: the loss is nan at step 2 of 5")  # 18 rows
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "model").exists()


# ---------------------------------------------------------------------------------------------------------------
# The training loop's guarantees, as pretraining has them (see test_training.py)


def varied_rows(count: int, seed: int) -> list[dict]:
    """Sentiment rows of 1 to 12 words: sequences of unequal length, so a loss normalised per micro batch would
    weigh tokens differently from one normalised per step."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["positive", "negative"])
        rows.append({"text": f"{words(rng, rng.randint(0, 6))} {'good' if label == 'positive' else 'bad'} "
                             f"{words(rng, rng.randint(0, 5))}", "label": label})  # fmt: skip
    return rows


def test_gradient_accumulation_gives_the_same_fine_tuning(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(40, seed=11))  # 32 kept: 4 steps an epoch
    common = dict(epochs=2, batch_size=8, log_every=1, log_with="none")
    finetune(tiny_run(tmp_path / "a", base_model, train, "classification", **common))
    AcceleratorState._reset_state(reset_partial_state=True)
    finetune(tiny_run(tmp_path / "b", base_model, train, "classification", micro_batch_size=2, **common))
    whole, accumulated = step_losses(tmp_path / "a" / "out"), step_losses(tmp_path / "b" / "out")
    assert whole.keys() == accumulated.keys() == set(range(1, 9))
    for step in whole:
        assert accumulated[step][0] == pytest.approx(whole[step][0], rel=1e-5)
        assert accumulated[step][1] == whole[step][1]
    # Evaluated at each epoch's end, kept in the results and the metrics.
    assert [m["step"] for m in run_metrics(tmp_path / "a" / "out") if "val_accuracy" in m] == [4, 8]
    results = json.loads((tmp_path / "a" / "out" / "model" / "eval_results.json").read_text())
    assert [(h["step"], h["epoch"]) for h in results["history"]] == [(4, 1.0), (8, 2.0)]


def test_a_fine_tuning_step_reads_the_device_once_whatever_the_accumulation(base_model, tmp_path):
    """As pretraining's (see test_training.py): token ids from the model's own tokenizer, masks built on the CPU,
    and the LM term's normaliser counted on the CPU, so a step of 4 micro steps reads the device once."""
    from hf_gpt.train.finetuning import Finetuning

    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(40, seed=15))
    loop = Finetuning(tiny_run(tmp_path, base_model, train, "classification", batch_size=8, micro_batch_size=2))
    reads, (loss, grad_norm, stopping) = device_reads_of_a_step(loop)
    assert reads == ["tolist"]
    assert math.isfinite(loss) and grad_norm > 0 and stopping is False


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory, trained_tokenizer):
    """A 'pretrained' GPT with dropout everywhere: a resumed run must restore the random state to match."""
    folder = tmp_path_factory.mktemp("finetune") / "dropout"
    dropout = {"embd_pdrop": 0.1, "attn_pdrop": 0.1, "resid_pdrop": 0.1, "classifier_dropout": 0.1}
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, initializer_range=0.02)
    seeded(HfGptForCausalLM, HfGptConfig(**{**config.to_dict(), **dropout}), seed=0).save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


def cli_finetune(model, train, output, *extra) -> list[str]:
    return [
        console_script(), "finetune", str(model), str(train), "--task", "classification", "--output", str(output),
        "--batch-size", "8", "--lr", "1e-3", "--warmup-ratio", "0.1", "--log-every", "1", "--log-with", "none",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_weights_of_an_uninterrupted_fine_tune(dropout_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(100, seed=12))  # 90 kept: 12 steps an epoch
    steps = ["--epochs", "8", "--save-every", "10", "--keep-checkpoints", "2", "--micro-batch-size", "4"]
    whole, cut = check_killed_and_resumed_like_whole(
        lambda output: cli_finetune(dropout_model, train, output, *steps), tmp_path, steps=90
    )
    # The validation history survives the kill: every epoch's end, once.
    history = json.loads((cut / "model" / "eval_results.json").read_text())["history"]
    assert history == json.loads((whole / "model" / "eval_results.json").read_text())["history"]
    assert [h["step"] for h in history] == [math.ceil(90 * epoch / 8) for epoch in range(1, 9)]  # 12, 23, ... 90
    assert [p.name for p in complete_checkpoints(cut / "checkpoints")] == ["step-00000080", "step-00000090"]


@pytest.mark.slow
def test_ctrl_c_saves_a_fine_tuned_model_that_loads(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(100, seed=13))
    run = tmp_path / "run"
    process = subprocess.Popen(
        cli_finetune(base_model, train, run, "--epochs", "100000", "--save-every", "5"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(run / "checkpoints" / "step-00000005", process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted at step" in stdout and f"model saved to {run / 'model'}" in stdout
    stopped_at = int(stdout.split("interrupted at step ")[1].split(":")[0])
    assert complete_checkpoints(run / "checkpoints")[-1].name == f"step-{stopped_at:08d}"  # resumable from there
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert "(interrupted)" in (run / "model" / "README.md").read_text()


@pytest.mark.slow
def test_two_processes_fine_tune_like_one(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(40, seed=14))  # 36 kept: 4.5 steps an epoch
    steps = ["--epochs", "2", "--val-fraction", "0.1"]
    runs = check_two_processes_train_like_one(
        lambda output: cli_finetune(base_model, train, output, *steps), tmp_path, steps=9
    )
    scores = [json.loads((run / "model" / "eval_results.json").read_text())["val_accuracy"] for run in runs]
    assert scores[0] == scores[1]
