"""`hf-gpt eval perplexity` and `hf-gpt eval fewshot`: load a model, score, print a table, write a JSON file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .evaluation import evaluate_task, perplexity, results_record, results_table
from .fewshot import FewShotTask, check_shots, read_task
from .files import write_text_atomic
from .generate import load_for_generation
from .synthetic_tasks import DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE, TASK_NAMES, make_task


def read_texts(files: Sequence[str | os.PathLike]) -> list[str]:
    texts = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"text file {path} does not exist")
        try:
            texts.append(path.read_bytes().decode("utf-8"))  # as on disk: CRLF counts two bytes
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return texts


def write_json(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def eval_perplexity(
    model: str,
    files: Sequence[str | os.PathLike],
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    output: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """Perplexity of each file as one document; prints the figures and, with `output`, writes them as JSON."""
    texts = read_texts(files)
    lm, tokenizer = load_for_generation(model, trust_remote_code)
    result = perplexity(lm, tokenizer, texts, block_size=block_size, stride=stride, batch_size=batch_size)
    figures = result.as_dict()
    print(f"{model}: {len(texts)} file(s), {result.tokens:,} tokens, block {result.block_size}, stride {result.stride}")
    print(
        f"loss {result.loss:.4f} nats/token, perplexity {result.perplexity:.3f}, "
        f"{result.bits_per_byte:.4f} bits/byte, {result.nats_per_char:.4f} nats/char"
    )
    if output:
        record = {"model": str(model), "files": [str(f) for f in files], **figures}
        print(f"results written to {write_json(output, record)}")
    return figures


def load_fewshot_task(
    task: str,
    *,
    words_file: str | os.PathLike | None = None,
    test_size: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    description: str | None = None,
) -> FewShotTask:
    """A built-in synthetic task by name (see `hf_gpt.synthetic_tasks.TASK_NAMES`), or a JSONL task file."""
    if task in TASK_NAMES:
        sizes = {"test_size": test_size or DEFAULT_TEST_SIZE, "train_size": train_size or DEFAULT_TRAIN_SIZE}
        loaded = make_task(task, seed=seed, words_file=words_file, **sizes)
    elif Path(task).suffix in (".jsonl", ".json") or Path(task).exists():
        loaded = read_task(task)
    else:
        raise ValueError(f"{task!r} is neither a task file (.jsonl) nor a built-in task: {', '.join(TASK_NAMES)}")
    if description is not None:
        loaded.description = description
    return loaded


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--shots must be comma-separated counts such as 0,1,5; got {text!r}") from None
    if not shots or min(shots) < 0:
        raise ValueError(f"--shots must be counts >= 0, such as 0,1,5; got {text!r}")
    return list(dict.fromkeys(shots))  # each count once


def eval_fewshot(
    model: str,
    task: str,
    *,
    shots: Sequence[int] = (0, 1, 5),
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 8,
    words_file: str | os.PathLike | None = None,
    description: str | None = None,
    output: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Score `task` at each shot count; prints a table and writes the results as JSON (default: fewshot-TASK.json
    in the current directory)."""
    loaded = load_fewshot_task(task, words_file=words_file, seed=seed, description=description)
    for count in shots:  # before loading the model: a task without enough train examples fails fast
        check_shots(loaded, count)
    lm, tokenizer = load_for_generation(model, trust_remote_code)
    options = {"seed": seed, "batch_size": batch_size, "limit": limit}
    results = [evaluate_task(lm, tokenizer, loaded, count, **options) for count in shots]
    print(results_table(loaded, results))
    record = results_record(loaded, results, model=str(model), seed=seed)
    path = write_json(output or f"fewshot-{loaded.name}.json", record)
    print(f"results written to {path}")
    return record
