"""What the export and serving benchmarks share: a random model folder (nothing downloaded), and how far two greedy
decodings agree."""

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


def greedy_agreement(
    model, expected: list[list[int]], produced: list[list[int]], prompt_length: int | list[int]
) -> str:
    """How many new tokens agree in every row ("64 of 64"), and where they part, how far apart `model`'s two best
    logits were there: a near-tie that float rounding decides either way, or a real difference. Rows are whole
    sequences (prompt + new tokens); `prompt_length` is one for all rows, or one per row (prompts of different
    lengths), and every row has the same number of new tokens."""
    lengths = prompt_length if isinstance(prompt_length, list) else [prompt_length] * len(expected)
    new = len(expected[0]) - lengths[0]
    parts = [
        next((i for i in range(n, min(len(e), len(p))) if e[i] != p[i]), None)
        for e, p, n in zip(expected, produced, lengths, strict=True)
    ]
    if all(part is None for part in parts):
        return f"{new} of {new}"
    # The worst row: the fewest new tokens agreeing (not the earliest position, as prompts' lengths differ).
    row, part = min(((r, p) for r, p in enumerate(parts) if p is not None), key=lambda item: item[1] - lengths[item[0]])
    with torch.no_grad():
        top = model(torch.tensor([expected[row][:part]], device=model.device)).logits[0, -1].topk(2).values
    return f"{part - lengths[row]} of {new} (then a top-2 margin of {float(top[0] - top[1]):.1e})"
