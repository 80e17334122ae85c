"""Shared fixtures: tiny models and a tiny byte-level BPE tokenizer, built here (no downloads)."""

import copy
import socket

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


# Prepended to a script run in a fresh interpreter: `import hf_gpt` then fails, as on a machine without it.
WITHOUT_HF_GPT = """
import importlib.abc, sys

class NoHfGpt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_gpt":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoHfGpt())
try:
    import hf_gpt
    raise SystemExit("hf_gpt is importable: the test would prove nothing")
except ModuleNotFoundError:
    pass
"""


def tiny_config(preset: str = "gpt2-tiny", **overrides) -> HfGptConfig:
    """A tiny preset without dropout, so two forwards of the same input agree exactly.

    Its weights start wide (std 0.5): with GPT-2's 0.02 a tiny random model repeats one token whatever
    came before, and such output would hide a cache or position bug.
    """
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "classifier_dropout": 0.0}
    return HfGptConfig.from_preset(preset, **{**no_dropout, "initializer_range": 0.5, **overrides})


def free_port() -> int:
    """A TCP port nothing listens on, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seeded(model_class, config, seed: int = 0, **kwargs):
    """A model in eval mode whose weights depend only on the seed (the config is copied, not shared)."""
    torch.manual_seed(seed)
    return model_class._from_config(copy.deepcopy(config), **kwargs).eval()


@pytest.fixture
def fresh_accelerate_state():
    """After the test, forget Accelerate's process-wide state: the next Accelerator starts as in a new process."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


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


# Pieces of many kinds, so trained merges cross letters, digits, punctuation, scripts and whitespace.
VARIED = (
    "the",
    "The",
    "don't",
    "we'll",
    "they're",
    "I've",
    "she'd",
    "it's",
    "'s",
    "café",
    "cafe\u0301",
    "naïve",
    "日本語",
    "中文",
    "한국어",
    "Ελληνικά",
    "русский",
    "עברית",
    "العربية",
    "😀",
    "👩‍💻",
    "🇫🇷",
    "1234",
    "3.14",
    "٣٤",
    "Ⅻ",
    "x=y+1;",
    "def f(a):",
    "<|endoftext|>",
    "\u00a0",
    "\u3000",
    "\t",
    "\r\n",
    "\n\n",
    "   ",
    "  ",
    "...",
    "!?",
    "«»",
    "—",
    "\x00",
    "\x1b[0m",
    "\u200b",
    "e.g.",
    "http://example.com/a?b=c",
)


def varied_text(seed: int, words: int) -> str:
    """Deterministic text mixing English words with every kind of piece in VARIED."""
    import random

    rng = random.Random(seed)
    english = TEXT[0].split() + TEXT[1].split() + TEXT[2].split()
    parts = [rng.choice(VARIED) if rng.random() < 0.3 else rng.choice(english) for _ in range(words)]
    return "".join(p + rng.choice([" ", " ", " ", "", "\n", ", "]) for p in parts)


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory):
    """A tokenizer trained with our own trainer on varied text, saved as a folder."""
    from hf_gpt.data.tokenizer import train_bpe_tokenizer

    corpus = tmp_path_factory.mktemp("corpus") / "varied.txt"
    corpus.write_text("\n".join(varied_text(seed, 400) for seed in range(20)), encoding="utf-8")
    output = tmp_path_factory.mktemp("tokenizers") / "varied"
    train_bpe_tokenizer([corpus], 700, output, special_tokens=["<|sep|>"], show_progress=False)
    return output


@pytest.fixture(scope="session")
def trained_tokenizer(trained_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained_tokenizer_dir)


def pytest_configure(config):
    # Marks that transformers' own tests (test_transformers_conformance.py) put on theirs.
    for mark in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "is_training_test",
                 "torch_compile_test"):  # fmt: skip
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own tests")
