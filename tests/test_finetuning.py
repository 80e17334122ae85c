"""GPT-1 style fine-tuning: task transforms in the tokenizer, the four task shapes, results that load."""

import json
import random
import subprocess

import pytest
import torch
from conftest import seeded, tiny_config
from huggingface_hub import ModelCard
from test_tokenizer import console_script
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_gpt import HfGptDoubleHeadsModel, HfGptForCausalLM
from hf_gpt.finetuning import FinetuneArguments, finetune, task_forward
from hf_gpt.tasks import DELIMITER, EXTRACT, START, add_task_tokens, get_task

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
        return task_forward(model, model.get_input_embeddings().weight, batch, task, 0.0)[0]

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
        ([{"sentence": "x", "label": "a"}] * 10, "classification", r"row 1: no column 'text' for text"),
        ([{"context": "x", "choices": ["a", "b"], "label": 2}] * 10, "multiple_choice", "label 2 is not the index"),
        ([{"text": "x", "label": "a"}] * 10, "summarisation", "unknown task 'summarisation'"),
    ],
)
def test_bad_task_files_are_named(base_model, tmp_path, rows, task, message):
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        finetune(tiny_run(tmp_path, base_model, train, task))
    assert not (tmp_path / "out").exists()
