"""Few-shot tasks: the JSONL format, and k-shot prompts built from a task's train split (GPT-3, section 2).

One example per line; `split` is "train" (a pool for the shots) or "test" (scored; the default):

    {"context": "The capital of France is", "choices": ["Paris", "Rome"], "answer": 0}   multiple choice
    {"prompt": "Q: What is 48 plus 76? A:", "target": "124", "split": "train"}          completion

A prompt is the task's description (if any), then k solved train examples, then the test example's
context, joined by `example_separator`; an answer follows its context after `target_delimiter`. So the
model scores (or generates) " Paris" after "...The capital of France is", as the GPT-3 paper and
lm-evaluation-harness do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.records import jsonl_objects

MULTIPLE_CHOICE, COMPLETION = "multiple_choice", "completion"


@dataclass
class FewShotTask:
    name: str
    kind: str  # MULTIPLE_CHOICE or COMPLETION
    test: list[dict[str, Any]]
    train: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""  # an instruction shown once, before the examples (e.g. "Please unscramble ...")
    example_separator: str = "\n\n"
    target_delimiter: str = " "


def example_kind(record: dict[str, Any]) -> str:
    if {"context", "choices", "answer"} <= record.keys():
        return MULTIPLE_CHOICE
    if {"prompt", "target"} <= record.keys():
        return COMPLETION
    raise ValueError(
        f"an example needs context + choices + answer (multiple choice) or prompt + target (completion); "
        f"got the fields {sorted(record)}"
    )


def check_example(record: dict[str, Any], where: str) -> str:
    """The example's kind, after checking its fields' types; errors name the file and line."""
    try:
        kind = example_kind(record)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if kind == MULTIPLE_CHOICE:
        choices, answer = record["choices"], record["answer"]
        if not isinstance(record["context"], str):
            raise ValueError(f"{where}: context must be a string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise ValueError(f"{where}: choices must be a list of at least two non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(f"{where}: answer must be an index into choices, 0..{len(choices) - 1}; got {answer!r}")
    elif not isinstance(record["prompt"], str) or not isinstance(record["target"], str) or not record["target"].strip():
        raise ValueError(f"{where}: prompt must be a string and target a non-blank string")
    elif record["target"] != record["target"].strip():
        raise ValueError(
            f"{where}: target {record['target']!r} has surrounding whitespace; a generated answer is compared "
            "stripped, and the space before an answer is the task's target delimiter"
        )
    split = record.get("split", "test")
    if split not in ("train", "test"):
        raise ValueError(f"{where}: split must be 'train' or 'test', got {split!r}")
    return kind


def read_task(path: str | Path, description: str = "") -> FewShotTask:
    """A task from a JSONL file; every example must be of the same kind, and some must be test examples."""
    path = Path(path)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    kinds = set()
    for where, record in jsonl_objects(path):
        kinds.add(check_example(record, where))
        splits[record.get("split", "test")].append(record)
    if len(kinds) > 1:
        raise ValueError(f"{path} mixes multiple-choice and completion examples; use one file per task")
    if not splits["test"]:
        raise ValueError(f'{path} has no test examples (lines without "split" or with "split": "test")')
    return FewShotTask(path.stem, kinds.pop(), splits["test"], splits["train"], description)


def context_of(task: FewShotTask, record: dict[str, Any]) -> str:
    return record["context"] if task.kind == MULTIPLE_CHOICE else record["prompt"]


def answers_of(task: FewShotTask, record: dict[str, Any]) -> list[str]:
    """The continuations to score, target delimiter included: every choice, or the one target."""
    texts = record["choices"] if task.kind == MULTIPLE_CHOICE else [record["target"]]
    return [task.target_delimiter + text for text in texts]


def correct_answer(task: FewShotTask, record: dict[str, Any]) -> str:
    return answers_of(task, record)[record["answer"] if task.kind == MULTIPLE_CHOICE else 0]


def choose_shots(task: FewShotTask, shots: int, seed: int, index: int) -> list[dict[str, Any]]:
    """`shots` train examples for test example `index`: a fresh draw per example, reproducible from the seed."""
    check_shots(task, shots)
    return random.Random(f"{seed}:{index}").sample(task.train, shots)


def check_shots(task: FewShotTask, shots: int) -> None:
    if shots > len(task.train):
        raise ValueError(f"{shots}-shot needs {shots} train examples; task {task.name!r} has {len(task.train)}")


def build_prompt(task: FewShotTask, record: dict[str, Any], shots: list[dict[str, Any]]) -> str:
    """Description, solved shots, then the example's context, waiting for its answer."""
    parts = [task.description] if task.description else []
    parts += [context_of(task, shot) + correct_answer(task, shot) for shot in shots]
    parts.append(context_of(task, record))
    return task.example_separator.join(parts)


def stop_strings(task: FewShotTask) -> list[str]:
    """Where a generated answer ends: at a line break, or where the next example would start."""
    return ["\n"] if "\n" in task.example_separator else ["\n", task.example_separator]
