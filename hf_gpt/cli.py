"""The `hf-gpt` command: argument parsing only; the work happens in the library modules."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from collections.abc import Sequence

from safetensors import SafetensorError

from .data.documents import CorpusOptions, SplitOptions
from .options import add_arguments, from_namespace
from .ranges import COUNT, NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY_MASS, SEED


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="text files (one document each), .jsonl/.json lines, .parquet/.arrow files, or dataset folders",
    )
    add_arguments(parser, CorpusOptions)


# `hf-gpt convert FORMAT ...`: each format is a converter module of hf_gpt.conversion, whose DIRECTIONS it runs.
# (gguf's and onnx's are not gguf.py and onnx.py: run as scripts, they would hide the packages they import.)
FORMATS = {"gpt2": "gpt2", "openai-gpt": "openai_gpt", "nanogpt": "nanogpt", "gguf": "gguf_file", "onnx": "onnx_file"}
GGUF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """What every conversion takes, for `hf-gpt convert` and `python conversion/FORMAT.py` alike."""
    parser.add_argument("source", help="checkpoint or model folder to read")
    parser.add_argument("output", help="folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier converted folder")
    parser.add_argument("--tokenizer", help="tokenizer folder to carry over (default: the source's, if it has one)")
    parser.add_argument("--outtype", choices=GGUF_OUTTYPES, help="gguf export: the tensor type (default: f16)")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming the flag; the full usage is one --help away. (Subcommands inherit it.)"""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `hf-gpt` parser. With `command`, only that command's flags are added (the others are listed by name):
    pretrain's and finetune's come from argument dataclasses whose modules load the training stack (torch,
    accelerate, transformers), which `hf-gpt prepare-data` should not wait for."""
    parser = Parser(prog="hf-gpt", description="Train, prepare data for, and share GPT models.")
    commands = parser.add_subparsers(dest="command", required=True)
    with_flags = {name: command is None or command == name for name in ("pretrain", "finetune", "estimate")}

    train = commands.add_parser("train-tokenizer", help="train a GPT-2-style byte-level BPE tokenizer")
    add_corpus_arguments(train)
    train.add_argument(
        "--vocab-size", type=POSITIVE_INT.parse, required=True, help="total size, special tokens included"
    )
    train.add_argument("--output", required=True, help="folder to write (loads with AutoTokenizer)")
    train.add_argument(
        "--special-token",
        dest="special_tokens",
        action="append",
        default=[],
        help="an extra special token after <|endoftext|> (repeat for more)",
    )
    train.add_argument("--min-frequency", type=COUNT.parse, default=0, help="least count for a merge")
    train.add_argument(
        "--model-max-length", type=POSITIVE_INT.parse, default=1024, help="context length recorded in the tokenizer"
    )

    prepare = commands.add_parser("prepare-data", help="encode a corpus into packed token files")
    add_corpus_arguments(prepare)
    prepare.add_argument("--tokenizer", required=True, help="tokenizer folder")
    prepare.add_argument("--output", required=True, help="folder for train.bin, val.bin and manifest.json")
    add_arguments(prepare, SplitOptions)
    prepare.add_argument(
        "--workers", type=POSITIVE_INT.parse, default=None, help="encoding processes (default: all cores)"
    )

    add_pretrain_parser(commands, with_flags["pretrain"])
    add_finetune_parser(commands, with_flags["finetune"])
    add_generate_parser(commands)
    add_eval_parser(commands)
    add_estimate_parser(commands, with_flags["estimate"])

    push = commands.add_parser("push", help="upload a model folder to the Hub (HF_ENDPOINT) in one commit")
    push.add_argument("folder", help="model folder (e.g. OUTPUT/model of hf-gpt pretrain)")
    push.add_argument("repo_id", metavar="ORG/NAME")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--revision", help="branch to commit to (created when missing)")
    push.add_argument("--commit-message")
    push.add_argument("--license", help="license id for the card's metadata, e.g. apache-2.0")
    push.add_argument("--language", help="language code for the card's metadata, e.g. en")
    push.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help='also push the files this glob matches, relative to the folder, e.g. "logs/*.jsonl" (repeatable); '
        "hidden files and pickled weights are never pushed",
    )

    quick = commands.add_parser(
        "quickstart", help="train a tokenizer and a small GPT on the standard library's docstrings, offline"
    )
    quick.add_argument("--output", default="hf-gpt-quickstart", help="run folder (an earlier quickstart is replaced)")
    quick.add_argument(
        "--max-steps",
        type=POSITIVE_INT.parse,
        default=None,
        help="optimizer steps (default: about 3 minutes on 2 cores)",
    )

    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint: gpt2 import|export, openai-gpt import, nanogpt import, gguf export, onnx export",
        description="Convert a checkpoint to or from hf_gpt, checking the result's logits against the source "
        "(as `python conversion/FORMAT.py DIRECTION ...` does).",
    )
    convert.add_argument("format", choices=FORMATS, help="the other side's format")
    convert.add_argument("direction", choices=["import", "export"], help="import: into hf_gpt; export: out of it")
    add_conversion_arguments(convert)
    return parser


def add_pretrain_parser(commands, with_flags: bool = True) -> None:
    p = commands.add_parser(
        "pretrain",
        help="train a GPT from scratch (also under `accelerate launch`)",
        description="Train a GPT from scratch. Writes OUTPUT/model (save_pretrained folder), "
        "OUTPUT/checkpoints and OUTPUT/logs. Runs unchanged under `accelerate launch` on many GPUs.",
    )
    if with_flags:
        from .train.pretraining_setup import PretrainArguments

        add_arguments(p, PretrainArguments)


def add_finetune_parser(commands, with_flags: bool = True) -> None:
    p = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained GPT on a task, GPT-1 style",
        description="Fine-tune a pretrained GPT the GPT-1 way: task inputs wrapped in start / delimiter / extract "
        "tokens, the head reading the extract token, plus an auxiliary language-modelling loss. Task files are "
        "JSONL or CSV with the columns: classification: text, label; entailment: premise, hypothesis, label; "
        "similarity: text_a, text_b, label; multiple_choice: context, choices (a list), label (its index). "
        "Writes OUTPUT/model (save_pretrained folder with eval_results.json), OUTPUT/checkpoints and OUTPUT/logs, "
        "as pretrain does, and runs unchanged under `accelerate launch`.",
    )
    if with_flags:
        from .train.finetuning import FinetuneArguments

        add_arguments(p, FinetuneArguments)


def add_generate_parser(commands) -> None:
    p = commands.add_parser("generate", help="sample from a model, streaming tokens as they come")
    p.add_argument("model", help="model folder or Hub name")
    p.add_argument("prompt", nargs="?", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-new-tokens", type=POSITIVE_INT.parse, default=100)
    p.add_argument("--temperature", type=POSITIVE.parse, default=1.0)
    p.add_argument("--top-k", type=COUNT.parse, default=50, help="0 disables")
    p.add_argument("--top-p", type=PROBABILITY_MASS.parse, default=None)
    p.add_argument("--num-return-sequences", type=POSITIVE_INT.parse, default=1)
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--seed", type=SEED.parse, default=None)
    p.add_argument("--trust-remote-code", action="store_true", help="for models whose code is in their folder")


def add_eval_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="perplexity and zero/one/few-shot scores of a causal LM")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)
    ppl = kinds.add_parser(
        "perplexity",
        help="strided sliding-window perplexity of text files",
        description="Each file is one document, started after <|endoftext|>. Every token is predicted once, "
        "from a window of at most --block-size tokens; each window predicts --stride new tokens.",
    )
    ppl.add_argument("model", help="model folder or Hub name (any causal LM)")
    ppl.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 text files")
    ppl.add_argument(
        "--block-size",
        type=POSITIVE_INT.parse,
        help="tokens the model sees per window, so a token has up to this many before it "
        "(default: the model's context, at most 1024)",
    )
    ppl.add_argument(
        "--stride", type=POSITIVE_INT.parse, help="new tokens per window, 1..block size (default: half the block)"
    )
    add_eval_options(ppl, "JSON file for the figures (default: print only)")

    fewshot = kinds.add_parser(
        "fewshot",
        help="zero/one/few-shot accuracy on a task file or a built-in GPT-3 synthetic task",
        description="Task files are JSONL, one example per line: multiple choice {context, choices, answer} "
        "scored by log-likelihood (acc, and length-normalised acc_norm / acc_token_norm); completion "
        '{prompt, target} scored by greedy generation and exact match. Lines with "split": "train" are '
        "the pool of shots. Built-in tasks: arithmetic-2d+ .. arithmetic-1dc, cycle-letters, anagrams-1, "
        "anagrams-2, random-insertion, reversed-words (the word tasks need --words FILE).",
    )
    fewshot.add_argument("model", help="model folder or Hub name (any causal LM)")
    fewshot.add_argument("task", nargs="?", help="a task file (.jsonl) or a built-in task name")
    fewshot.add_argument("--task", dest="task_option", metavar="TASK", help="the same, as an option")
    fewshot.add_argument("--shots", default="0,1,5", help="comma-separated shot counts (default: 0,1,5)")
    fewshot.add_argument("--limit", type=POSITIVE_INT.parse, help="score only the first N test examples")
    add_task_options(fewshot, seed_help="for drawing shots (and generating built-in tasks)")
    add_eval_options(fewshot, "JSON file for the results (default: fewshot-TASK.json)")

    export = kinds.add_parser(
        "export-lm-eval",
        help="write a task as an lm-evaluation-harness task (YAML + JSONL), to run offline with lm_eval",
        description="Writes FOLDER/NAME.yaml and its data; then: lm_eval --model hf --model_args "
        "pretrained=MODEL,trust_remote_code=True --include_path FOLDER --tasks NAME",
    )
    export.add_argument("task", help="a task file (.jsonl) or a built-in task name")
    export.add_argument("folder", help="folder for the YAML and its data")
    add_task_options(export, seed_help="for generating built-in tasks")
    export.add_argument(
        "--max-gen-toks", type=POSITIVE_INT.parse, default=32, help="generation limit for completion tasks"
    )


def add_task_options(parser: argparse.ArgumentParser, seed_help: str) -> None:
    parser.add_argument("--seed", type=SEED.parse, default=0, help=seed_help)
    parser.add_argument("--words", help="text file to take the word tasks' words from")
    parser.add_argument("--description", help="instruction shown once before the examples")


def add_eval_options(parser: argparse.ArgumentParser, output_help: str) -> None:
    parser.add_argument("--batch-size", type=POSITIVE_INT.parse, default=8, help="sequences per forward pass")
    parser.add_argument("--output", help=output_help)
    parser.add_argument("--trust-remote-code", action="store_true", help="for models whose code is in their folder")


def add_estimate_parser(commands, with_flags: bool = True) -> None:
    p = commands.add_parser(
        "estimate",
        help="parameters, training FLOPs, memory, GPU time and cost of a model, before training it",
        description="Estimate what training a model costs: parameters (exact, counted on the meta device), "
        "training FLOPs (6N per token plus attention 12·L·d·T), memory per GPU (weights, gradients, Adam "
        "states, activations) and GPU time. GPT-3's published figure: "
        "`hf-gpt estimate gpt3-175b --tokens 300B --gpu-tflops 28 --mfu 1` gives 3.14e23 FLOPs, 355 GPU-years.",
    )
    if not with_flags:
        return
    from .estimate import ATTENTIONS, PRECISIONS

    p.add_argument("model", help="a preset name or a config.json (or its folder)")
    p.add_argument(
        "--set",
        dest="model_overrides",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a config field, e.g. --set num_hidden_layers=6 (repeatable)",
    )
    p.add_argument("--tokens", help="training tokens, e.g. 300e9, 300B or 1.5T (default: 20 per parameter, Chinchilla)")
    p.add_argument("--seq-len", type=POSITIVE_INT.parse, help="tokens per sequence (default: the model's context)")
    p.add_argument(
        "--batch-size", type=POSITIVE_INT.parse, default=1, help="sequences per GPU and forward pass, for memory"
    )
    p.add_argument("--precision", choices=PRECISIONS, default="bf16", help="bf16/fp16: autocast mixed precision")
    p.add_argument("--attention", choices=ATTENTIONS, default="sdpa", help="eager keeps the a·s² score tensors")
    p.add_argument("--gradient-checkpointing", action="store_true", help="keep only layer inputs, recompute the rest")
    p.add_argument("--gpu-tflops", type=POSITIVE.parse, default=312.0, help="peak TFLOP/s per GPU (default: A100 bf16)")
    p.add_argument("--mfu", type=PROBABILITY_MASS.parse, default=0.4, help="share of the peak achieved, in (0, 1]")
    p.add_argument("--gpus", type=POSITIVE_INT.parse, default=1, help="GPUs, for wall-clock time and sharded memory")
    p.add_argument("--price-per-hour", type=NON_NEGATIVE.parse, help="price of one GPU-hour, for the cost")


def run(args: argparse.Namespace) -> None:
    common = {name: getattr(args, name, None) for name in ("text_field", "split", "invalid_utf8", "overwrite")}
    if args.command == "train-tokenizer":
        from .data.tokenizer import train_tokenizer_folder

        train_tokenizer_folder(
            args.inputs,
            args.vocab_size,
            args.output,
            special_tokens=args.special_tokens,
            min_frequency=args.min_frequency,
            model_max_length=args.model_max_length,
            **common,
        )
    elif args.command == "prepare-data":
        from .data.tokens import prepare_data

        split = vars(from_namespace(SplitOptions, args))
        prepare_data(args.inputs, args.tokenizer, args.output, workers=args.workers, **split, **common)
    elif args.command == "pretrain":
        from .train.pretraining import pretrain
        from .train.pretraining_setup import PretrainArguments

        pretrain(from_namespace(PretrainArguments, args))
    elif args.command == "finetune":
        from .train.finetuning import FinetuneArguments, finetune

        finetune(from_namespace(FinetuneArguments, args))
    elif args.command == "generate":
        from .generation.sampling import generate

        if not args.prompt.isascii():  # the shell hands undecodable bytes over as surrogates
            try:
                args.prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("the prompt is not valid UTF-8 text") from None

        options = ("max_new_tokens", "temperature", "top_k", "top_p", "num_return_sequences", "greedy", "seed")
        generate(
            args.model, args.prompt, trust_remote_code=args.trust_remote_code, **{k: getattr(args, k) for k in options}
        )
    elif args.command == "estimate":
        from .estimate import estimate, format_estimate, parse_count
        from .train.pretraining_setup import load_config, parse_overrides

        config = load_config(args.model, parse_overrides(args.model_overrides))
        tokens = None if args.tokens is None else parse_count(args.tokens, "--tokens")
        options = ("seq_len", "batch_size", "precision", "attention", "gradient_checkpointing", "gpu_tflops", "mfu",
                   "gpus", "price_per_hour")  # fmt: skip
        print(format_estimate(estimate(config, tokens=tokens, **{k: getattr(args, k) for k in options}), args.model))
    elif args.command == "eval":
        run_eval(args)
    elif args.command == "push":
        from .hub.push import push

        options = ("private", "revision", "commit_message", "license", "language", "include")
        push(args.folder, args.repo_id, **{name: getattr(args, name) for name in options})
    elif args.command == "convert":
        from .conversion.common import convert

        directions = importlib.import_module(f"hf_gpt.conversion.{FORMATS[args.format]}").DIRECTIONS
        if args.direction not in directions:
            raise ValueError(f"{args.format} converts only by {' and '.join(directions)}, not {args.direction}")
        convert(directions[args.direction], args)
    elif args.command == "quickstart":
        from .quickstart import STEPS, quickstart

        quickstart(args.output, max_steps=args.max_steps or STEPS)


def run_eval(args: argparse.Namespace) -> None:
    from .eval.commands import eval_fewshot, eval_perplexity, parse_shots

    if args.eval_command == "export-lm-eval":
        from .eval.commands import load_fewshot_task
        from .eval.lm_eval_export import export_lm_eval_task

        options = {"seed": args.seed, "words_file": args.words, "description": args.description}
        task = load_fewshot_task(args.task, **options)
        inputs = [p for p in (args.task, args.words) if p is not None]
        path = export_lm_eval_task(task, args.folder, max_gen_toks=args.max_gen_toks, inputs=inputs)
        print(f"lm-eval task written to {path}; run it with --include_path {path.parent} --tasks {path.stem}")
        return
    common = {"batch_size": args.batch_size, "output": args.output, "trust_remote_code": args.trust_remote_code}
    if args.eval_command == "perplexity":
        eval_perplexity(args.model, args.files, block_size=args.block_size, stride=args.stride, **common)
    else:
        options = {"seed": args.seed, "limit": args.limit, "words_file": args.words, "description": args.description}
        if (args.task is None) == (args.task_option is None):
            raise ValueError("name the task once: a task file or built-in task, as TASK or --task TASK")
        task = args.task or args.task_option
        eval_fewshot(args.model, task, shots=parse_shots(args.shots), **options, **common)


def main(argv: Sequence[str] | None = None) -> int:
    """Every expected failure is one line on stderr: exit 2 for bad input, 1 for the environment (a full disk,
    no memory) or a run that diverged, 130 for Ctrl-C. What a command staged is removed before it returns."""
    command, args = "hf-gpt", None
    try:
        args = build_parser(requested_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
        command = f"hf-gpt {args.command}"
        run(args)
    except KeyboardInterrupt:
        return 130
    except MemoryError:
        print("hf-gpt: error: out of memory", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # OSError: missing or unreadable files and models, full disks
        environment = environment_failure(e)
        output = getattr(args, "output", None) if environment and getattr(e, "filename", None) is None else None
        kept = f" (writing {output})" if output else ""
        print(f"{command}: error: {e}{kept}", file=sys.stderr)
        return 1 if environment else 2
    except RuntimeError as e:  # e.g. training diverged: the message says where the last good state is
        print(f"{command}: {e}", file=sys.stderr)
        return 1
    except SafetensorError as e:  # safetensors' own, for weights it cannot read or write
        print(f"{command}: error: weights file: {e}", file=sys.stderr)
        return 1 if environment_failure(e) else 2
    return 0


def requested_command(argv: Sequence[str]) -> str:
    """The command a command line names (its first word that is not a flag; "" for none, as in `hf-gpt --help`)."""
    return next((word for word in argv if not word.startswith("-")), "")


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM}


def environment_failure(error: Exception) -> bool:
    """A full or read-only disk, not bad input (some writers only say so in their message)."""
    return getattr(error, "errno", None) in ENVIRONMENT_ERRNOS or "No space left on device" in str(error)


if __name__ == "__main__":
    sys.exit(main())
