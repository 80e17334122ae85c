"""Tokenizer training and data preparation speed against the common alternatives, in one run.

    python benchmarks/tokenizer_speed.py [--corpus FILE | --diverse] [--megabytes 100] [--threads N]

The text is, by default, natural and never repeated: the .py, .md, .rst and .txt files of the running
environment's installed packages (code and documentation), each distinct file once, up to --megabytes, so
nothing is downloaded. `--corpus FILE` repeats a file instead (e.g. tinyshakespeare.txt, the issue-6
benchmark: natural text's best case for a word cache). On that text and the same number of threads it times
1. tokenizer training: `hf_gpt.data.tokenizer.train_bpe_tokenizer` vs transformers' `train_new_from_iterator`
   on a GPT-2-style fast tokenizer (fed batches of 1000 lines, the documented pattern);
2. encoding: `hf_gpt.data.prepare_data` end to end (read, encode, write) vs tiktoken's
   `encode_ordinary_batch` on the text already in memory, with an `Encoding` built from GPT-2's split
   pattern and the ranks of the tokenizer trained in step 1 (so both use the same vocabulary; the
   token ids are checked to be equal), and `hf-gpt prepare-data` as a user runs it (a new process: start-up,
   reading, encoding, writing), against the same tiktoken time.
`--diverse` replaces the repeated corpus by a stress case: random words drawn from a Zipf law over
two million distinct ones, far more diverse than natural text, where the word cache helps least.
Ratios above 1.0 mean hf_gpt is faster. A row is appended to benchmarks/RESULTS.md.
Needs the `bench` extra (tiktoken): pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from hf_gpt.machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, help="a file to repeat (default: installed packages' text files)")
    parser.add_argument("--megabytes", type=float, default=100.0)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--diverse", action="store_true", help="synthetic Zipfian words instead of the corpus")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def diverse_text(megabytes: float, distinct: int = 2_000_000, seed: int = 0) -> str:
    """Random lowercase words, Zipf-distributed (exponent 1.1) over `distinct` of them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, n)) for n in rng.integers(2, 12, distinct)]
    count = int(megabytes * 1e6 / 8)
    separators = rng.choice([" ", " ", " ", " ", ", ", ".\n", "'s "], count)
    return "".join(words[r] + s for r, s in zip(rng.zipf(1.1, count) % distinct, separators, strict=True))


TEXT_SUFFIXES = (".py", ".md", ".rst", ".txt")


def natural_text(megabytes: float) -> str:
    """This environment's installed packages' text files (code and documentation), each distinct file once, in
    a fixed order, until `megabytes`: natural text that never repeats, with nothing downloaded."""
    import hashlib
    import sysconfig

    roots = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    seen, parts, size = set(), [], 0
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.suffix not in TEXT_SUFFIXES or not path.is_file():
                continue
            data = path.read_bytes()
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                continue
            try:
                parts.append(data.decode("utf-8"))
            except UnicodeDecodeError:
                continue
            seen.add(digest)
            size += len(data)
            if size >= megabytes * 1e6:
                return "\n".join(parts)
    raise SystemExit(f"the installed packages hold only {size / 1e6:.1f} MB of text; ask for less (--megabytes)")


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def tiktoken_encoding(tokenizer):
    """A tiktoken Encoding with the trained vocabulary: ranks are ids, tokens are their bytes."""
    import tiktoken

    from hf_gpt.data.encoding import gpt2_bytes_to_unicode

    to_byte = {char: byte for byte, char in gpt2_bytes_to_unicode().items()}
    specials = set(tokenizer.all_special_tokens)
    ranks = {bytes(to_byte[c] for c in token): i for token, i in tokenizer.get_vocab().items() if token not in specials}
    return tiktoken.Encoding("trained", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={})


def main() -> None:
    args = parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # tokenizers' thread pool, read on first use
    import numpy as np
    import tiktoken
    import tokenizers
    import transformers
    from transformers import GPT2TokenizerFast

    import hf_gpt
    from hf_gpt.data.documents import cut_document
    from hf_gpt.data.tokenizer import train_bpe_tokenizer
    from hf_gpt.data.tokens import prepare_data, read_manifest

    work = Path(tempfile.mkdtemp(prefix="hf_gpt_bench_"))
    if args.diverse:
        text, source = diverse_text(args.megabytes), "synthetic Zipfian words"
    elif args.corpus is None:
        text, source = natural_text(args.megabytes), "installed packages' .py/.md/.rst/.txt files, each once"
    else:
        seed = args.corpus.read_text(encoding="utf-8")
        text = seed * max(1, round(args.megabytes * 1e6 / len(seed.encode("utf-8"))))
        source = f"{args.corpus.name} repeated"
    corpus = work / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    megabytes = corpus.stat().st_size / 1e6
    print(f"corpus: {megabytes:.1f} MB ({source}), {args.threads} threads, scratch folder {work} (removed at the end)")

    train = lambda: train_bpe_tokenizer([corpus], args.vocab_size, work / "tokenizer", show_progress=False)  # noqa: E731
    ours, ours_train = timed(train)
    base = GPT2TokenizerFast(vocab=ours.get_vocab(), merges=[])

    def reference_training():
        with open(corpus, encoding="utf-8") as f:
            lines = f.readlines()
        batches = (lines[i : i + 1000] for i in range(0, len(lines), 1000))
        return base.train_new_from_iterator(batches, vocab_size=args.vocab_size)

    _, reference_train = timed(reference_training)

    manifest, ours_encode = timed(
        lambda: prepare_data([corpus], ours, work / "data", val_fraction=0.0, workers=args.threads)
    )
    command = [str(Path(sys.executable).with_name("hf-gpt")), "prepare-data", str(corpus), "--tokenizer",
               str(work / "tokenizer"), "--output", str(work / "cli"), "--val-fraction", "0",
               "--workers", str(args.threads)]  # fmt: skip
    _, cli_encode = timed(lambda: subprocess.run(command, check=True, capture_output=True))
    cli_same = (work / "cli" / "train.bin").read_bytes() == (work / "data" / "train.bin").read_bytes()
    encoding = tiktoken_encoding(ours)
    documents = [piece.text for piece in cut_document([text], 1 << 20)]  # 1 MB documents, cut where exact
    reference_ids, tiktoken_encode = timed(lambda: encoding.encode_ordinary_batch(documents, num_threads=args.threads))
    written = np.fromfile(work / "data" / "train.bin", dtype=read_manifest(work / "data")["dtype"])
    expected = np.concatenate([np.asarray(ids) for ids in reference_ids] + [[ours.eos_token_id]])
    assert np.array_equal(written, expected), "prepare_data and tiktoken disagree on the token ids"

    assert cli_same, "hf-gpt prepare-data and prepare_data wrote different tokens"
    rows = [  # what, seconds, ratio (reference time / ours) on our rows
        ("hf_gpt train_bpe_tokenizer", ours_train, f"{reference_train / ours_train:.2f}"),
        ("transformers train_new_from_iterator", reference_train, ""),
        (
            "hf-gpt prepare-data (new process: start-up+read+encode+write)",
            cli_encode,
            f"{tiktoken_encode / cli_encode:.2f}",
        ),
        ("hf_gpt prepare_data in process (read+encode+write)", ours_encode, f"{tiktoken_encode / ours_encode:.2f}"),
        ("tiktoken encode_ordinary_batch (in memory)", tiktoken_encode, ""),
    ]
    tokens = manifest["splits"]["train"]["tokens"]
    print(f"\n{'what':62} {'seconds':>8} {'MB/s':>7}  ratio (>1: hf_gpt faster)")
    for name, seconds, ratio in rows:
        print(f"{name:62} {seconds:8.2f} {megabytes / seconds:7.1f}  {ratio}")
    print(f"({tokens:,} tokens; prepare_data and tiktoken ids equal)")

    versions = (
        f"python {platform.python_version()}, hf_gpt {hf_gpt.__version__}, tokenizers {tokenizers.__version__}, "
        f"transformers {transformers.__version__}, tiktoken {tiktoken.__version__}"
    )
    if not args.results.exists():
        args.results.write_text("# Benchmark results\n")
    table = "".join(f"| {what} | {sec:.2f} | {megabytes / sec:.1f} | {ratio} |\n" for what, sec, ratio in rows)
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(
            f"\n## tokenizer_speed, {date.today()}\n"
            f"{cpu_name()}, {args.threads} threads; {versions}; {megabytes:.1f} MB ({source}), "
            f"vocab {args.vocab_size}\n\n"
            f"| what | seconds | MB/s | ratio (>1: hf_gpt faster) |\n|---|---|---|---|\n{table}"
        )
    shutil.rmtree(work)
    print(f"appended to {args.results}")


if __name__ == "__main__":
    sys.exit(main())
