"""GPT-1 style fine-tuning with Accelerate: a pretrained GPT, the task transforms of `task_transforms`, no model change.

The loss is GPT-1's L3 = L2 (task) + λ·L1 (language modelling on the task's own inputs, through the tied
embedding), λ = 0.5 by default; the models compute it themselves (λ is their config's lm_loss_weight, so a
saved model records the λ it was trained with), and this loop only passes labels. Classification, entailment
and similarity train
`HfGptForSequenceClassification` (which loads with AutoModelForSequenceClassification and the
text-classification pipeline); multiple choice trains `HfGptDoubleHeadsModel`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_linear_schedule_with_warmup

from ..counting import count_parameters
from ..data.records import read_records
from ..files import check_output_dir, weights_as_value_errors
from ..hub.cards import render_card
from ..hub.model_folder import write_model_folder
from ..modeling_hf_gpt import HfGptDoubleHeadsModel, HfGptForSequenceClassification
from ..options import check_ranges, option
from ..ranges import NON_NEGATIVE, OPEN_UNIT, POSITIVE, POSITIVE_INT, PROPORTION, SEED
from .optimization import make_optimizer
from .pretraining import TrainingDiverged
from .pretraining_setup import MIXED_PRECISION
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
class FinetuneArguments:
    """GPT-1's fine-tuning recipe by default: 3 epochs, batch 32, lr 6.25e-5, 0.2% warmup then linear decay. Each
    field is also its `hf-gpt finetune` flag (see `options`)."""

    model: str = option(positional=True, help="pretrained model folder (e.g. OUTPUT/model of hf-gpt pretrain)")
    train: str = option(positional=True, help="training examples (.jsonl or .csv)")
    output_dir: str = option(flag="--output", help="folder for the fine-tuned model")
    task: str = option("classification", required=True, choices=TASK_NAMES, help="the GPT-1 task transform")
    validation: str | None = option(None, help="validation examples (default: --val-fraction of the training file)")
    val_fraction: float = option(0.1, range=OPEN_UNIT, help="share of the training rows held out for validation")
    columns: dict[str, list[str]] = option(
        flag="--column", metavar="ROLE=COLUMN[,COLUMN...]", repeated=parse_columns, default_factory=dict,
        help="where a role's value is, e.g. --column text=sentence or --column choices=ending0,ending1",
    )  # fmt: skip
    epochs: int = option(3, range=POSITIVE_INT, help="passes over the training examples")
    batch_size: int = option(32, range=POSITIVE_INT, help="examples per step, all processes")
    learning_rate: float = option(6.25e-5, range=POSITIVE, aliases=("--lr",), help="peak learning rate")
    warmup_ratio: float = option(0.002, range=PROPORTION, help="share of the steps spent warming up")
    weight_decay: float = option(0.01, range=NON_NEGATIVE, help="AdamW's, on matrices only")
    lm_weight: float = option(0.5, range=NON_NEGATIVE, help="λ of the auxiliary LM loss")
    max_length: int | None = option(None, range=POSITIVE_INT, help="tokens per sequence (default: the model's "
                                    "context)")  # fmt: skip
    seed: int = option(42, range=SEED, help="for the head's initial weights, dropout and data order")
    mixed_precision: str | None = option(None, choices=MIXED_PRECISION, help="default: as `accelerate config` says")
    overwrite: bool = option(False, help="replace an earlier model in --output")

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
    if task.name == "multiple_choice":  # the choices of a batch stack into one tensor
        first, one = examples[0]
        for where, e in examples:
            if len(e["choices"]) != len(one["choices"]):
                raise ValueError(
                    f"{where}: {len(e['choices'])} choices, but {first} has {len(one['choices'])}; "
                    "every example needs the same number"
                )
    return [
        {"sequences": encode_example(tokenizer, task, e, max_length), "label": label_index(e, task, names, where)}
        for where, e in examples
    ]


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


def task_forward(model, batch, task: Task, with_lm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores per class or choice, loss) for a padded batch. The model adds GPT-1's auxiliary LM loss, weighted by
    its config's lm_loss_weight, when given LM targets (`with_lm`)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    lm_labels = ids.masked_fill(mask == 0, -100) if with_lm else None  # padding is not a target
    if task.name == "multiple_choice":
        out = model(input_ids=ids, attention_mask=mask, labels=lm_labels, mc_labels=labels)
        return out.mc_logits, out.loss
    # (batch, sequences, length): similarity's two orders are scored together, one sequence otherwise.
    out = model(input_ids=ids, attention_mask=mask, labels=labels, lm_labels=lm_labels)
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
def accuracy(model, loader, task, accelerator) -> float:
    model.eval()
    right = []
    for batch in loader:
        scores, _ = task_forward(model, batch, task, with_lm=False)
        right.append(accelerator.gather_for_metrics(scores.argmax(-1) == batch["labels"]))
    model.train()
    return torch.cat(right).float().mean().item()


def finetune(args: FinetuneArguments | None = None, **kwargs) -> Path:
    """Fine-tune a pretrained GPT on a task file; returns the output folder (model, tokenizer, card, results)."""
    args = args or FinetuneArguments(**kwargs)
    args.check()
    task = get_task(args.task)
    check_output_dir(args.output_dir, args.overwrite, kind="finetune", inputs=finetune_inputs(args))
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    if args.batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size {args.batch_size} must be a multiple of the {accelerator.num_processes} processes"
        )
    micro_batch = args.batch_size // accelerator.num_processes

    tokenizer = add_task_tokens(AutoTokenizer.from_pretrained(args.model))
    train_rows, val_rows, val_source = split_validation(args, task)
    names = label_names(train_rows, task)
    if task.name != "multiple_choice" and len(names) < 2:
        raise ValueError(f"{args.train} has a single label {names}: nothing to classify")
    set_seed(args.seed)
    model = load_model(args, task, names, tokenizer)
    max_length = args.max_length or model.config.max_position_embeddings
    if max_length > model.config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds the model's context ({model.config.max_position_embeddings})"
        )
    train = encode_all(train_rows, task, tokenizer, names, max_length)
    val = encode_all(val_rows, task, tokenizer, names, max_length)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(
        train, batch_size=micro_batch, shuffle=True, collate_fn=collate(pad), generator=generator
    )
    val_loader = torch.utils.data.DataLoader(val, batch_size=micro_batch, collate_fn=collate(pad))
    optimizer = make_optimizer(model, args.learning_rate, args.weight_decay, (0.9, 0.999), 1e-8, accelerator.device)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    total = args.epochs * len(train_loader)
    # Not prepared: Accelerate would step it once per process (see optimization.make_scheduler).
    scheduler = get_linear_schedule_with_warmup(optimizer, round(args.warmup_ratio * total), total)

    accelerator.print(
        f"{task.name}: {len(train)} training and {len(val)} validation examples ({val_source}); "
        f"{len(names) or len(val_rows[0][1]['choices'])} {'classes' if names else 'choices'}"
    )
    history = []
    bar = tqdm(total=total, desc=f"fine-tuning ({task.name})", disable=not accelerator.is_local_main_process)
    step = 0
    for epoch in range(1, args.epochs + 1):
        for batch in train_loader:
            step += 1
            _, loss = task_forward(model, batch, task, with_lm=args.lm_weight > 0)
            # Every process checks the same mean before the update, so all stop together and a NaN never
            # reaches the weights.
            mean_loss = accelerator.reduce(loss.detach(), "mean").item()
            if not math.isfinite(mean_loss):
                bar.close()
                raise TrainingDiverged(
                    f"the loss is {mean_loss} at step {step} of {total} (epoch {epoch}); "
                    f"fine-tuning stopped and nothing was written to {args.output_dir}"
                )
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        history.append({"epoch": epoch, "val_accuracy": accuracy(model, val_loader, task, accelerator)})
        accelerator.print(f"epoch {epoch}: validation accuracy {history[-1]['val_accuracy']:.4f}")
    bar.close()

    results = {"task": task.name, "val_accuracy": history[-1]["val_accuracy"], "history": history,
               "train_examples": len(train), "val_examples": len(val), "validation": val_source}  # fmt: skip
    output = save_finetuned(accelerator, model, tokenizer, args, task, results)
    accelerator.print(f"validation accuracy {results['val_accuracy']:.4f}; model saved to {output}")
    accelerator.end_training()
    return output


def finetune_inputs(args: FinetuneArguments) -> list[str]:
    return [p for p in (args.model, args.train, args.validation) if p is not None]


def validation_name(args: FinetuneArguments) -> str:
    if args.validation is not None:
        return Path(args.validation).name
    return f"{Path(args.train).name} (held-out {args.val_fraction:.0%})"


def check_finite(accelerator, state_dict: dict[str, torch.Tensor], args: FinetuneArguments) -> None:
    """Refuse to save non-finite weights: a finite loss can still step them to inf (a huge learning rate)."""
    names = [n for n, t in state_dict.items() if not torch.isfinite(t).all()] if accelerator.is_main_process else []
    (names,) = broadcast_object_list([names])  # the main process holds the whole state dict; all raise together
    if names:
        raise TrainingDiverged(
            f"{len(names)} weight tensors are not finite after fine-tuning (first: {names[0]}); nothing was "
            f"written to {args.output_dir} (a learning rate too high, or non-finite weights in {args.model}?)"
        )


def save_finetuned(accelerator, model, tokenizer, args, task, results: dict[str, Any]) -> Path:
    state_dict = accelerator.get_state_dict(model)  # gathered whole under FSDP / DeepSpeed
    check_finite(accelerator, state_dict, args)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        card = render_card(
            unwrapped.config,
            count_parameters(unwrapped),
            model_name=Path(args.output_dir).name,
            summary=f"{args.model} fine-tuned for {task.name.replace('_', ' ')} the GPT-1 way, with hf_gpt.",
            pipeline_tag=task.pipeline_tag,
            base_model=str(args.model),
            training=[
                ("Task", task.name),
                ("Training data", f"{Path(args.train).name} ({results['train_examples']} examples)"),
                ("Epochs", str(args.epochs)),
                ("Batch", str(args.batch_size)),
                ("Optimizer", f"AdamW, lr {args.learning_rate:g}, warmup {args.warmup_ratio:.1%}, linear decay"),
                ("Auxiliary LM loss weight", f"{args.lm_weight:g}"),
            ],
            evaluation=[("Validation accuracy", f"{results['val_accuracy']:.4f} ({results['validation']})")],
            example_prompt="An example input",
            scores=[(validation_name(args), "accuracy", round(results["val_accuracy"], 4))],
            model_path=str(args.output_dir),
        )
        files = {RESULTS_FILE: json.dumps(results, indent=2) + "\n",
                 "finetune_args.json": json.dumps(dataclasses.asdict(args), indent=2) + "\n"}  # fmt: skip
        write_model_folder(
            unwrapped, args.output_dir, kind="finetune", card=card, tokenizer=tokenizer, overwrite=args.overwrite,
            inputs=finetune_inputs(args), state_dict=state_dict, files=files,
        )  # fmt: skip
    accelerator.wait_for_everyone()
    return Path(args.output_dir)
