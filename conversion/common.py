"""What every converter in conversion/ shares: reading foreign weights safely, checking that the converted
model computes what the source did, and writing the result atomically with its tokenizer and card."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..cli import add_conversion_arguments
from ..configuration_hf_gpt import HfGptConfig
from ..counting import count_parameters
from ..files import check_output_dir, looks_local, pickle_refusal, weights_as_value_errors
from ..hub.cards import render_card
from ..hub.model_folder import write_model_folder

KIND = "convert"  # every converter's output: one converter may replace another's earlier output
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
# OpenAI's GPT-1 and GPT-2 (and transformers' ports) store these as Conv1D, (in, out); nn.Linear is (out, in).
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def transpose_projections(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.t().contiguous() if k.endswith(CONV1D) else v for k, v in weights.items()}


DOWNLOADED = ["*.json", "*.safetensors", "*.bin", "merges.txt", "vocab.txt"]  # config, weights, tokenizer


def model_folder(source: str | os.PathLike) -> Path:
    """A local folder as it is; anything else is taken for a Hub repo id and downloaded (HF_ENDPOINT, cache)."""
    if looks_local(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(source), allow_patterns=DOWNLOADED))


def read_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}: not a transformers model folder")
    return json.loads(path.read_text(encoding="utf-8"))


def load_reference(model_class: type[PreTrainedModel], folder: str | os.PathLike, source: str, **kwargs):
    """The source model as transformers loads it (safetensors, sharded or not, or a weights-only .bin), in
    fp32 and eval mode: its weights are what we convert, and its logits what we check ours against. Weights
    that do not fit its config are refused: transformers would fill missing ones in at random, drop extra
    ones (a config with fewer layers than the checkpoint) and fail on other shapes with a traceback."""
    with weights_as_value_errors(source):
        reference, info = model_class.from_pretrained(
            folder, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs
        )
    if info["missing_keys"]:
        raise ValueError(f"{source} lacks weights the model needs: {sorted(info['missing_keys'])[:5]}")
    if info["unexpected_keys"]:
        raise ValueError(
            f"{source} has weights its config.json has no place for: {sorted(info['unexpected_keys'])[:5]}"
        )
    if info["mismatched_keys"]:
        key, saved, expected = sorted(info["mismatched_keys"])[0]
        raise ValueError(f"{source}: {key} has shape {tuple(saved)}, its config.json expects {tuple(expected)}")
    return reference.float().eval()


def load_pickled_weights(path: str | os.PathLike) -> dict:
    """torch.load that only accepts tensors and plain containers: a pickle cannot run code on us."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or others) for anything beyond plain data
        raise ValueError(
            f"{path} is not a plain weights file that loads with weights_only=True ({pickle_refusal(e)}); "
            "nothing in it was run"
        ) from None


def strip_prefix(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix): value for key, value in weights.items()}


def load_exactly(model: PreTrainedModel, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load every weight of the model, and nothing else: a converter that drops a tensor is a bug."""
    own = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(own) - set(weights) - tied)
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit the converted config (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]})")  # fmt: skip
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in weights.items()]
    wrong = [s for s in shapes if s[1] != s[2]]
    if wrong:
        raise ValueError(f"{source}: {wrong[0][0]} has shape {wrong[0][1]}, the config expects {wrong[0][2]}")
    model.load_state_dict(weights, strict=False)
    if model.config.tie_word_embeddings:
        model.tie_weights()


def largest_difference(
    converted: Callable[[torch.Tensor], torch.Tensor],
    source: Callable[[torch.Tensor], torch.Tensor],
    vocab_size: int,
    context: int,
) -> float:
    """max |converted logits - source logits| in fp32 on a fixed random batch: the converter's self-check."""
    ids = torch.randint(0, vocab_size, (2, min(context, 64)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (converted(ids).float() - source(ids).float()).abs().max().item()


def check_same_logits(difference: float, source: str, tolerance: float = 1e-4) -> None:
    print(f"largest logit difference to {source}: {difference:.2e}")
    if not difference <= tolerance:
        raise ValueError(f"the converted model's logits differ from {source}'s by {difference:.2e} (> {tolerance})")


def source_tokenizer(source: str | os.PathLike | None) -> PreTrainedTokenizerBase | None:
    """The source folder's tokenizer, when it has one."""
    if source is None or not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(str(source))


def write_converted(
    model: PreTrainedModel,
    output_dir: str | os.PathLike,
    *,
    source: str,
    summary: str,
    tokenizer_from: str | os.PathLike | None,
    overwrite: bool = False,
    card_config: HfGptConfig | None = None,
    tokenizer_as: Callable[[PreTrainedTokenizerBase], PreTrainedTokenizerBase] | None = None,
) -> Path:
    """The converted model's folder (see `write_model_folder`), with a card naming the source as base_model;
    `tokenizer_as` recasts the source's tokenizer (e.g. as the class the target format's runtimes expect)."""
    tokenizer = source_tokenizer(tokenizer_from)
    if tokenizer is not None and tokenizer_as is not None:
        tokenizer = tokenizer_as(tokenizer)
    card = render_card(
        card_config or model.config,
        count_parameters(model),
        model_name=Path(output_dir).name,
        summary=summary + ("" if tokenizer is not None else " No tokenizer came with the source: add one."),
        base_model=source,
        model_path=str(output_dir),
        custom_code=isinstance(model.config, HfGptConfig),
    )
    inputs = [p for p in (source, tokenizer_from) if p is not None]
    write_model_folder(
        model, output_dir, kind=KIND, card=card, tokenizer=tokenizer, overwrite=overwrite, inputs=inputs
    )  # fmt: skip
    print(f"converted {source} -> {output_dir}")
    return Path(output_dir)


def convert(convert_fn: Callable, args: argparse.Namespace) -> Path:
    """Run one conversion from parsed `add_conversion_arguments`, the output checked before the conversion's
    work (and again when it is written)."""
    options = {} if getattr(args, "outtype", None) is None else {"outtype": args.outtype}
    if options and "outtype" not in inspect.signature(convert_fn).parameters:
        raise ValueError("--outtype applies to gguf export only")
    inputs = [p for p in (args.source, args.tokenizer) if p is not None]
    check_output_dir(args.output, args.overwrite, kind=KIND, inputs=inputs)
    return convert_fn(args.source, args.output, overwrite=args.overwrite, tokenizer=args.tokenizer, **options)


def run_converter(prog: str, description: str, directions: dict[str, Callable], argv: list[str] | None) -> int:
    """`python conversion/X.py DIRECTION SOURCE OUTPUT [--overwrite] [--tokenizer T]`; `hf-gpt convert` is the same
    with the format first."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("direction", choices=sorted(directions))
    add_conversion_arguments(parser)  # the same arguments as `hf-gpt convert FORMAT DIRECTION`
    args = parser.parse_args(argv)
    try:
        convert(directions[args.direction], args)
    except (ValueError, OSError) as e:
        print(f"{prog} {args.direction}: error: {e}", file=sys.stderr)
        return 2
    return 0
