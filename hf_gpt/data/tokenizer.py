"""GPT-2-style byte-level BPE tokenizers: train one on your own text, or rebuild one from GPT-2's files.

Both give a `PreTrainedTokenizerFast` whose folder loads with `AutoTokenizer.from_pretrained(DIR)`
without custom code; `train_tokenizer_folder` (the `hf-gpt train-tokenizer` command) writes that folder
without importing transformers. The pipeline is GPT-2's: its regex pre-tokenization over the 256-byte alphabet
(no unknown token can occur), a byte-level decoder, and `<|endoftext|>` as bos, eos, unk and pad.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from ..files import atomic_directory, check_output_dir, read_json_object, write_text_atomic
from ..ranges import COUNT, POSITIVE_INT
from .documents import Corpus

if TYPE_CHECKING:  # transformers takes seconds to import: imported where a transformers tokenizer is made
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

SEPARATOR = "<|endoftext|>"
BYTE_ALPHABET = 256
KIND = "train-tokenizer"


def byte_level_tokenizer(model: models.BPE) -> Tokenizer:
    """GPT-2's pipeline around a BPE model: regex split, byte-level alphabet and decoder."""
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def check_special_tokens(special_tokens: Sequence[str]) -> list[str]:
    tokens = list(special_tokens)
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1 or t == SEPARATOR})
    if duplicates:
        raise ValueError(f"special tokens repeat {duplicates} ({SEPARATOR} is always included)")
    return tokens


def as_transformers_tokenizer(
    tokenizer: Tokenizer, special_tokens: Sequence[str], model_max_length: int
) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    settings = tokenizer_settings(special_tokens, model_max_length)
    del settings["tokenizer_class"]
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **settings)


def tokenizer_settings(special_tokens: Sequence[str], model_max_length: int) -> dict[str, Any]:
    """A trained tokenizer's transformers settings: its tokenizer_config.json, which AutoTokenizer reads."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        # GPT-2 has no pad token; padding with <|endoftext|> is the usual choice.
        **{name: SEPARATOR for name in ("bos_token", "eos_token", "unk_token", "pad_token")},
        "extra_special_tokens": list(special_tokens),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # decode(encode(text)) must give text back unchanged
    }


def train_tokenizer_folder(
    inputs: Sequence[str | os.PathLike | Any] | str | os.PathLike | Any,
    vocab_size: int,
    output_dir: str | os.PathLike | None = None,
    *,
    special_tokens: Sequence[str] = (),
    min_frequency: int = 0,
    model_max_length: int = 1024,
    text_field: str = "text",
    split: str = "train",
    invalid_utf8: str = "error",
    overwrite: bool = False,
    show_progress: bool = True,
) -> Tokenizer:
    """Train as `train_bpe_tokenizer` does and, with `output_dir`, write the folder atomically: tokenizer.json and
    tokenizer_config.json, without importing transformers (seconds, for a command that needs nothing of it)."""
    special_tokens = check_special_tokens(special_tokens)
    COUNT.check("min_frequency", min_frequency)
    POSITIVE_INT.check("model_max_length", model_max_length)
    smallest = BYTE_ALPHABET + 1 + len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: it must be at least {smallest} "
            f"(256 bytes + {SEPARATOR} + {len(special_tokens)} extra special tokens)"
        )
    corpus = Corpus(inputs, text_field=text_field, split=split, invalid_utf8=invalid_utf8)
    if output_dir is not None:
        check_output_dir(output_dir, overwrite, kind=KIND, inputs=corpus.paths)
    tokenizer = byte_level_tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[SEPARATOR, *special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(corpus.texts("reading corpus"), trainer=trainer)
    corpus.check_not_empty()
    if corpus.replaced_bytes:
        print(f"replaced {corpus.replaced_bytes} invalid UTF-8 bytes with U+FFFD")
    if output_dir is not None:
        settings = tokenizer_settings(special_tokens, model_max_length)
        with atomic_directory(output_dir, overwrite, kind=KIND, inputs=corpus.paths) as staging:
            # Python's own writes, so that a full disk is an OSError (tokenizers' `save` raises a bare Exception).
            write_text_atomic(staging / "tokenizer.json", tokenizer.to_str(pretty=True))
            write_text_atomic(staging / "tokenizer_config.json", json.dumps(settings, indent=2) + "\n")
        print(f"tokenizer ({tokenizer.get_vocab_size()} tokens) saved to {output_dir}")
    return tokenizer


def train_bpe_tokenizer(
    inputs: Sequence[str | os.PathLike | Any] | str | os.PathLike | Any,
    vocab_size: int,
    output_dir: str | os.PathLike | None = None,
    **options: Any,
) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style tokenizer on `inputs` (see `hf_gpt.data.documents.Corpus`), streaming the text.

    `vocab_size` counts everything: `<|endoftext|>`, `special_tokens`, the 256 bytes and the merges.
    With `output_dir`, the folder is written atomically and loads with `AutoTokenizer`. The keyword options
    are `train_tokenizer_folder`'s: special_tokens, min_frequency, model_max_length (1024), text_field,
    split, invalid_utf8, overwrite, show_progress.
    """
    tokenizer = train_tokenizer_folder(inputs, vocab_size, output_dir, **options)
    special_tokens = check_special_tokens(options.get("special_tokens", ()))
    return as_transformers_tokenizer(tokenizer, special_tokens, options.get("model_max_length", 1024))


def tokenizer_from_gpt2_files(
    vocab_file: str | os.PathLike,
    merges_file: str | os.PathLike,
    *,
    special_tokens: Sequence[str] = (),
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """The same kind of tokenizer from an existing GPT-2 `vocab.json` and `merges.txt`.

    `<|endoftext|>` keeps its id when the vocabulary has it (50256 in GPT-2) and is appended otherwise.
    """
    special_tokens = check_special_tokens(special_tokens)
    for path in (vocab_file, merges_file):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist")
    try:
        model = models.BPE.from_file(str(vocab_file), str(merges_file))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        raise ValueError(f"cannot read GPT-2 files {vocab_file} and {merges_file}: {e}") from None
    tokenizer = byte_level_tokenizer(model)
    tokenizer.add_special_tokens([SEPARATOR, *special_tokens])
    return as_transformers_tokenizer(tokenizer, special_tokens, model_max_length)


def save_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike] = (),
) -> Path:
    """`save_pretrained` into a temporary folder, renamed into place only once complete."""
    with atomic_directory(output_dir, overwrite, kind=KIND, inputs=inputs) as staging:
        tokenizer.save_pretrained(staging)
    print(f"tokenizer ({len(tokenizer)} tokens) saved to {output_dir}")
    return Path(output_dir)


def check_tokenizer_folder(path: str | os.PathLike) -> None:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    if not any((Path(path) / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise FileNotFoundError(f"{path} holds no tokenizer (no tokenizer.json, vocab.json or tokenizer_config.json)")


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """A tokenizer folder; what is missing or broken in it is a clear error naming the folder."""
    check_tokenizer_folder(path)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # tokenizers and transformers raise many kinds for a damaged file
        raise ValueError(f"the tokenizer in {path} cannot be loaded: {e}") from None


@dataclass(frozen=True)
class TokenizerFiles:
    """A tokenizer folder as the tokenizers library reads it: what encoding packed token files needs, under the
    names a transformers tokenizer has, without importing transformers (seconds, on a command that needs none)."""

    backend_tokenizer: Tokenizer
    eos_token_id: int | None

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def convert_ids_to_tokens(self, index: int) -> str | None:
        return self.backend_tokenizer.id_to_token(index)


def read_tokenizer_files(path: str | os.PathLike) -> TokenizerFiles | PreTrainedTokenizerBase:
    """A tokenizer folder for encoding: its tokenizer.json, and the eos token its tokenizer_config.json names, read
    without transformers; a folder without tokenizer.json (GPT-2's vocab.json and merges.txt) through it."""
    check_tokenizer_folder(path)
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        return load_tokenizer(folder)
    try:
        backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # tokenizers raises a bare Exception for a damaged file
        raise ValueError(f"the tokenizer in {path} cannot be loaded: {e}") from None
    settings_file = folder / "tokenizer_config.json"
    settings = read_json_object(settings_file, "tokenizer settings") if settings_file.is_file() else {}
    eos = settings.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos  # an AddedToken, as older files write it
    return TokenizerFiles(backend, backend.token_to_id(eos) if isinstance(eos, str) else None)


def backend_of(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")
    return backend


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase | Tokenizer) -> str:
    """A hash of what token ids mean (vocabulary, merges, added tokens), to match data with tokenizers."""
    spec = json.loads(backend_of(tokenizer).to_str())
    model = spec.get("model") or {}
    meaning = {
        "vocab": sorted((model.get("vocab") or {}).items(), key=lambda item: item[1]),
        "merges": [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []],
        "added": sorted((t["id"], t["content"], t.get("special", False)) for t in spec.get("added_tokens", [])),
    }
    return hashlib.sha256(json.dumps(meaning, ensure_ascii=False).encode("utf-8")).hexdigest()
