"""What a configuration costs: parameters and training FLOPs per token (nanoGPT's / PaLM's formula)."""

from __future__ import annotations

import torch

from .configuration_hf_gpt import HfGptConfig


def count_parameters(model: torch.nn.Module, *, non_embedding: bool = False) -> int:
    """Distinct parameters (tied weights once); `non_embedding` leaves out the position table, as
    nanoGPT and the scaling-law papers do (the token table stays: it is also the output layer)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= sum(m.weight.numel() for name, m in model.named_modules() if name.endswith("wpe"))
    return total


def flops_per_token(config: HfGptConfig, non_embedding_parameters: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) plus attention 12·L·d·T."""
    return 6 * non_embedding_parameters + 12 * config.num_hidden_layers * config.hidden_size * seq_len
