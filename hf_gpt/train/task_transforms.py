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

import json
from collections.abc import Sequence
from dataclasses import dataclass
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


TASK_NAMES = tuple(sorted({*TASKS, *(name.replace("_", "-") for name in TASKS)}))  # multiple-choice too


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


def task_examples(
    records: Sequence[tuple[str, dict[str, Any]]],
    task: Task,
    columns: dict[str, list[str]] | None = None,
    source: str = "data",
) -> list[tuple[str, dict[str, Any]]]:
    """("path:line", {role: value}) for each record of `read_records`, its values checked.

    `columns` maps a role to the column(s) holding it (default: the role's own name); several columns for
    `choices` are gathered into one list. Inputs are strings; `choices` a list of at least 2 strings.
    The label of a classification, entailment or similarity example is its class name: a string, an integer
    or a boolean, kept as written (1 becomes "1", true "true"). A float is refused, 1.0 included: in the
    Hugging Face convention (run_glue) a float label means regression, which fine-tuning here does not do.
    A multiple-choice label is the right choice's index: an integer, or its digits as a string (as CSV has it).
    """
    columns = {role: (columns or {}).get(role, [role]) for role in task.roles}
    examples = []
    for where, row in records:
        example = {}
        for role, names in columns.items():
            missing = [n for n in names if n not in row]
            if missing:
                raise ValueError(f"{where}: no column {missing[0]!r} for {role} (has {sorted(row)})")
            nulls = [n for n in names if row[n] is None]
            if nulls:
                raise ValueError(f"{where}: {nulls[0]} is null; every example needs its {role}")
            example[role] = [row[n] for n in names] if len(names) > 1 else row[names[0]]
        for role in task.inputs:
            example[role] = checked_input(example[role], role, where)
        if task.name == "multiple_choice":
            example["label"] = choice_label(example["label"], len(example["choices"]), where)
        else:
            example["label"] = class_label(example["label"], where)
        examples.append((where, example))
    if not examples:
        raise ValueError(f"{source} has no examples")
    return examples


def checked_input(value: Any, role: str, where: str) -> str | list[str]:
    if role == "choices":
        if isinstance(value, str):
            raise ValueError(f"{where}: choices must be a list, or give several columns")
        if not (isinstance(value, list) and len(value) >= 2 and all(isinstance(c, str) for c in value)):
            raise ValueError(f"{where}: choices must be a list of at least 2 strings, got {value!r}")
    elif not isinstance(value, str):
        raise ValueError(f"{where}: {role} must be a string, got {value!r}")
    return value


def class_label(value: Any, where: str) -> str:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: label is empty; every example needs its label")
        return value
    if isinstance(value, int):  # bool included
        return json.dumps(value)  # as written in JSON: 1, true
    regression = " (a float label means regression, which fine-tuning does not do)" if isinstance(value, float) else ""
    raise ValueError(f"{where}: label {value!r} is not a class name: write classes as strings or integers{regression}")


def choice_label(value: Any, count: int, where: str) -> int:
    if isinstance(value, str) and value.strip().isdecimal() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: label {value!r} must be the index of the right choice, an integer")
    if not 0 <= value < count:
        raise ValueError(f"{where}: label {value} is not the index of one of its {count} choices")
    return value


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
