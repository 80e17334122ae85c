"""The reference for speed benchmarks: transformers' GPT2LMHeadModel with hf_gpt's shape and exactly its weights."""

import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hf_gpt import HfGptConfig, HfGptForCausalLM
from hf_gpt.converting import transpose_projections
from hf_gpt.metrics import synchronize

CPU_SHAPE = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4)  # runs in seconds on 2 cores


def benchmark_config(preset: str, device: torch.device, **overrides) -> HfGptConfig:
    shape = CPU_SHAPE if device.type == "cpu" and preset == "gpt2" else {}
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}  # identical computations to compare
    return HfGptConfig.from_preset(preset, **{**shape, **no_dropout, **overrides})


def matched_pair(config: HfGptConfig, device: torch.device, seed: int = 0) -> tuple[HfGptForCausalLM, GPT2LMHeadModel]:
    """hf_gpt and GPT2LMHeadModel with the same weights (GPT-2's Conv1D layers hold them transposed), SDPA both."""
    torch.manual_seed(seed)
    ours = HfGptForCausalLM._from_config(config, attn_implementation="sdpa")
    gpt2_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads,
        activation_function=config.activation_function, layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )  # fmt: skip
    reference = GPT2LMHeadModel._from_config(gpt2_config, attn_implementation="sdpa")
    weights = {k: v for k, v in ours.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = reference.load_state_dict(transpose_projections(weights), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    reference.tie_weights()
    return ours.to(device), reference.to(device)


def timed(function, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started
