"""Everything a pretraining run checks and prepares before its first step: arguments, run folder,
tokenizer, data and model config. Bad input fails here, with a message naming it, before any work."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from .configuration_hf_gpt import PRESETS, HfGptConfig
from .data import MANIFEST, TokenBlocks, prepare_data, read_manifest
from .documents import INVALID_UTF8_POLICIES
from .files import check_output_dir, write_text_atomic
from .tokenizer import load_tokenizer, train_bpe_tokenizer

RUN_FILE = "run.json"
MIXED_PRECISION = ("no", "fp16", "bf16")
# Arguments that may differ when a run is resumed: they change what is logged or kept, not the training.
RESUMABLE_CHANGES = {"resume", "overwrite", "eval_every", "save_every", "keep_checkpoints", "log_every", "log_with"}


@dataclass
class PretrainArguments:
    """Everything `pretrain` needs; `hf-gpt pretrain --help` describes each field."""

    output_dir: str
    data: list[str]  # a `prepare-data` folder, or raw inputs (text, JSONL, parquet, dataset folders)
    tokenizer: str | None = None  # its folder; None trains one of `vocab_size` on raw inputs
    model: str = "gpt2-tiny"  # a preset name, a config.json, or a folder holding one
    model_overrides: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 8192  # for a tokenizer trained here
    block_size: int | None = None  # default: the model's context
    batch_size: int = 32  # sequences per optimizer step, all processes together
    micro_batch_size: int | None = None  # per process and forward pass; default batch_size / processes
    max_steps: int = 1000
    learning_rate: float = 6e-4
    final_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    mixed_precision: str | None = None  # None: what `accelerate config` / `accelerate launch` says
    compile: bool = False
    gradient_checkpointing: bool = False
    seed: int = 1337
    eval_every: int = 100
    eval_blocks: int | None = 100  # validation blocks scored each time (None: the whole split)
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    log_with: str = "auto"  # "auto" (TensorBoard when installed), "none", or an Accelerate tracker name
    val_fraction: float = 0.01  # for data prepared here
    val_inputs: list[str] | None = None  # held-out inputs for validation instead of val_fraction
    text_field: str = "text"
    split: str = "train"
    invalid_utf8: str = "error"
    peak_tflops: float | None = None  # per device, for MFU; None measures a large matmul
    resume: bool = False
    overwrite: bool = False

    def check(self) -> None:
        positive = ("batch_size", "max_steps", "eval_every", "save_every", "keep_checkpoints", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("block_size", "micro_batch_size", "eval_blocks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.final_lr_ratio <= 1:
            raise ValueError(f"final_lr_ratio must be in [0, 1], got {self.final_lr_ratio}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if self.mixed_precision not in (None, *MIXED_PRECISION):
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.invalid_utf8 not in INVALID_UTF8_POLICIES:
            raise ValueError(f"invalid_utf8 must be one of {INVALID_UTF8_POLICIES}, got {self.invalid_utf8!r}")
        if not self.data:
            raise ValueError("no training data given")

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples become lists, as when read back


def prepare_run_folder(args: PretrainArguments, accelerator: Accelerator) -> tuple[Path, bool]:
    """Create or reopen the run folder; refuse one that is not ours or whose arguments changed.
    Returns the folder and whether this run created it (rather than resuming in it)."""
    output = Path(args.output_dir)
    run_file = output / RUN_FILE
    named = [*args.data, *(args.val_inputs or []), args.tokenizer]
    inputs = [p for p in named if p is not None and Path(p).exists()]
    resuming = args.resume and run_file.is_file()
    if accelerator.is_main_process:
        if resuming:
            earlier = json.loads(run_file.read_text(encoding="utf-8"))
            changed = sorted(
                name
                for name, value in args.to_json().items()
                if name not in RESUMABLE_CHANGES and earlier.get(name) != value
            )
            if changed:
                raise ValueError(
                    f"cannot resume {output}: {', '.join(changed)} differ from the arguments it was started with "
                    f"(see {run_file}); start a new run folder instead"
                )
        else:
            check_output_dir(output, args.overwrite or args.resume, marker=RUN_FILE, protected=inputs)
            if output.exists() and any(output.iterdir()):  # an earlier run, replaced (--overwrite)
                shutil.rmtree(output)
            output.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_file, json.dumps(args.to_json(), indent=2) + "\n")
    accelerator.wait_for_everyone()
    return output, not resuming


@contextlib.contextmanager
def run_folder(args: PretrainArguments, accelerator: Accelerator) -> Iterator[Path]:
    """The run folder, removed again if the setup inside the block fails: a refused run leaves nothing
    behind (a resumed run's folder is never removed)."""
    output, created = prepare_run_folder(args, accelerator)
    try:
        yield output
    except BaseException:
        if created and accelerator.is_main_process:
            shutil.rmtree(output, ignore_errors=True)
        raise


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


def load_config(model: str, overrides: dict[str, Any] | None = None) -> HfGptConfig:
    """A preset name, or a config.json (or a folder holding one), with overrides on top.

    (`build_config` builds on this and fits the vocabulary and token ids to a tokenizer.)
    """
    overrides = overrides or {}
    if model in PRESETS:
        return HfGptConfig.from_preset(model, **overrides)
    path = Path(model)
    if not (path.is_file() or (path / "config.json").is_file()):
        raise ValueError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")
    values = HfGptConfig.from_json_file(str(path if path.is_file() else path / "config.json")).to_dict()
    return HfGptConfig.from_values(values, **overrides)


def build_config(model: str, overrides: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> HfGptConfig:
    """A preset or config file, with overrides; the vocabulary follows the tokenizer unless set explicitly."""
    # The token ids come from the tokenizer below; unset until then so the vocabulary check speaks first.
    unset = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    # A preset or config file gives the architecture; the vocabulary is the tokenizer's unless overridden.
    vocab = {} if "vocab_size" in overrides else {"vocab_size": len(tokenizer)}
    config = load_config(model, {**vocab, **overrides, **unset})
    if config.vocab_size < len(tokenizer):
        raise ValueError(
            f"the model's vocab_size ({config.vocab_size}) is smaller than the tokenizer's vocabulary "
            f"({len(tokenizer)} tokens): token ids would fall outside the embedding table; "
            f"set vocab_size >= {len(tokenizer)}"
        )
    # Our tokenizers (and GPT-2's) use one token for both: the document separator.
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.check()
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


def batch_shape(args: PretrainArguments, num_processes: int) -> tuple[int, int]:
    """(micro batch per process, gradient accumulation steps) that make up the global batch exactly."""
    micro = args.micro_batch_size or max(1, args.batch_size // num_processes)
    per_pass = micro * num_processes
    if args.batch_size % per_pass:
        raise ValueError(
            f"batch_size {args.batch_size} is not a multiple of micro_batch_size {micro} x {num_processes} "
            f"processes = {per_pass}; choose sizes that divide it"
        )
    return micro, args.batch_size // per_pass


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
