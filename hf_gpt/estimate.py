"""What a configuration costs: parameters, training FLOPs, memory and GPU time, before any run.

Each number states its convention so it can be checked against the papers it comes from: FLOPs per
token 6N (Kaplan et al. 2020) plus attention 12·L·d·T (PaLM, Chowdhery et al. 2022, appendix B);
activation memory s·b·h·(34 + 5·a·s/h) bytes per layer (Korthikanti et al. 2022). With GPT-3 175B's
shape this reproduces the published 3.14e23 training FLOPs and 355 V100-years at 28 TFLOP/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from .configuration_hf_gpt import HfGptConfig
from .counting import counts_on_meta, flops_per_token, parameter_counts

PRECISIONS = ("bf16", "fp16", "fp32")  # bf16/fp16: mixed precision as torch autocast runs it
ATTENTIONS = ("sdpa", "eager")  # sdpa: a fused kernel that keeps no a·s² tensors (the model's default)
TOKENS_PER_PARAMETER = 20  # Chinchilla's compute-optimal ratio (Hoffmann et al. 2022), the default budget
SECONDS_PER_YEAR = 365 * 24 * 3600
GIB = 2**30
MAX_COUNT = 10**18  # far beyond any training run; keeps every product a finite float
COUNT_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}


def parse_count(text: str, name: str = "count") -> int:
    """'300e9', '300B', '1.5T', '2.5M', '10k' or '1_000_000' -> int: counts as papers write them."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    scale = COUNT_SUFFIXES.get(cleaned[-1:].lower(), 1)
    number = cleaned[:-1] if scale != 1 else cleaned
    try:
        value = Decimal(number) * scale
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or not 0 < value <= MAX_COUNT or value != value.to_integral_value():
        raise ValueError(
            f"{name} must be a positive whole number up to 1e18, such as 300e9, 300B, 1.5T or 2.5M; got {text!r}"
        )
    return int(value)


def state_bytes(parameters: int, non_embedding_parameters: int, precision: str) -> tuple[int, int, int]:
    """(weights, gradients, Adam states) in bytes, as AdamW under torch autocast holds them.

    Autocast keeps fp32 weights and so fp32 gradients; in bf16/fp16 it also keeps a 16-bit copy of each
    matmul weight for the backward (2 B for every parameter but the position table, a lookup). AdamW
    keeps exp_avg and exp_avg_sq in fp32 (8 B). Mixed precision thus costs 18 B per parameter, fp32 16 B.
    """
    copies = 2 * non_embedding_parameters if precision != "fp32" else 0
    return 4 * parameters + copies, 4 * parameters, 8 * parameters


def layer_activation_bytes(config: HfGptConfig, batch_size: int, seq_len: int, precision: str, attention: str) -> int:
    """Bytes one transformer layer keeps for its backward, after Korthikanti et al. 2022 (eq. 1).

    In 16-bit that is s·b·h·34 (32 of 16-bit tensors, 2 of 1-byte dropout masks) plus 5·a·s²·b for the
    materialised attention matrix (scores 2, dropout mask 1, dropped scores 2); fp32 doubles all but
    the masks. A fused kernel (sdpa, flash) keeps no a·s² tensor: it recomputes the scores.
    """
    b, s, h, a = batch_size, seq_len, config.hidden_size, config.num_attention_heads
    width = 4 if precision == "fp32" else 2  # bytes per activation element
    total = s * b * h * (16 * width + 2)
    if attention == "eager":
        total += a * s * s * b * (2 * width + 1)
    return total


def activation_bytes(
    config: HfGptConfig,
    batch_size: int,
    seq_len: int,
    precision: str,
    attention: str,
    gradient_checkpointing: bool,
) -> int:
    """All layers' activations; with gradient checkpointing only each layer's input stays, plus one
    layer recomputed at a time during the backward."""
    layer = layer_activation_bytes(config, batch_size, seq_len, precision, attention)
    if not gradient_checkpointing:
        return config.num_hidden_layers * layer
    width = 4 if precision == "fp32" else 2
    return config.num_hidden_layers * seq_len * batch_size * config.hidden_size * width + layer


@dataclass(frozen=True)
class Memory:
    """Bytes one device holds at the peak of a training step (every gradient and activation alive)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int  # the transformer layers
    logits: int  # fp32 logits the loss keeps: 4·b·s·vocab

    @property
    def states(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.states + self.activations + self.logits

    def sharded_total(self, devices: int) -> int:
        """Per device when FSDP / ZeRO-3 shards weights, gradients and Adam states over `devices`."""
        return math.ceil(self.states / devices) + self.activations + self.logits


@dataclass(frozen=True)
class Estimate:
    """What training `config` on `tokens` tokens costs; time and cost are given with or without the
    attention FLOPs, since the published figures (GPT-3's 3.14e23) count 6N only."""

    config: HfGptConfig
    parameters: int  # all, tied weights once
    non_embedding_parameters: int  # N in 6N: all but the position table (a lookup, no matmul)
    tokens: int
    seq_len: int
    batch_size: int  # sequences per device and forward pass
    precision: str
    attention: str
    gradient_checkpointing: bool
    gpu_tflops: float  # peak per device
    mfu: float  # the share of the peak achieved
    gpus: int
    price_per_hour: float | None  # per GPU-hour

    def check(self) -> None:
        """Raise a ValueError naming the first bad option and what is allowed."""
        for name in ("tokens", "batch_size", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        limit = self.config.max_position_embeddings
        if not isinstance(self.seq_len, int) or not 1 <= self.seq_len <= limit:
            raise ValueError(f"seq_len must be in [1, max_position_embeddings={limit}], got {self.seq_len!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if not 0 < self.gpu_tflops < math.inf:
            raise ValueError(f"gpu_tflops must be a finite number > 0, got {self.gpu_tflops!r}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu must be in (0, 1] (a share of the peak), got {self.mfu!r}")
        if self.price_per_hour is not None and not self.price_per_hour >= 0:
            raise ValueError(f"price_per_hour must be >= 0, got {self.price_per_hour!r}")

    @property
    def memory(self) -> Memory:
        b, s = self.batch_size, self.seq_len
        return Memory(
            *state_bytes(self.parameters, self.non_embedding_parameters, self.precision),
            activations=activation_bytes(
                self.config, b, s, self.precision, self.attention, self.gradient_checkpointing
            ),
            logits=4 * b * s * self.config.vocab_size,
        )

    def training_flops(self, *, attention: bool = True) -> int:
        """6·N·D, plus 12·L·d·T·D for the attention scores and their weighted sum when `attention`."""
        seq_len = self.seq_len if attention else 0
        return flops_per_token(self.config, self.non_embedding_parameters, seq_len) * self.tokens

    def gpu_hours(self, *, attention: bool = True) -> float:
        achieved = self.gpu_tflops * 1e12 * self.mfu
        return self.training_flops(attention=attention) / achieved / 3600

    def gpu_years(self, *, attention: bool = True) -> float:
        return self.gpu_hours(attention=attention) * 3600 / SECONDS_PER_YEAR

    def wall_seconds(self, *, attention: bool = True) -> float:
        """On `gpus` devices, scaling perfectly (the MFU already covers what scaling loses)."""
        return self.gpu_hours(attention=attention) * 3600 / self.gpus

    def cost(self, *, attention: bool = True) -> float | None:
        return None if self.price_per_hour is None else self.gpu_hours(attention=attention) * self.price_per_hour


def estimate(
    config: HfGptConfig,
    *,
    tokens: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 1,
    precision: str = "bf16",
    attention: str = "sdpa",
    gradient_checkpointing: bool = False,
    gpu_tflops: float = 312.0,
    mfu: float = 0.4,
    gpus: int = 1,
    price_per_hour: float | None = None,
) -> Estimate:
    """Parameters, FLOPs, memory and time of training `config` with AdamW.

    tokens: training tokens (default: 20 per parameter, Chinchilla). seq_len: tokens per sequence
    (default: the context). gpu_tflops: peak per device (default: an A100's 312 bf16 TFLOP/s).
    """
    parameters, non_embedding = parameter_counts(config)
    est = Estimate(
        config,
        parameters,
        non_embedding,
        tokens=TOKENS_PER_PARAMETER * parameters if tokens is None else tokens,
        seq_len=config.max_position_embeddings if seq_len is None else seq_len,
        batch_size=batch_size,
        precision=precision,
        attention=attention,
        gradient_checkpointing=gradient_checkpointing,
        gpu_tflops=gpu_tflops,
        mfu=mfu,
        gpus=gpus,
        price_per_hour=price_per_hour,
    )
    est.check()
    return est


def short(count: float) -> str:
    """1.5T, 300B, 124.4M, 12.3k: counts at a glance (powers of ten past 1000T)."""
    if count >= 1e15:
        return f"{count:.4g}"
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.4g}{suffix}"
    return f"{count:g}"


def format_duration(seconds: float) -> str:
    """Hours, days or years: whichever reads as a number a person can picture."""
    if seconds < 2 * 24 * 3600:
        return f"{seconds / 3600:,.1f} hours"
    if seconds < 2 * SECONDS_PER_YEAR:
        return f"{seconds / 86400:,.1f} days"
    years = seconds / SECONDS_PER_YEAR
    return f"{years:,.1f} years" if years < 1e6 else f"{years:.4g} years"


def figure(value: float) -> str:
    """Whole numbers with commas when large (powers of ten past 1e12, to fit a column), three significant digits
    when small."""
    if value >= 1e12:
        return f"{value:.4g}"
    return f"{value:,.0f}" if value >= 1000 else f"{value:,.1f}" if value >= 10 else f"{value:.3g}"


def memory_unit(num_bytes: int) -> tuple[str, int]:
    """GiB, or MiB for small models whose every row would read 0.00 GiB."""
    return ("GiB", GIB) if num_bytes >= GIB else ("MiB", 2**20)


def format_compute(est: Estimate) -> list[str]:
    """FLOPs, time and cost, side by side without and with the attention term."""
    c = est.config
    rows = [
        ("FLOPs per token", lambda a: f"{est.training_flops(attention=a) / est.tokens:.4g}"),
        ("training FLOPs", lambda a: f"{est.training_flops(attention=a):.4g}"),
        ("GPU-hours", lambda a: figure(est.gpu_hours(attention=a))),
        ("GPU-years (365 days)", lambda a: figure(est.gpu_years(attention=a))),
        (
            f"wall-clock on {est.gpus} GPU{'s' * (est.gpus > 1)}",
            lambda a: format_duration(est.wall_seconds(attention=a)),
        ),
    ]
    if est.price_per_hour is not None:
        rows.append((f"cost at {est.price_per_hour:g}/GPU-hour", lambda a: figure(est.cost(attention=a))))
    chinchilla = ", 20 per parameter" if est.tokens == TOKENS_PER_PARAMETER * est.parameters else ""
    return [
        f"Training on {est.tokens:,} tokens ({short(est.tokens)}{chinchilla}) in sequences of {est.seq_len}",
        f"  {'':<26}{'6N':>16}{'6N + attention':>18}",
        *(f"  {label:<26}{value(False):>16}{value(True):>18}" for label, value in rows),
        f"  formula: 6·N·D (forward 2N + backward 4N per token), N = {est.non_embedding_parameters:,}",
        f"           + 12·L·d·T·D attention = 12·{c.num_hidden_layers}·{c.hidden_size}·{est.seq_len} per token "
        "(PaLM; causal and local masks not discounted)",
        f"  at {est.gpu_tflops:g} TFLOP/s peak per GPU x MFU {est.mfu:g} = "
        f"{est.gpu_tflops * est.mfu:g} TFLOP/s achieved per GPU",
    ]


def format_memory(est: Estimate) -> list[str]:
    """The memory breakdown, each row with the convention it follows."""
    m, mixed = est.memory, est.precision != "fp32"
    unit, scale = memory_unit(m.total)

    def size(num_bytes: int) -> str:
        return f"{num_bytes / scale:>12,.2f} {unit}"

    layers = est.config.num_hidden_layers
    weights = "fp32 + 16-bit copy, 4 + 2 B/parameter" if mixed else "fp32, 4 B/parameter"
    per_layer = "34" if mixed else "66"
    if est.attention == "eager":
        per_layer = f"({per_layer} + {'5' if mixed else '9'}·a·s/h)"
    if est.gradient_checkpointing:
        activations = f"checkpointed: {layers} layer inputs + 1 layer"
    else:
        activations = f"{layers} layers x s·b·h·{per_layer} B"
    title = f"{est.precision} mixed (autocast)" if mixed else "fp32"
    lines = [
        f"Memory per GPU: {est.batch_size} x {est.seq_len} tokens per pass, {title}, AdamW, {est.attention} attention",
        f"  {'weights':<14}{weights:<44}{size(m.weights)}",
        f"  {'gradients':<14}{'fp32, 4 B/parameter':<44}{size(m.gradients)}",
        f"  {'Adam states':<14}{'exp_avg + exp_avg_sq, fp32, 8 B/parameter':<44}{size(m.optimizer)}",
        f"  {'activations':<14}{activations:<44}{size(m.activations)}",
        f"  {'logits':<14}{'fp32 for the loss, 4·b·s·vocab B':<44}{size(m.logits)}",
        f"  {'total':<58}{size(m.total)}",
    ]
    if est.gpus > 1:
        lines.append(
            f"  {f'total, states sharded over {est.gpus} GPUs (FSDP/ZeRO-3)':<58}{size(m.sharded_total(est.gpus))}"
        )
    lines += [
        "  activations after Korthikanti et al. 2022 (s·b·h·34 B per layer in 16-bit, dropout masks included);",
        "  not counted: CUDA context, allocator slack, temporary buffers",
    ]
    return lines


def format_estimate(est: Estimate, name: str | None = None) -> str:
    """The `hf-gpt estimate` printout: parameters, compute, then memory."""
    c = est.config
    shape = (
        f"{c.num_hidden_layers} layers, d_model {c.hidden_size}, {c.num_attention_heads} heads, "
        f"context {c.max_position_embeddings}, vocabulary {c.vocab_size}"
    )
    how_counted = "counted on the meta device" if counts_on_meta(c) else "closed form"
    lines = [
        f"{name}: {shape}" if name else shape,
        "",
        f"Parameters      {est.parameters:>20,}  ({short(est.parameters)}; {how_counted}, tied once)",
        f"  N for FLOPs   {est.non_embedding_parameters:>20,}  (all but the position table, a lookup)",
        "",
        *format_compute(est),
        "",
        *format_memory(est),
    ]
    return "\n".join(lines)
