"""Blocks of packed token files for training and evaluation: a memory-mapped PyTorch dataset over `prepare_data`'s
output (in its own module, so that preparing data never loads torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tokenizers import Tokenizer

from .tokens import check_same_tokenizer, read_manifest

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TokenBlocks(torch.utils.data.Dataset):
    """Non-overlapping blocks of `block_size` tokens of one split of `prepare_data` output.

    Item i is {"input_ids": tokens[i*T : i*T+T], "labels": the same, "shift_labels": the next tokens}.
    `labels` follows the Hugging Face convention (the model shifts them); `shift_labels` are already
    shifted, so the loss also scores the block's last position. Shuffle with the DataLoader (or
    Accelerate's) for random sampling, or read in order for sequential evaluation. The memory map is
    opened lazily in each process, so the dataset pickles cheaply into DataLoader workers.

    Each block's token ids are checked against the tokenizer's vocabulary here, on the CPU, so a model can
    take the batches under `values_checked()` without reading anything back from its device.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str = "train",
        block_size: int = 1024,
        tokenizer: PreTrainedTokenizerBase | Tokenizer | None = None,
    ):
        manifest = read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise ValueError(f"no split {split!r} in {data_dir}; it has {sorted(manifest['splits'])}")
        if tokenizer is not None:
            check_same_tokenizer(manifest, tokenizer, str(data_dir))
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.path = Path(data_dir) / manifest["splits"][split]["file"]
        self.dtype = np.dtype(manifest["dtype"])
        self.num_tokens = manifest["splits"][split]["tokens"]
        if self.path.stat().st_size != self.num_tokens * self.dtype.itemsize:
            raise ValueError(f"{self.path} does not hold the {self.num_tokens} tokens its manifest lists")
        if self.num_tokens < block_size + 1:
            raise ValueError(
                f"split {split!r} of {data_dir} has {self.num_tokens} tokens, fewer than one block of "
                f"{block_size} plus its next token; lower block_size or add data"
            )
        self.block_size = block_size
        self.vocab_size = manifest["tokenizer"]["vocab_size"]
        self._tokens: np.memmap | None = None

    def __len__(self) -> int:
        return (self.num_tokens - 1) // self.block_size

    @property
    def tokens(self) -> np.memmap:
        if self._tokens is None:
            self._tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._tokens

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        start = (index % len(self)) * self.block_size
        window = self.tokens[start : start + self.block_size + 1]
        if window.max() >= self.vocab_size:  # a damaged or altered token file
            raise ValueError(
                f"{self.path} holds token id {int(window.max())} in block {index}, outside its tokenizer's "
                f"vocabulary [0, {self.vocab_size}); prepare the data again"
            )
        window = torch.from_numpy(window.astype(np.int64))
        # labels is a copy: a collator that masks labels in place must not touch input_ids
        return {"input_ids": window[:-1], "labels": window[:-1].clone(), "shift_labels": window[1:]}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}
