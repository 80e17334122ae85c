"""Shared fixtures: tiny models and a tiny byte-level BPE tokenizer, built here (no downloads)."""

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_gpt import HfGptConfig

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "It was the best of times, it was the worst of times.",
    "Entailment, contradiction and neutral are the three labels of natural language inference.",
    "GPT models are decoders with learned absolute position embeddings.",
] * 4


def tiny_config(preset: str = "gpt2-tiny", **overrides) -> HfGptConfig:
    """A tiny preset without dropout, so two forwards of the same input agree exactly.

    Its weights start wide (std 0.5): with GPT-2's 0.02 a tiny random model repeats one token whatever
    came before, and such output would hide a cache or position bug.
    """
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "classifier_dropout": 0.0}
    return HfGptConfig.from_preset(preset, **{**no_dropout, "initializer_range": 0.5, **overrides})


def seeded(model_class, config, seed: int = 0, **kwargs):
    """A model in eval mode whose weights depend only on the seed (the config is copied, not shared)."""
    torch.manual_seed(seed)
    return model_class._from_config(copy.deepcopy(config), **kwargs).eval()


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


@pytest.fixture(params=["gpt2-tiny", "gpt1-tiny", "gpt3-tiny"])
def preset(request) -> str:
    """Every family: pre-norm, post-norm (GPT-1) and alternating global/local attention (GPT-3)."""
    return request.param
