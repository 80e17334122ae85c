"""AdamW with selective weight decay, linear warmup then cosine (GPT-3) or linear (GPT-1 fine-tuning) decay."""

from __future__ import annotations

import functools
import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay the weight matrices only: biases, norms and embeddings (tied output layer included) are
    left alone, as in GPT-3 and nanoGPT."""
    exempt = {
        id(p)
        for module in model.modules()
        if isinstance(module, (nn.Embedding, nn.LayerNorm))
        for p in module.parameters(recurse=False)
    }
    decay, no_decay = [], []
    for p in model.parameters():  # each tied parameter appears once
        if p.requires_grad:
            (no_decay if p.ndim < 2 or id(p) in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float, device: torch.device
) -> torch.optim.AdamW:
    # The fused kernel is one launch per step instead of several per parameter: only on CUDA.
    return torch.optim.AdamW(
        parameter_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=device.type == "cuda"
    )


DECAYS = ("cosine", "linear")


def lr_multiplier(step: int, warmup_steps: int, total_steps: int, final_ratio: float, decay: str = "cosine") -> float:
    """LR multiplier: linear from 1/warmup to 1, then down to `final_ratio` at `total_steps`, along a cosine
    (GPT-3's pretraining) or a straight line (GPT-1's fine-tuning)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    remaining = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return final_ratio + (1 - final_ratio) * remaining


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    final_ratio: float = 0.1,
    decay: str = "cosine",
) -> torch.optim.lr_scheduler.LambdaLR:
    """Step it once per optimizer step. Do not pass it through `accelerator.prepare`: Accelerate would
    step it once per process, decaying N times too fast on N processes."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    schedule = functools.partial(
        lr_multiplier, warmup_steps=warmup_steps, total_steps=total_steps, final_ratio=final_ratio, decay=decay
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
