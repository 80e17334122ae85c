"""Everything a pretraining run checks and prepares before its first step: arguments, tokenizer, data and model
config. Bad input fails here, with a message naming it, before any work."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator, PartialState
from transformers import PreTrainedTokenizerBase

from ..configuration_hf_gpt import PRESETS, HfGptConfig
from ..data.blocks import TokenBlocks
from ..data.documents import CorpusOptions, SplitOptions
from ..data.tokenizer import load_tokenizer, train_bpe_tokenizer
from ..data.tokens import MANIFEST, prepare_data, read_manifest
from ..files import read_json_object
from ..options import check_ranges, option
from ..ranges import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROPORTION, SEED, SHARE
from .loop import TrainingOptions


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    return dict(parse_override(text) for text in items)


@dataclass
class PretrainArguments(CorpusOptions, SplitOptions, TrainingOptions):
    """Everything `pretrain` needs (raw inputs are read and split as `CorpusOptions` and `SplitOptions` say, the
    loop runs as `TrainingOptions` say); each field is also its `hf-gpt pretrain` flag (see `options`)."""

    PATH_FIELDS = ("data", "val_inputs", "tokenizer", "model")

    data: list[str] = option(
        positional=True, nargs="+", metavar="DATA",
        help="a `prepare-data` folder, or raw inputs (text, JSONL, parquet, dataset folders) prepared into OUTPUT/data",
    )  # fmt: skip
    tokenizer: str | None = option(None, help="tokenizer folder (default: train one of --vocab-size on raw inputs)")
    model: str = option("gpt2-tiny", help="a preset name or a config.json (or its folder)")
    model_overrides: dict[str, Any] = option(
        flag="--set", metavar="NAME=VALUE", repeated=parse_overrides, default_factory=dict,
        help="override a config field, e.g. --set hidden_size=256 --set resid_pdrop=0 (repeatable)",
    )  # fmt: skip
    vocab_size: int = option(8192, range=POSITIVE_INT, help="for a tokenizer trained here")
    block_size: int | None = option(None, range=POSITIVE_INT, help="tokens per training sequence (default: the "
                                    "model's context)")  # fmt: skip
    max_steps: int = option(1000, range=POSITIVE_INT, help="optimizer steps")
    learning_rate: float = option(6e-4, range=POSITIVE, aliases=("--lr",), help="peak learning rate")
    final_lr_ratio: float = option(0.1, range=PROPORTION, help="cosine decays to this x peak")
    warmup_steps: int = option(100, range=COUNT, help="steps of linear warm-up")
    weight_decay: float = option(0.1, range=NON_NEGATIVE, help="AdamW's, on matrices only")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    seed: int = option(1337, range=SEED, help="for the initial weights, dropout and data order")
    eval_every: int = option(100, range=POSITIVE_INT, help="steps between validation runs")
    eval_blocks: int | None = option(
        100, range=POSITIVE_INT, optional=True,
        help="validation blocks scored each time (in Python, None: the whole split)",
    )  # fmt: skip
    peak_tflops: float | None = option(None, range=POSITIVE, help="per-device peak for MFU (default: measured)")
    command: str = "pretrain"  # the kind of command that owns the run folder (quickstart runs are its own)

    def check(self) -> None:
        check_ranges(self)
        POSITIVE.check("adam_eps", self.adam_eps)
        if len(self.adam_betas) != 2 or not all(SHARE.contains(beta) for beta in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if not self.data:
            raise ValueError("no training data given")


def is_prepared_data(paths: Sequence[str]) -> bool:
    return len(paths) == 1 and (Path(paths[0]) / MANIFEST).is_file()


def prepare_inputs(args: PretrainArguments, output: Path, accelerator: Accelerator) -> tuple[Any, Path]:
    """The tokenizer and the prepared data folder, making either in the run folder when needed.

    The main process makes them first; the others then find them done.
    """
    with accelerator.main_process_first():
        if args.tokenizer is not None:
            tokenizer = load_tokenizer(args.tokenizer)
        elif is_prepared_data(args.data):
            raise ValueError(f"{args.data[0]} is prepared data: give the tokenizer it was prepared with (--tokenizer)")
        elif (output / "tokenizer").is_dir():
            tokenizer = load_tokenizer(output / "tokenizer")
        else:
            corpus = {"text_field": args.text_field, "split": args.split, "invalid_utf8": args.invalid_utf8}
            tokenizer = train_bpe_tokenizer(args.data, args.vocab_size, output / "tokenizer", **corpus)
        if is_prepared_data(args.data):
            data_dir = Path(args.data[0])
        else:
            data_dir = output / "data"
            if not (data_dir / MANIFEST).is_file():
                prepare_data(
                    args.data,
                    tokenizer,
                    data_dir,
                    val_fraction=args.val_fraction,
                    val_inputs=args.val_inputs,
                    text_field=args.text_field,
                    split=args.split,
                    invalid_utf8=args.invalid_utf8,
                )
    return tokenizer, data_dir


def parse_override(text: str) -> tuple[str, Any]:
    """`name=value` with value read as JSON when it parses (numbers, lists, true/null), else as a string."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"a model override must look like name=value, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def config_values(model: str) -> dict[str, Any]:
    """The settings of a preset, or of a config.json (or a folder holding one)."""
    if model in PRESETS:
        return dict(PRESETS[model])
    path = Path(model)
    if not (path.is_file() or (path / "config.json").is_file()):
        raise ValueError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
    return read_json_object(path if path.is_file() else path / "config.json", "model config")


def load_config(model: str, overrides: dict[str, Any] | None = None) -> HfGptConfig:
    """A preset name, or a config.json (or a folder holding one), with overrides on top.

    (`build_config` builds on this and fits the vocabulary and token ids to a tokenizer.) Checked as for building
    a model, since that is what every caller does with it.
    """
    try:
        config = HfGptConfig.from_values(config_values(model), **(overrides or {}))
    except TypeError as e:  # e.g. a string where a number belongs
        raise ValueError(f"model config {model}: {e}") from None
    config.check()
    return config


def build_config(model: str, overrides: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> HfGptConfig:
    """A preset or config file, with overrides, fitted to the tokenizer: the vocabulary becomes the tokenizer's,
    unless `vocab_size` is overridden (e.g. padded to a multiple of 64). A vocabulary the user wrote (in a config
    file, or as an override) that is smaller than the tokenizer's is refused. The token ids become the
    tokenizer's. Every change to a config file's values is printed."""
    given = {**config_values(model), **overrides}
    # Our tokenizers (and GPT-2's) use one token for both bos and eos: the document separator.
    fitted = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    if "vocab_size" not in overrides:
        fitted["vocab_size"] = len(tokenizer)
    written = overrides.get("vocab_size", None if model in PRESETS else given.get("vocab_size"))
    if written is not None and (not isinstance(written, int) or written < len(tokenizer)):
        raise ValueError(
            f"the model's vocab_size ({written}) is smaller than the tokenizer's vocabulary "
            f"({len(tokenizer)} tokens): token ids would fall outside the embedding table; "
            f"set vocab_size >= {len(tokenizer)}"
        )
    config = load_config(model, {**overrides, **fitted})
    changes = [f"{name} {given.get(name)} -> {value}" for name, value in fitted.items() if given.get(name) != value]
    if changes and PartialState().is_main_process:
        print(f"model config {model}: fitted to the tokenizer: {', '.join(changes)}")
    return config


def block_size_for(args: PretrainArguments, config: HfGptConfig) -> int:
    """The training sequence length: the model's context unless given, and never more than it."""
    block_size = args.block_size or config.max_position_embeddings
    if block_size > config.max_position_embeddings:
        raise ValueError(
            f"block_size {block_size} is larger than the model's context "
            f"(max_position_embeddings={config.max_position_embeddings})"
        )
    return block_size


def load_blocks(data_dir: Path, tokenizer, block_size: int, batch_size: int) -> tuple[TokenBlocks, TokenBlocks | None]:
    manifest = read_manifest(data_dir)
    train = TokenBlocks(data_dir, "train", block_size, tokenizer)
    if len(train) < batch_size:
        raise ValueError(
            f"the training data ({train.num_tokens} tokens in {data_dir}) makes {len(train)} blocks of "
            f"{block_size} tokens, fewer than one batch of {batch_size}; add data or lower the batch or block size"
        )
    val = None
    if manifest["splits"].get("val", {}).get("tokens", 0) > 0:  # same manifest: the tokenizer is checked
        val = TokenBlocks(data_dir, "val", block_size)
    return train, val
