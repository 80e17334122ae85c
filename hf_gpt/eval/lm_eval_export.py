"""A few-shot task as an lm-evaluation-harness task: a YAML file plus its train/test JSONL, all offline.

    hf-gpt eval export-lm-eval TASK FOLDER
    lm_eval --model hf --model_args pretrained=MODEL,trust_remote_code=True \\
            --include_path FOLDER --tasks NAME

The YAML states the same prompt as `hf_gpt.eval.fewshot` builds (description, example separator, target
delimiter), so lm-eval's 0-shot scores equal `hf-gpt eval fewshot`'s for the same model: multiple choice
as `multiple_choice` (acc, acc_norm), completion as `generate_until` (greedy up to a newline, exact_match
after stripping whitespace). With shots, lm-eval draws its own examples, so k-shot figures differ by the
draw. lm-eval reads a target that looks like a Python list ("[1, 2]") as a list; such completion targets
do not carry over.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..files import check_apart, check_output_file, write_text_atomic
from .fewshot import MULTIPLE_CHOICE, FewShotTask, stop_strings

KIND = "hf-gpt eval export-lm-eval"
HEADER = f"# written by {KIND}\n"
FIELDS = {MULTIPLE_CHOICE: ("context", "choices", "answer"), "completion": ("prompt", "target")}


def lm_eval_name(name: str) -> str:
    """Task names that lm-eval accepts on its command line: letters, digits and underscores."""
    return "hfgpt_" + re.sub(r"\W+", "_", name.replace("+", "plus").replace("-", "_")).strip("_").lower()


def task_config(task: FewShotTask, name: str, data_files: dict[str, str], max_gen_toks: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": data_files},
        "test_split": "test",
        "target_delimiter": task.target_delimiter,
        "fewshot_delimiter": task.example_separator,
    }
    if "train" in data_files:
        config |= {"training_split": "train", "fewshot_split": "train"}
    if task.description:  # lm-eval renders the description with Jinja: keep braces in it literal
        config["description"] = "{% raw %}" + task.description + task.example_separator + "{% endraw %}"
    if task.kind == MULTIPLE_CHOICE:
        config |= {
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
        }
    else:
        config |= {
            "output_type": "generate_until",
            "doc_to_text": "{{prompt}}",
            "doc_to_target": "{{target}}",
            "generation_kwargs": {"until": stop_strings(task), "do_sample": False, "max_gen_toks": max_gen_toks},
            "filter_list": [
                {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
            ],
            "metric_list": [{"metric": "exact_match"}],
        }
    return config


class ReadableDumper(yaml.SafeDumper):
    """Strings holding line breaks in double quotes ("\\n\\n"), not as YAML's folded multi-line scalars."""


ReadableDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style='"' if "\n" in text else None),
)


def write_jsonl(path: Path, task: FewShotTask, records: list[dict[str, Any]]) -> None:
    fields = FIELDS[task.kind]
    write_text_atomic(path, "".join(json.dumps({f: r[f] for f in fields}) + "\n" for r in records))


def export_lm_eval_task(
    task: FewShotTask, folder: str | os.PathLike, *, max_gen_toks: int = 32, inputs: Sequence[str | os.PathLike] = ()
) -> Path:
    """Write FOLDER/NAME.yaml with FOLDER/NAME.test.jsonl (and .train.jsonl); returns the YAML's path.

    The folder may hold other tasks and files: only an earlier export of the same task is replaced (its YAML
    starts with our header), and never one of `inputs` (the task file the task was read from)."""
    folder = Path(folder).resolve()
    name = lm_eval_name(task.name)
    yaml_path = folder / f"{name}.yaml"
    splits = {"test": task.test, **({"train": task.train} if task.train else {})}
    data_paths = {split: folder / f"{name}.{split}.jsonl" for split in splits}
    check_output_file(yaml_path, kind=KIND, inputs=inputs, mark=HEADER)
    earlier_export = yaml_path.exists()  # then its data files are ours too
    for path in data_paths.values():
        if earlier_export:
            check_apart(path, inputs)
        else:  # no mark: an existing file of that name is someone else's
            check_output_file(path, kind=KIND, inputs=inputs)
    folder.mkdir(parents=True, exist_ok=True)
    for split, records in splits.items():
        write_jsonl(data_paths[split], task, records)
    config = task_config(task, name, {split: str(path) for split, path in data_paths.items()}, max_gen_toks)
    text = yaml.dump(config, Dumper=ReadableDumper, sort_keys=False, allow_unicode=True)
    write_text_atomic(yaml_path, HEADER + text)
    return yaml_path
