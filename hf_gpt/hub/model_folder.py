"""The one writer of a model folder: weights and config, generation defaults, tokenizer, card and any result
files, all written into a staging folder that takes the output's place only when complete.

Pretraining, fine-tuning and every converter write through `write_model_folder`, so what a folder holds is
decided once, here: a model that can generate gets `generation_defaults` (top-k sampling, as GPT-2's samples
were made, with the model's own special-token ids), and the tokenizer's `model_max_length` is the model's
context, so `truncation=True` in a pipeline cuts inputs to what the model can take.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from huggingface_hub import ModelCard
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..files import atomic_directory
from .cards import write_card


def generation_defaults(config) -> GenerationConfig:
    """What `generate()` and the pipeline do by default: top-k sampling, as GPT-2's samples were made."""
    return GenerationConfig(
        do_sample=True,
        top_k=50,
        temperature=1.0,
        max_new_tokens=100,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path, context: int) -> None:
    """Save `tokenizer` with `model_max_length` set to the model's context (the caller's object is left as it was)."""
    kept = tokenizer.model_max_length
    tokenizer.model_max_length = context
    try:
        tokenizer.save_pretrained(folder)
    finally:
        tokenizer.model_max_length = kept


def write_model_folder(
    model: PreTrainedModel,
    output_dir: str | os.PathLike,
    *,
    kind: str,
    card: ModelCard,
    tokenizer: PreTrainedTokenizerBase | None = None,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    state_dict: dict[str, torch.Tensor] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Write `model` (with `state_dict`, e.g. gathered under FSDP / DeepSpeed), its tokenizer, card and extra text
    `files` (name -> content) to `output_dir`, all or nothing; `kind`, `overwrite` and `inputs` are
    `atomic_directory`'s (which folders it may replace, and which it must never write into)."""
    with atomic_directory(output_dir, overwrite, kind=kind, inputs=inputs) as staging:
        if model.can_generate():
            model.generation_config = generation_defaults(model.config)
        model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging, model.config.max_position_embeddings)
        for name, text in (files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        write_card(card, staging)
    return Path(output_dir)
