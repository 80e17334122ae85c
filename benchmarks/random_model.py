"""A random hf_gpt model folder with a small tokenizer, for the export and serving benchmarks: nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import torch


def build_random_model(folder: Path, vocab_size: int, **config) -> Path:
    """FOLDER/model: a GPT-2-preset model with `config` overrides, its weights drawn with seed 0, and a byte-level
    BPE tokenizer of `vocab_size` trained on the benchmark scripts themselves."""
    from hf_gpt import HfGptConfig, HfGptForCausalLM
    from hf_gpt.data.tokenizer import train_bpe_tokenizer

    corpus = folder / "corpus.txt"
    text = "".join(path.read_text(encoding="utf-8") for path in sorted(Path(__file__).parent.glob("*.py")))
    corpus.write_text(text * 10, encoding="utf-8")
    tokenizer = train_bpe_tokenizer([str(corpus)], vocab_size, folder / "tokenizer")
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    torch.manual_seed(0)
    HfGptForCausalLM(HfGptConfig.from_preset("gpt2", vocab_size=len(tokenizer), **ids, **config)).save_pretrained(
        folder / "model"
    )
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"
