"""Read a corpus (text files, JSONL, datasets) as a stream of documents cut into bounded pieces.

- A plain text file is one document; a JSONL line or a dataset row is one document.
- Long documents are cut into pieces of about `piece_chars` characters, only where GPT-2's
  pre-tokenization cannot join the two sides (see `safe_cut`), so encoding the pieces one by one
  gives exactly the ids of the whole. Only a single "word" longer than 4096 characters (a run of
  letters without any space, digit or punctuation) has to be cut inside; such cuts are counted.
- Invalid UTF-8 (and lone surrogates from JSON escapes) is rejected by default with the file and byte
  offset; with invalid_utf8="replace" each bad byte becomes U+FFFD and is counted.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..options import option
from ..ranges import SHARE

READ_BYTES = 1 << 20
INVALID_UTF8_POLICIES = ("error", "replace")


@dataclass(kw_only=True)
class CorpusOptions:
    """How a corpus is read, for every command that reads one (each field is also its flag, see `options`)."""

    text_field: str = option("text", help="field holding the text in JSONL and datasets")
    split: str = option("train", help="split to read from dataset folders")
    invalid_utf8: str = option(
        "error", choices=INVALID_UTF8_POLICIES,
        help="'error' stops at the first invalid byte, naming the file; 'replace' writes U+FFFD and counts them",
    )  # fmt: skip
    overwrite: bool = option(False, help="replace a non-empty output folder")


@dataclass(kw_only=True)
class SplitOptions:
    """How prepared data gets its validation split, for `prepare-data` and `pretrain` alike (each field is also
    its flag, see `options`)."""

    val_fraction: float = option(0.01, range=SHARE, help="share of tokens for validation")
    val_inputs: list[str] | None = option(
        None, flag="--val-input", metavar="INPUT", repeated=lambda items: items or None,
        help="held-out input for the validation split, instead of --val-fraction (repeatable)",
    )  # fmt: skip


JSONL_SUFFIXES = (".jsonl", ".json")
DATASET_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
# Greedy: matches up to the LAST blank or newline between two non-space characters, found from the end.
LAST_SAFE_CUT = re.compile(r"(?s:.*)(?<=\S)[ \n](?=\S)")
SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Piece:
    text: str
    ends_document: bool
    exact_cut: bool = True  # False when a long word forced a cut inside it


def char_class(c: str) -> str:
    """GPT-2's regex classes by Python's tables: whitespace (a superset of the regex's \\s), letter, number, other."""
    if c.isspace():
        return "space"
    if c.isalpha():
        return "letter"
    return "number" if unicodedata.category(c)[0] == "N" else "other"


def safe_cut(text: str, start: int, stop: int) -> int | None:
    """The last position in (start, stop] where `text` may be cut without changing its encoding, or None.

    First choice: a blank or newline between two non-space characters. Else, in text without such
    (CJK, code, long numbers): a change of class between two non-space characters, except after an
    apostrophe (a contraction may start there).
    """
    for window_start in (max(start + 1, stop - 4096), start + 1):
        if last := LAST_SAFE_CUT.match(text, window_start, stop + 1):
            return last.end() - 1
    right = char_class(text[stop])
    for i in range(stop, max(start + 1, stop - 4096) - 1, -1):
        left = char_class(text[i - 1])
        if left != right and "space" not in (left, right) and text[i - 1] != "'":
            return i
        right = left
    return None


def next_piece(text: str, start: int, piece_chars: int) -> Piece:
    """The piece of `text` from `start`, at most `piece_chars` long, that does not end the document."""
    stop = start + piece_chars
    cut = safe_cut(text, start, stop)
    return Piece(text[start : cut or stop], False, exact_cut=cut is not None)


def cut_document(blocks: Iterable[str], piece_chars: int) -> Iterator[Piece]:
    """One document, given whole (`[text]`) or as a stream of text blocks, cut into pieces.

    A cut depends only on the characters up to it, so streamed and whole documents cut alike.
    """
    buffer = ""
    for block in blocks:
        buffer += block
        start = 0
        while len(buffer) - start > piece_chars:
            piece = next_piece(buffer, start, piece_chars)
            yield piece
            start += len(piece.text)
        buffer = buffer[start:]
    if buffer:
        yield Piece(buffer, True)


class Corpus:
    """The inputs of a tokenizer or data run, checked before any work starts.

    `inputs` are paths (text files, .jsonl/.json lines, .parquet/.arrow files, a folder that
    `datasets.load_dataset` understands or one written by `Dataset.save_to_disk`) or `datasets`
    Dataset / IterableDataset objects.
    """

    def __init__(
        self,
        inputs: Sequence[str | os.PathLike | Any] | str | os.PathLike | Any,
        *,
        text_field: str = "text",
        split: str = "train",
        invalid_utf8: str = "error",
        piece_chars: int = 16384,
    ):
        if invalid_utf8 not in INVALID_UTF8_POLICIES:
            raise ValueError(f"invalid_utf8 must be one of {INVALID_UTF8_POLICIES}, got {invalid_utf8!r}")
        sources = inputs if isinstance(inputs, list | tuple) else [inputs]  # one path or dataset, or several
        self.inputs = [check_input(source) for source in sources]
        if not self.inputs:
            raise ValueError("no inputs given")
        self.text_field, self.split, self.invalid_utf8, self.piece_chars = text_field, split, invalid_utf8, piece_chars
        self.replaced_bytes = 0
        self.documents = 0
        self.characters = 0
        self.inexact_cuts = 0  # pieces cut inside a word (no boundary within 4096 characters)

    @property
    def paths(self) -> list[Path]:
        return [source for source in self.inputs if isinstance(source, Path)]

    @property
    def file_bytes(self) -> int | None:
        """Total size when every input is a plain file (for a progress bar), else None."""
        if all(isinstance(i, Path) and i.is_file() and i.suffix not in DATASET_SUFFIXES for i in self.inputs):
            return sum(i.stat().st_size for i in self.inputs)
        return None

    def pieces(self, desc: str = "reading") -> Iterator[Piece]:
        """Every document's pieces, in input order, with a progress bar."""
        with tqdm(total=self.file_bytes, unit="B", unit_scale=True, desc=desc) as progress:
            for source in self.inputs:
                for piece in self._pieces_of(source, progress):
                    self.characters += len(piece.text)
                    self.documents += piece.ends_document
                    self.inexact_cuts += not piece.exact_cut
                    yield piece

    def check_not_empty(self) -> None:
        """After reading: refuse a corpus without any text."""
        if self.characters == 0:
            raise ValueError(f"the corpus is empty: no text in {[str(i) for i in self.inputs]}")

    def texts(self, desc: str = "reading") -> Iterator[str]:
        return (piece.text for piece in self.pieces(desc))

    def _pieces_of(self, source: Any, progress: tqdm) -> Iterator[Piece]:
        if not isinstance(source, Path):
            yield from self._dataset_pieces(source, str(type(source).__name__), progress)
        elif source.is_dir() or source.suffix in DATASET_SUFFIXES:
            yield from self._dataset_pieces(load_dataset_input(source, self.split), str(source), progress)
        elif source.suffix in JSONL_SUFFIXES:
            yield from self._jsonl_pieces(source, progress)
        else:
            yield from self._text_file_pieces(source, progress)

    def _clean(self, text: str, where: str) -> str:
        """Apply the invalid-UTF-8 policy to text decoded with surrogateescape."""
        if text.isascii():
            return text
        try:
            text.encode("utf-8")  # only a surrogate stops this: there is nothing to clean
            return text
        except UnicodeEncodeError:
            pass
        if self.invalid_utf8 == "error":
            bad = SURROGATE.search(text).start()
            raise ValueError(
                f"{where}: invalid UTF-8 (or a lone surrogate) at character {bad} of this chunk: "
                f"{text[max(0, bad - 20) : bad + 20]!r}; fix the file or pass invalid_utf8='replace' "
                "(--invalid-utf8 replace) to replace each bad byte with U+FFFD"
            )
        text, count = SURROGATE.subn("\ufffd", text)
        self.replaced_bytes += count
        return text

    def _text_file_pieces(self, path: Path, progress: tqdm) -> Iterator[Piece]:
        return cut_document(self._text_file_blocks(path, progress), self.piece_chars)

    def _text_file_blocks(self, path: Path, progress: tqdm) -> Iterator[str]:
        """The file's text, decoded incrementally (a character may straddle two reads)."""
        decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        offset = 0
        with open_input(path) as f:
            while block := f.read(READ_BYTES):
                yield self._clean(decoder.decode(block), f"{path} (bytes from {offset})")
                offset += len(block)
                progress.update(len(block))
        yield self._clean(decoder.decode(b"", final=True), f"{path} (its last bytes)")

    def _jsonl_pieces(self, path: Path, progress: tqdm) -> Iterator[Piece]:
        with open_input(path) as f:
            for line_number, raw in enumerate(f, 1):
                progress.update(len(raw))
                where = f"{path}:{line_number}"
                line = self._clean(raw.decode("utf-8", "surrogateescape"), where)
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg}); expected one object per line") from None
                yield from self._record_pieces(record, where)

    def _dataset_pieces(self, dataset: Any, name: str, progress: tqdm) -> Iterator[Piece]:
        rows = iter(dataset)
        for row_number in itertools.count():
            try:
                record = next(rows)
            except StopIteration:
                return
            except Exception as e:  # a corrupt file surfaces only while streaming
                raise ValueError(f"cannot read {name} (row {row_number}): {type(e).__name__}: {e}") from None
            yield from self._record_pieces(record, f"{name} row {row_number}")
            progress.update(len(record[self.text_field]))

    def _record_pieces(self, record: Any, where: str) -> Iterator[Piece]:
        if not isinstance(record, dict) or self.text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{where}: no text field {self.text_field!r} (found {fields}); set text_field")
        text = record[self.text_field]
        if not isinstance(text, str):
            raise ValueError(f"{where}: field {self.text_field!r} is {type(text).__name__}, not text")
        yield from cut_document([self._clean(text, where)], self.piece_chars)


def check_input(source: Any) -> Path | Any:
    """Paths must exist and be readable; anything else must iterate over records (a datasets object)."""
    if not isinstance(source, str | os.PathLike):
        if not hasattr(source, "__iter__"):
            raise ValueError(f"input {source!r} is neither a path nor a dataset")
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"input {path} is not readable")
    return path


def open_input(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise ValueError(f"cannot read input {path}: {e.strerror}") from None


def load_dataset_input(path: Path, split: str) -> Any:
    """A local dataset, streamed: a parquet/arrow file, a save_to_disk folder, or a load_dataset folder."""
    import datasets

    try:
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            loaded = datasets.load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        if path.is_dir():
            return datasets.load_dataset(str(path), split=split, streaming=True)
        return datasets.load_dataset(DATASET_SUFFIXES[path.suffix], data_files=str(path), split="train", streaming=True)
    except Exception as e:  # datasets raises many types; name the input and the cause
        raise ValueError(f"cannot read dataset {path}: {type(e).__name__}: {e}") from None
