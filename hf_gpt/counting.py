"""Parameters and training FLOPs of a config or model, counted one way for training, cards and the estimator.

FLOPs per token are 6N (Kaplan et al. 2020) plus attention 12·L·d·T (PaLM, Chowdhery et al. 2022, appendix B).
"""

from __future__ import annotations

import copy

import torch

from .configuration_hf_gpt import HfGptConfig
from .modeling_hf_gpt import HfGptForCausalLM

META_COUNT_MAX_LAYERS = 256  # building a layer on the meta device takes a few ms: deeper, count in closed form


def count_parameters(model: torch.nn.Module, *, non_embedding: bool = False) -> int:
    """Distinct parameters (tied weights once); `non_embedding` leaves out the position table, as nanoGPT
    does (the token table stays: it is also the output layer; Kaplan et al. 2020 leave out both)."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= sum(m.weight.numel() for name, m in model.named_modules() if name.endswith("wpe"))
    return total


def flops_per_token(config: HfGptConfig, non_embedding_parameters: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) plus attention 12·L·d·T."""
    return 6 * non_embedding_parameters + 12 * config.num_hidden_layers * config.hidden_size * seq_len


def counts_on_meta(config: HfGptConfig) -> bool:
    """Whether `parameter_counts` builds the model on the meta device (a few ms per layer) rather than using the
    closed form (which the tests hold equal to it): deeper models would take minutes to build, even there."""
    return config.num_hidden_layers <= META_COUNT_MAX_LAYERS


def parameter_counts(config: HfGptConfig) -> tuple[int, int]:
    """(all parameters, all but the position table) of `HfGptForCausalLM`: counted on a model built on the meta
    device (the exact count of an instantiated model, without allocating a byte), or in closed form when deeper."""
    if not counts_on_meta(config):
        total = config.parameter_count()
        return total, total - config.max_position_embeddings * config.hidden_size
    with torch.device("meta"):
        model = HfGptForCausalLM(copy.deepcopy(config))
    return count_parameters(model), count_parameters(model, non_embedding=True)
