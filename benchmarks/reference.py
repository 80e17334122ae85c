"""The reference for speed benchmarks: transformers' GPT2LMHeadModel with hf_gpt's shape and exactly its weights."""

import time

import torch
from hf_gpt.conversion.gpt2 import as_gpt2
from transformers import GPT2LMHeadModel

from hf_gpt import HfGptConfig, HfGptForCausalLM
from hf_gpt.machine import synchronize

CPU_SHAPE = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4)  # runs in seconds on 2 cores


def benchmark_config(preset: str, device: torch.device, **overrides) -> HfGptConfig:
    shape = CPU_SHAPE if device.type == "cpu" and preset == "gpt2" else {}
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}  # identical computations to compare
    return HfGptConfig.from_preset(preset, **{**shape, **no_dropout, **overrides})


def matched_pair(config: HfGptConfig, device: torch.device, seed: int = 0) -> tuple[HfGptForCausalLM, GPT2LMHeadModel]:
    """hf_gpt and GPT2LMHeadModel with the same weights (GPT-2's Conv1D layers hold them transposed), SDPA both."""
    torch.manual_seed(seed)
    ours = HfGptForCausalLM._from_config(config, attn_implementation="sdpa").to(device)
    return ours, as_gpt2(ours, attn_implementation="sdpa")


def timed(function, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started
