"""GPT-1 style fine-tuning: the training loop's driver that trains a pretrained GPT on a task, with the task
transforms of `task_transforms` and no change to the model.

The loss is GPT-1's L3 = L2 (task) + λ·L1 (language modelling on the task's own inputs, through the tied
embedding), λ = 0.5 by default; the models compute it themselves (λ is their config's lm_loss_weight, so a
saved model records the λ it was trained with), and this driver only passes labels. Classification, entailment
and similarity train `HfGptForSequenceClassification` (which loads with AutoModelForSequenceClassification and
the text-classification pipeline); multiple choice trains `HfGptDoubleHeadsModel`.

Everything else is the loop's, as for pretraining: a global batch made up by gradient accumulation, resume,
checkpoints, the NaN guard, Ctrl-C, metrics. Epochs become steps: the run takes ceil(epochs x examples / batch)
steps through per-epoch permutations of the examples, and evaluates at each epoch's end.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from transformers import AutoTokenizer

from ..data.records import read_records
from ..files import weights_as_value_errors
from ..hub.cards import render_card
from ..machine import device_name
from ..modeling_hf_gpt import HfGptDoubleHeadsModel, HfGptForSequenceClassification
from ..options import check_ranges, option
from ..ranges import NON_NEGATIVE, OPEN_UNIT, POSITIVE, POSITIVE_INT, PROPORTION, SEED
from .loop import TrainingLoop, TrainingOptions
from .task_transforms import TASK_NAMES, Task, add_task_tokens, encode_example, get_task, task_examples

RESULTS_FILE = "eval_results.json"


def parse_columns(items: Sequence[str]) -> dict[str, list[str]]:
    """`--column ROLE=COLUMN[,COLUMN...]` flags as {role: [column, ...]}."""
    columns = {}
    for item in items:
        role, sep, names = item.partition("=")
        if not sep or not role or not names:
            raise ValueError(f"--column must look like ROLE=COLUMN[,COLUMN...], got {item!r}")
        columns[role] = names.split(",")
    return columns


@dataclass
class FinetuneArguments(TrainingOptions):
    """GPT-1's fine-tuning recipe by default: 3 epochs, batch 32, lr 6.25e-5, 0.2% warmup then linear decay. The loop
    runs as `TrainingOptions` say; each field is also its `hf-gpt finetune` flag (see `options`)."""

    PATH_FIELDS = ("model", "train", "validation")

    model: str = option(positional=True, help="pretrained model folder (e.g. OUTPUT/model of hf-gpt pretrain)")
    train: str = option(positional=True, help="training examples (.jsonl or .csv)")
    task: str = option("classification", required=True, choices=TASK_NAMES, help="the GPT-1 task transform")
    validation: str | None = option(None, help="validation examples (default: --val-fraction of the training file)")
    val_fraction: float = option(0.1, range=OPEN_UNIT, help="share of the training rows held out for validation")
    columns: dict[str, list[str]] = option(
        flag="--column", metavar="ROLE=COLUMN[,COLUMN...]", repeated=parse_columns, default_factory=dict,
        help="where a role's value is, e.g. --column text=sentence or --column choices=ending0,ending1",
    )  # fmt: skip
    epochs: int = option(3, range=POSITIVE_INT, help="passes over the training examples")
    learning_rate: float = option(6.25e-5, range=POSITIVE, aliases=("--lr",), help="peak learning rate")
    warmup_ratio: float = option(0.002, range=PROPORTION, help="share of the steps spent warming up")
    weight_decay: float = option(0.01, range=NON_NEGATIVE, help="AdamW's, on matrices only")
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lm_weight: float = option(0.5, range=NON_NEGATIVE, help="λ of the auxiliary LM loss")
    max_length: int | None = option(None, range=POSITIVE_INT, help="tokens per sequence (default: the model's "
                                    "context)")  # fmt: skip
    seed: int = option(42, range=SEED, help="for the head's initial weights, dropout and data order")
    overwrite: bool = option(False, help="replace an earlier fine-tuning run in --output")
    command: str = "finetune"  # the kind of command that owns the run folder

    def check(self) -> None:
        get_task(self.task)  # first: it names the tasks more plainly than the range check would
        check_ranges(self)
        if not (Path(self.model) / "config.json").is_file():
            raise FileNotFoundError(f"no pretrained model in {self.model} (expected its config.json)")


def label_names(examples: list[tuple[str, dict]], task: Task) -> list[str]:
    """Class names in sorted order; multiple choice has none (the label is the right choice's index)."""
    if task.name == "multiple_choice":
        return []
    return sorted({e["label"] for _, e in examples})


def label_index(example: dict, task: Task, names: list[str], where: str) -> int:
    if task.name == "multiple_choice":
        return example["label"]  # an index in range, checked by task_examples
    if example["label"] not in names:
        raise ValueError(f"{where}: label {example['label']!r} did not occur in training ({names})")
    return names.index(example["label"])


def encode_all(examples: list[tuple[str, dict]], task, tokenizer, names, max_length) -> list[dict]:
    """Each example as its sequences (ids, truncated), label index, and count of LM targets (each sequence's
    tokens but its first)."""
    if task.name == "multiple_choice":  # the choices of a batch stack into one tensor
        first, one = examples[0]
        for where, e in examples:
            if len(e["choices"]) != len(one["choices"]):
                raise ValueError(
                    f"{where}: {len(e['choices'])} choices, but {first} has {len(one['choices'])}; "
                    "every example needs the same number"
                )
    encoded = []
    for where, e in examples:
        sequences = encode_example(tokenizer, task, e, max_length)
        encoded.append({"sequences": sequences, "label": label_index(e, task, names, where),
                        "lm_targets": sum(len(s) - 1 for s in sequences)})  # fmt: skip
    return encoded


def collate(pad_id: int):
    """Pad every sequence of the batch to one length: input_ids and attention_mask (batch, sequences, length)."""

    def collate_batch(features: list[dict]) -> dict[str, torch.Tensor]:
        length = max(len(s) for f in features for s in f["sequences"])
        ids = [[s + [pad_id] * (length - len(s)) for s in f["sequences"]] for f in features]
        mask = [[[1] * len(s) + [0] * (length - len(s)) for s in f["sequences"]] for f in features]
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor([f["label"] for f in features]),
        }

    return collate_batch


def task_forward(
    model, batch, task: Task, with_lm: bool, num_items_in_batch: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores per class or choice, loss) for a padded batch. The model adds GPT-1's auxiliary LM loss, weighted by
    its config's lm_loss_weight, when given LM targets (`with_lm`): their mean, or their sum over
    `num_items_in_batch` (transformers' name for a loss normaliser that spans micro batches and processes)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    lm_labels = ids.masked_fill(mask == 0, -100) if with_lm else None  # padding is not a target
    normaliser = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    if task.name == "multiple_choice":
        out = model(input_ids=ids, attention_mask=mask, labels=lm_labels, mc_labels=labels, **normaliser)
        return out.mc_logits, out.loss
    # (batch, sequences, length): similarity's two orders are scored together, one sequence otherwise.
    out = model(input_ids=ids, attention_mask=mask, labels=labels, lm_labels=lm_labels, **normaliser)
    return out.logits, out.loss


def split_validation(args: FinetuneArguments, task: Task) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]], str]:
    train = task_examples(read_records(args.train), task, args.columns, source=args.train)
    if args.validation is not None:
        val = task_examples(read_records(args.validation), task, args.columns, source=args.validation)
        return train, val, Path(args.validation).name  # names, not paths: the results are pushed with the model
    order = list(range(len(train)))
    random.Random(args.seed).shuffle(order)
    count = max(1, round(len(train) * args.val_fraction))
    if count >= len(train):
        raise ValueError(f"{args.train} has {len(train)} examples: too few to hold out {args.val_fraction:.0%}")
    held = set(order[:count])
    kept = [e for i, e in enumerate(train) if i not in held]
    return kept, [train[i] for i in sorted(held)], f"{count} held-out rows of {Path(args.train).name}"


def load_model(args: FinetuneArguments, task: Task, names: list[str], tokenizer):
    if task.name == "multiple_choice":
        model_class, options = HfGptDoubleHeadsModel, {"lm_loss_weight": args.lm_weight}
    else:
        labels = {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}
        options = {"num_labels": len(names), "lm_loss_weight": args.lm_weight, **labels}
        model_class = HfGptForSequenceClassification
    with weights_as_value_errors(args.model):
        model = model_class.from_pretrained(args.model, **options)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.resize_token_embeddings(len(tokenizer))  # rows for the three task tokens
    return model


@torch.no_grad()
def accuracy(model, loader, task: Task, accelerator) -> float:
    model.eval()
    right = []
    for batch in loader:
        scores, _ = task_forward(model, batch, task, with_lm=False)
        right.append(accelerator.gather_for_metrics(scores.argmax(-1) == batch["labels"]))
    model.train()
    return torch.cat(right).float().mean().item()


def validation_name(args: FinetuneArguments) -> str:
    if args.validation is not None:
        return Path(args.validation).name
    return f"{Path(args.train).name} (held-out {args.val_fraction:.0%})"


class Finetuning(TrainingLoop):
    """One fine-tuning run; `finetune()` is the entry point."""

    description = "fine-tuning"
    decay, final_lr_ratio = "linear", 0.0  # GPT-1's schedule

    def setup(self) -> None:
        args = self.args
        self.task = task = get_task(args.task)
        self.tokenizer = add_task_tokens(AutoTokenizer.from_pretrained(args.model))
        train_rows, val_rows, self.val_source = split_validation(args, task)
        self.names = label_names(train_rows, task)
        if task.name != "multiple_choice" and len(self.names) < 2:
            raise ValueError(f"{args.train} has a single label {self.names}: nothing to classify")
        set_seed(args.seed)  # the new head's initial weights
        self.pretrained = load_model(args, task, self.names, self.tokenizer)
        context = self.pretrained.config.max_position_embeddings
        max_length = args.max_length or context
        if max_length > context:
            raise ValueError(f"max_length {max_length} exceeds the model's context ({context})")
        self.train_data = encode_all(train_rows, task, self.tokenizer, self.names, max_length)
        self.val_data = encode_all(val_rows, task, self.tokenizer, self.names, max_length)
        self.choices = len(self.names) or len(val_rows[0][1]["choices"])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.collate = collate(pad)  # token ids from the model's own (resized) tokenizer: in range by construction
        self.max_steps = math.ceil(args.epochs * len(self.train_data) / args.batch_size)
        self.warmup_steps = round(args.warmup_ratio * self.max_steps)
        self.val = None  # the validation loader, made at the first evaluation

    def make_model(self):
        model, self.pretrained = self.pretrained, None
        return model

    def summary(self) -> str:
        kind = "classes" if self.names else "choices"
        return (
            f"{self.task.name}: {len(self.train_data)} training and {len(self.val_data)} validation examples "
            f"({self.val_source}), {self.choices} {kind}; "
        )

    def step_inputs(self) -> dict[str, Any]:
        """The LM term's normaliser: the step's LM targets over all its micro batches and processes (counted on the
        CPU from the data order), so that the step's loss is one mean over them however the batch is split."""
        if self.args.lm_weight == 0:
            return {}
        targets = sum(self.train_data[i]["lm_targets"] for i in self.step_samples())
        passes = self.accelerator.gradient_accumulation_steps * self.accelerator.num_processes
        return {"num_items_in_batch": targets / passes}  # each pass's loss is averaged over the passes

    def loss(self, batch, step_inputs) -> torch.Tensor:
        return task_forward(self.model, batch, self.task, with_lm=self.args.lm_weight > 0, **step_inputs)[1]

    def epochs_done(self, step: int) -> float:
        return step * self.args.batch_size / len(self.train_data)

    def eval_due(self, step: int) -> bool:
        return step == self.max_steps or math.floor(self.epochs_done(step)) > math.floor(self.epochs_done(step - 1))

    def evaluate(self) -> dict[str, float]:
        if self.val is None:
            loader = torch.utils.data.DataLoader(self.val_data, batch_size=self.micro_batch, collate_fn=self.collate)
            self.val = self.accelerator.prepare(loader)
        score = accuracy(self.model, self.val, self.task, self.accelerator)
        return {"val_accuracy": score, "epoch": round(self.epochs_done(self.progress.step), 2)}

    def describe(self, scores: dict[str, float]) -> str:
        return f"validation accuracy {scores['val_accuracy']:.4f} (epoch {scores['epoch']:g})"

    def model_files(self, evaluation: dict[str, float]) -> dict[str, str]:
        results = {"task": self.task.name, **({"val_accuracy": evaluation["val_accuracy"]} if evaluation else {}),
                   "history": self.progress.evaluations, "train_examples": len(self.train_data),
                   "val_examples": len(self.val_data), "validation": self.val_source}  # fmt: skip
        return {RESULTS_FILE: json.dumps(results, indent=2) + "\n"}

    def card(self, evaluation: dict[str, float], interrupted: bool):
        args, accelerator, task = self.args, self.accelerator, self.task
        steps = f"{self.progress.step} of {self.max_steps}" + (" (interrupted)" if interrupted else "")
        return render_card(
            accelerator.unwrap_model(self.model).config,
            self.num_parameters,
            model_name=Path(args.output_dir).name,
            summary=f"{args.model} fine-tuned for {task.name.replace('_', ' ')} the GPT-1 way, with hf_gpt.",
            pipeline_tag=task.pipeline_tag,
            base_model=str(args.model),
            training=[
                ("Task", task.name),
                ("Training data", f"{Path(args.train).name} ({len(self.train_data)} examples)"),
                ("Epochs", str(args.epochs)),
                ("Steps", steps),
                ("Batch", str(args.batch_size)),
                ("Optimizer", f"AdamW, lr {args.learning_rate:g}, warmup {self.warmup_steps} steps, linear decay"),
                ("Auxiliary LM loss weight", f"{args.lm_weight:g}"),
                ("Precision", accelerator.mixed_precision),
                ("Hardware", f"{accelerator.num_processes} x {device_name(accelerator.device)}"),
            ],
            evaluation=[("Validation accuracy", f"{evaluation['val_accuracy']:.4f} ({self.val_source})")]
            if evaluation
            else [],
            example_prompt="An example input",
            scores=[(validation_name(args), "accuracy", round(evaluation["val_accuracy"], 4))] if evaluation else [],
            model_path=str(self.output / "model"),
        )


def finetune(args: FinetuneArguments | None = None, **kwargs) -> Path:
    """Fine-tune a pretrained GPT on a task file; returns the folder of the fine-tuned model (`OUTPUT/model`: model,
    tokenizer, card, eval_results.json)."""
    return Finetuning(args or FinetuneArguments(**kwargs)).run()
