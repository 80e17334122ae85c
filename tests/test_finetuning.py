"""GPT-1 style fine-tuning: task transforms in the tokenizer, the four task shapes, results that load."""

import json
import math
import random
import subprocess

import pytest
import torch
from conftest import seeded, tiny_config
from huggingface_hub import ModelCard
from test_tokenizer import console_script
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_gpt import HfGptDoubleHeadsModel, HfGptForCausalLM
from hf_gpt.train.finetuning import FinetuneArguments, finetune, task_forward
from hf_gpt.train.pretraining import TrainingDiverged
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
    assert (tmp_path / "out" / "model.safetensors").is_file()


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


def test_a_non_finite_loss_stops_before_the_update_naming_the_step(base_model, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(20, seed=9))  # 16 rows: 4 steps
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at step 2 of 4 \(epoch 1\); .*nothing was written"):
        finetune(tiny_run(tmp_path, base_model, train, "classification", **DIVERGING))
    assert not (tmp_path / "out").exists()


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
    assert not (tmp_path / "out").exists()


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
    assert not (tmp_path / "out").exists()
