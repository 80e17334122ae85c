"""The `hf-gpt` command: argument parsing only; the work happens in the library modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .documents import INVALID_UTF8_POLICIES


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="text files (one document each), .jsonl/.json lines, .parquet/.arrow files, or dataset folders",
    )
    parser.add_argument("--text-field", default="text", help="field holding the text in JSONL and datasets")
    parser.add_argument("--split", default="train", help="split to read from dataset folders")
    parser.add_argument(
        "--invalid-utf8",
        choices=INVALID_UTF8_POLICIES,
        default="error",
        help="'error' stops at the first invalid byte, naming the file; 'replace' writes U+FFFD and counts them",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-gpt", description="Train, prepare data for, and share GPT models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train-tokenizer", help="train a GPT-2-style byte-level BPE tokenizer")
    add_corpus_arguments(train)
    train.add_argument("--vocab-size", type=int, required=True, help="total size, special tokens included")
    train.add_argument("--output", required=True, help="folder to write (loads with AutoTokenizer)")
    train.add_argument(
        "--special-token",
        dest="special_tokens",
        action="append",
        default=[],
        help="an extra special token after <|endoftext|> (repeat for more)",
    )
    train.add_argument("--min-frequency", type=int, default=0, help="least count for a merge")
    train.add_argument("--model-max-length", type=int, default=1024, help="context length recorded in the tokenizer")

    prepare = commands.add_parser("prepare-data", help="encode a corpus into packed token files")
    add_corpus_arguments(prepare)
    prepare.add_argument("--tokenizer", required=True, help="tokenizer folder")
    prepare.add_argument("--output", required=True, help="folder for train.bin, val.bin and manifest.json")
    prepare.add_argument("--val-fraction", type=float, default=0.01, help="share of tokens for validation")
    prepare.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    return parser


def run(args: argparse.Namespace) -> None:
    common = {name: getattr(args, name) for name in ("text_field", "split", "invalid_utf8", "overwrite")}
    if args.command == "train-tokenizer":
        from .tokenizer import train_bpe_tokenizer

        train_bpe_tokenizer(
            args.inputs,
            args.vocab_size,
            args.output,
            special_tokens=args.special_tokens,
            min_frequency=args.min_frequency,
            model_max_length=args.model_max_length,
            **common,
        )
    elif args.command == "prepare-data":
        from .data import prepare_data

        prepare_data(
            args.inputs, args.tokenizer, args.output, val_fraction=args.val_fraction, workers=args.workers, **common
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"hf-gpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
