"""Packed token data: a corpus encoded on all cores into one flat token file per split, served as blocks.

`prepare_data` writes, atomically, into its output folder:
    train.bin, val.bin   every document's ids followed by the separator (`<|endoftext|>`), as uint16
                         when the vocabulary fits and uint32 otherwise
    manifest.json        tokenizer fingerprint, dtype, and documents / tokens per split
`TokenBlocks` serves fixed-length blocks of a split by memory map, never reading the file into RAM.

Special-token strings inside the text (a literal "<|endoftext|>") are encoded as plain text, like
tiktoken's `encode_ordinary`: only document ends get the separator id.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from ..files import atomic_directory, flush_to_disk, read_json_object, write_text_atomic
from ..machine import available_cores
from .documents import Corpus, Piece
from .encoding import CachedEncoder, is_gpt2_byte_level
from .tokenizer import backend_of, read_tokenizer_files, tokenizer_fingerprint

if TYPE_CHECKING:  # transformers loads in seconds: `hf-gpt prepare-data` reads tokenizer folders without it
    from transformers import PreTrainedTokenizerBase

MANIFEST = "manifest.json"
FORMAT = "hf_gpt.tokens/1"
SPLITS = ("train", "val")
TASK_CHARS = 1 << 20  # text per task sent to a worker


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def make_encoder(tokenizer_json: str) -> Callable[[list[str]], list[np.ndarray]]:
    """The fastest exact encoder of a list of texts for this tokenizer: the word cache when it applies."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    if is_gpt2_byte_level(tokenizer):
        return CachedEncoder(tokenizer).encode_batch
    tokenizer.encode_special_tokens = True

    def encode_batch(texts: list[str]) -> list[np.ndarray]:
        encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [np.asarray(encoding.ids, dtype=np.int64) for encoding in encodings]

    return encode_batch


# Each worker process builds its encoder (and its word cache) once; this is that process's copy.
_worker_encoder: Callable[[list[str]], list[np.ndarray]] | None = None


def _start_worker(tokenizer_json: str, parent: int) -> None:
    global _worker_encoder
    # The objects inherited from the parent by fork are never freed here: freezing them keeps the collector
    # from scanning them, which would copy every page they lie on (a 1.5x slowdown under a large parent).
    gc.freeze()
    _worker_encoder = make_encoder(tokenizer_json)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system before forking the workers. A process that has just trained
    a tokenizer keeps a gigabyte of freed memory there, and forked workers pay for it in page copies (measured on
    100 MB of diverse text: 6.7-7.6 s instead of 4.4 s)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _exit_with_parent(parent: int) -> None:
    """A SIGKILL of the parent skips the pool's shutdown: its workers would idle on, holding their memory."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


def _encode_texts(texts: list[str], dtype: np.dtype) -> list[np.ndarray]:
    return [ids.astype(dtype) for ids in _worker_encoder(texts)]


@contextlib.contextmanager
def tokenizers_single_threaded() -> Iterator[None]:
    """Workers are the parallelism; tokenizers' own thread pool would only oversubscribe the cores."""
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def batched_pieces(pieces: Iterable[Piece], chars: int = TASK_CHARS) -> Iterator[list[Piece]]:
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece.text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def encode_pieces(
    pieces: Iterable[Piece], tokenizer_json: str, dtype: np.dtype, workers: int
) -> Iterator[tuple[Piece, np.ndarray]]:
    """Each piece with its ids, in input order, encoded by `workers` processes (at most 2 tasks each in flight)."""
    tasks = batched_pieces(pieces)
    if workers == 1:
        encode = make_encoder(tokenizer_json)
        for task in tasks:
            yield from zip(task, (ids.astype(dtype) for ids in encode([p.text for p in task])), strict=True)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    release_free_memory()
    start = {"initializer": _start_worker, "initargs": (tokenizer_json, os.getpid())}
    pool = ProcessPoolExecutor(workers, mp_context=context, **start)
    with tokenizers_single_threaded(), pool:
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append((task, pool.submit(_encode_texts, [p.text for p in task], dtype)))
                if len(pending) >= 2 * workers:
                    task, result = pending.popleft()
                    yield from zip(task, result.result(), strict=True)
            while pending:
                task, result = pending.popleft()
                yield from zip(task, result.result(), strict=True)
        except BrokenProcessPool:
            raise RuntimeError(
                "an encoding worker process died (killed, or out of memory?); nothing was written"
            ) from None


class ValidationSplit:
    """Sends whole pieces to validation so that its share of tokens tracks `fraction` all through the corpus."""

    def __init__(self, fraction: float):
        self.fraction, self.total, self.validation = fraction, 0, 0

    def takes(self, tokens: int) -> bool:
        self.total += tokens
        target = self.fraction * self.total
        take = abs(self.validation + tokens - target) < abs(self.validation - target)
        self.validation += tokens if take else 0
        return take


def separator_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token to separate documents (GPT-2 uses <|endoftext|>)")
    return tokenizer.eos_token_id


def prepare_data(
    inputs: Sequence[str | os.PathLike | Any] | str | os.PathLike | Any,
    tokenizer: PreTrainedTokenizerBase | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    val_fraction: float = 0.01,
    text_field: str = "text",
    split: str = "train",
    invalid_utf8: str = "error",
    workers: int | None = None,
    overwrite: bool = False,
    val_inputs: Sequence[str | os.PathLike | Any] | str | os.PathLike | Any | None = None,
) -> dict:
    """Encode `inputs` (see `hf_gpt.data.documents.Corpus`) into packed token files; returns the manifest.

    Validation gets whole pieces (documents, or ~16k-character stretches of long ones) spread evenly
    through the corpus, about `val_fraction` of the tokens; or, with `val_inputs`, exactly those
    inputs (a held-out file, say) and nothing of `inputs`.
    """
    if val_inputs is not None:
        val_fraction = 0.0
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    given_tokenizer = [Path(tokenizer)] if isinstance(tokenizer, (str, os.PathLike)) else []
    if given_tokenizer:
        tokenizer = read_tokenizer_files(tokenizer)
    separator = separator_id(tokenizer)
    workers = available_cores() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    options = {"text_field": text_field, "split": split, "invalid_utf8": invalid_utf8}
    corpus = Corpus(inputs, **options)
    corpora = [corpus] if val_inputs is None else [corpus, Corpus(val_inputs, **options)]
    dtype = token_dtype(len(tokenizer))
    splitter = ValidationSplit(val_fraction)
    counts = {name: {"file": f"{name}.bin", "tokens": 0, "documents": 0} for name in SPLITS}
    end = np.array([separator], dtype=dtype)
    inputs = given_tokenizer + [path for c in corpora for path in c.paths]

    with atomic_directory(output_dir, overwrite, kind="prepare-data", inputs=inputs) as staging:
        with open(staging / "train.bin", "wb") as train, open(staging / "val.bin", "wb") as val:
            files = {"train": train, "val": val}
            tokenizer_json = backend_of(tokenizer).to_str()  # serialised once, shipped to every worker
            for source, description in zip(corpora, ["encoding", "encoding validation"], strict=False):
                encoded = encode_pieces(source.pieces(description), tokenizer_json, dtype, workers)
                for piece, ids in encoded:
                    if piece.ends_document:
                        ids = np.concatenate([ids, end])
                    name = "val" if source is not corpus or splitter.takes(len(ids)) else "train"
                    files[name].write(ids)  # the array's buffer, not a copy
                    counts[name]["tokens"] += len(ids)
                    counts[name]["documents"] += piece.ends_document
            flush_to_disk(train)
            flush_to_disk(val)
        for source in corpora:
            source.check_not_empty()
        if counts["train"]["tokens"] == 0 or (val_fraction > 0 and counts["val"]["tokens"] == 0):
            raise ValueError(
                f"the corpus is too small for val_fraction={val_fraction}: {corpus.documents} documents, "
                f"{splitter.total} tokens; give more text or change val_fraction (0 means no validation split)"
            )
        manifest = {
            "format": FORMAT,
            "dtype": dtype.name,
            "tokenizer": {
                "fingerprint": tokenizer_fingerprint(tokenizer),
                "vocab_size": len(tokenizer),
                "separator": tokenizer.convert_ids_to_tokens(separator),
                "separator_id": separator,
            },
            "splits": counts,
            **{key: sum(getattr(c, key) for c in corpora) for key in ("documents", "characters")},
            "val_fraction": val_fraction,
            "invalid_utf8": invalid_utf8,
            **{key: sum(getattr(c, key) for c in corpora) for key in ("replaced_bytes", "inexact_cuts")},
            "inputs": [str(i) for i in corpus.inputs],
            "val_inputs": [str(i) for i in corpora[1].inputs] if val_inputs is not None else None,
        }
        write_text_atomic(staging / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if manifest["inexact_cuts"]:
        print(f"note: {manifest['inexact_cuts']} pieces were cut inside a word longer than 4096 characters")
    print(
        f"{manifest['documents']} documents -> {counts['train']['tokens']} train + {counts['val']['tokens']} "
        f"val tokens ({dtype.name}) written to {output_dir}"
    )
    return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {data_dir}: prepare it with `hf-gpt prepare-data`")
    manifest = read_json_object(path, "data manifest")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
    splits = manifest.get("splits")
    well_formed = (
        isinstance(splits, dict)
        and all(
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and Path(s["file"]).name == s["file"]
            and isinstance(s.get("tokens"), int)
            for s in splits.values()
        )  # fmt: skip
        and isinstance(manifest.get("tokenizer"), dict)
        and isinstance(manifest["tokenizer"].get("fingerprint"), str)
        and isinstance(manifest["tokenizer"].get("vocab_size"), int)
        and manifest.get("dtype") in ("uint16", "uint32")
    )
    if not well_formed:
        raise ValueError(
            f"{path} is damaged (its splits, tokenizer or dtype are missing or malformed); prepare the data again"
        )
    return manifest


def check_same_tokenizer(manifest: dict, tokenizer: PreTrainedTokenizerBase | Tokenizer, where: str) -> None:
    expected, given = manifest["tokenizer"]["fingerprint"], tokenizer_fingerprint(tokenizer)
    if expected != given:
        raise ValueError(
            f"{where} was prepared with a different tokenizer (fingerprint {expected[:12]}, this one {given[:12]}); "
            "prepare the data again with this tokenizer"
        )
