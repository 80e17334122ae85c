"""`hf-gpt eval perplexity` and `hf-gpt eval fewshot`: load a model, score, print a table, write a JSON file."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import check_output_file, read_text_file, write_output_file
from ..generation.loading import load_causal_lm
from .fewshot import FewShotTask, check_shots, read_task
from .scoring import evaluate_task, perplexity, results_record, results_table
from .synthetic import DEFAULT_TEST_SIZE, DEFAULT_TRAIN_SIZE, TASK_NAMES, make_task


def read_texts(files: Sequence[str | os.PathLike]) -> list[str]:
    return [read_text_file(file) for file in files]  # as on disk: CRLF counts two bytes


class ResultsFile:
    """Where a command's JSON results go, checked before the work: an existing file is replaced only when it is
    this command's earlier results, and never when it is one of the inputs or inside the model's folder."""

    def __init__(self, path: str | os.PathLike, command: str, inputs: Sequence[str | os.PathLike]):
        self.path, self.command = Path(path), command
        self.inputs = [p for p in inputs if p is not None]
        self.mark = f'"written_by": "{command}"'  # json.dumps writes the first key so
        check_output_file(self.path, kind=command, inputs=self.inputs, mark=self.mark)

    def write(self, record: dict[str, Any]) -> Path:
        text = json.dumps({"written_by": self.command, **record}, indent=2) + "\n"
        return write_output_file(self.path, text, kind=self.command, inputs=self.inputs, mark=self.mark)


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
    results_file = ResultsFile(output, "hf-gpt eval perplexity", [model, *files]) if output else None
    texts = read_texts(files)
    lm, tokenizer = load_causal_lm(model, trust_remote_code)
    result = perplexity(lm, tokenizer, texts, block_size=block_size, stride=stride, batch_size=batch_size)
    figures = result.as_dict()
    print(f"{model}: {len(texts)} file(s), {result.tokens:,} tokens, block {result.block_size}, stride {result.stride}")
    print(
        f"loss {result.loss:.4f} nats/token, perplexity {result.perplexity:.3f}, "
        f"{result.bits_per_byte:.4f} bits/byte, {result.nats_per_char:.4f} nats/char"
    )
    if output:
        record = {"model": str(model), "files": [str(f) for f in files], **figures}
        print(f"results written to {results_file.write(record)}")
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
    """A built-in synthetic task by name (see `hf_gpt.eval.synthetic.TASK_NAMES`), or a JSONL task file."""
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
    results_file = ResultsFile(
        output or f"fewshot-{loaded.name}.json", "hf-gpt eval fewshot", [model, task, words_file]
    )
    for count in shots:  # before loading the model: a task without enough train examples fails fast
        check_shots(loaded, count)
    lm, tokenizer = load_causal_lm(model, trust_remote_code)
    options = {"seed": seed, "batch_size": batch_size, "limit": limit}
    results = [evaluate_task(lm, tokenizer, loaded, count, **options) for count in shots]
    print(results_table(loaded, results))
    record = results_record(loaded, results, model=str(model), seed=seed)
    path = results_file.write(record)
    print(f"results written to {path}")
    return record
