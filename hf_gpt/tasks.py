"""GPT-1's task input transforms (Radford et al. 2018, section 3.3): structured inputs as one token sequence.

    classification   <|start|> text <|extract|>
    entailment       <|start|> premise <|delim|> hypothesis <|extract|>
    similarity       both orders, <|start|> a <|delim|> b <|extract|> and <|start|> b <|delim|> a <|extract|>,
                     their scores summed
    multiple choice  one sequence per answer: <|start|> context <|delim|> answer <|extract|>

The head reads the hidden state at <|extract|> (the last real token). The transforms live in the
tokenizer's post-processor, so the saved tokenizer applies them by itself: `tokenizer(text)` and
`tokenizer(premise, hypothesis)` give the sequences above, and so does the text-classification pipeline.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import processors
from transformers import PreTrainedTokenizerBase

START, DELIMITER, EXTRACT = "<|start|>", "<|delim|>", "<|extract|>"


@dataclass(frozen=True)
class Task:
    name: str
    inputs: tuple[str, ...]  # the roles of the input fields, in order
    pipeline_tag: str

    @property
    def roles(self) -> tuple[str, ...]:
        return (*self.inputs, "label")


TASKS = {
    task.name: task
    for task in (
        Task("classification", ("text",), "text-classification"),
        Task("entailment", ("premise", "hypothesis"), "text-classification"),
        Task("similarity", ("text_a", "text_b"), "text-classification"),
        Task("multiple_choice", ("context", "choices"), "multiple-choice"),
    )
}


def get_task(name: str) -> Task:
    task = TASKS.get(name.replace("-", "_"))
    if task is None:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return task


def add_task_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add the start / delimiter / extract tokens and make the tokenizer wrap its inputs with them."""
    tokenizer.add_tokens([START, DELIMITER, EXTRACT], special_tokens=True)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (START, DELIMITER, EXTRACT)}
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {EXTRACT}",
        pair=f"{START} $A {DELIMITER} $B {EXTRACT}",
        special_tokens=list(ids.items()),
    )
    return tokenizer


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL (one object per line) or CSV (with a header) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"task file {path} must be .jsonl (one JSON object per line) or .csv")
    return [record for _, record in jsonl_objects(path)]


def jsonl_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("path:line", object) for each non-blank line; a line that is not a JSON object is a ValueError naming it."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def task_examples(
    rows: Sequence[dict[str, Any]], task: Task, columns: dict[str, list[str]] | None = None, where: str = "data"
) -> list[dict[str, Any]]:
    """Each row as {role: value} for the task's roles. `columns` maps a role to the column(s) holding it
    (default: the role's own name); several columns for `choices` are gathered into one list."""
    columns = {role: (columns or {}).get(role, [role]) for role in task.roles}
    examples = []
    for number, row in enumerate(rows, 1):
        example = {}
        for role, names in columns.items():
            missing = [n for n in names if n not in row]
            if missing:
                raise ValueError(f"{where}, row {number}: no column {missing[0]!r} for {role} (has {sorted(row)})")
            value = [row[n] for n in names] if len(names) > 1 else row[names[0]]
            if role == "choices" and isinstance(value, str):
                raise ValueError(f"{where}, row {number}: choices must be a list, or give several columns")
            example[role] = value
        examples.append(example)
    if not examples:
        raise ValueError(f"{where} has no examples")
    return examples


def encode_example(
    tokenizer: PreTrainedTokenizerBase, task: Task, example: dict[str, Any], max_length: int
) -> list[list[int]]:
    """The token sequences of one example: one, two (similarity) or one per choice."""

    def encode(first: str, second: str | None = None) -> list[int]:
        strategy = "only_first" if task.name == "multiple_choice" else "longest_first"
        return tokenizer(first, second, truncation=strategy, max_length=max_length)["input_ids"]

    if task.name == "classification":
        return [encode(example["text"])]
    if task.name == "entailment":
        return [encode(example["premise"], example["hypothesis"])]
    if task.name == "similarity":
        return [encode(example["text_a"], example["text_b"]), encode(example["text_b"], example["text_a"])]
    return [encode(example["context"], choice) for choice in example["choices"]]
