"""Fast greedy and sampled decoding: a fixed-shape KV cache and one decoding step that CUDA graphs can capture.

`model.generate()` spends most of a small model's decoding time launching kernels from Python. Capturing
the step in a CUDA graph (`torch.compile(mode="reduce-overhead")`) removes that, but only if the step's
shapes never change and inductor accepts its in-place cache writes: it skips CUDA graphs ("skipping
cudagraphs due to mutated inputs") when the mutated cache tensors are ordinary graph inputs, and accepts
them when they are buffers of the compiled module (static addresses), as in gpt-fast. So `StaticDecoder`
holds each layer's keys and values as registered buffers of shape (batch, heads, max_length, head_dim), and
attends over the whole cache under a mask, with the column being written passed as a device tensor: one
graph serves every step.

Why an explicit step rather than `model(..., cache=StaticCache(...), logits_to_keep=1)`: that forward
compiles whole too (tests/test_modeling.py), but its cache is a transformers object, allocated lazily on
its first update and passed under an argument name that changed between the versions we support (5.17,
5.24), and each step would rebuild its masks through transformers' mask builders. The step here calls the
model itself (no weights copied, no body code repeated) with a small cache object that writes into this
module's buffers, and with its own prepared masks (causal, left padding, GPT-3's local band), which the body
takes as they are; the tests check it gives generate()'s tokens. The loop is ours as well: generate()'s
per-step Python (logits processors, stopping criteria) is what a CUDA graph cannot remove.

    decoder = StaticDecoder(model, batch_size=1, max_length=288, compile=True)
    tokens = decoder.generate(input_ids, max_new_tokens=256)     # == model.generate(..., do_sample=False)
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling_hf_gpt import HfGptForCausalLM, check_mask_values

# Early stopping reads "have all rows finished?" back from the device; doing it every step would stall
# the launch queue that CUDA graphs keep full, so it is read only once every this many steps.
STOP_CHECK_EVERY = 16


class ColumnCache:
    """What the model asks of a cache, over the decoder's buffers: `update` (this step's keys and values go to
    `columns`, and attention reads the whole fixed-length cache back), `get_seq_length` (the tokens before this
    step: an int at the prefill, so the model checks the prompt as it enters, and a device tensor while decoding,
    so nothing is read back) and each layer's `get_max_length`."""

    def __init__(self, layers: nn.ModuleList, columns: torch.Tensor, past_length: int | torch.Tensor):
        self.layers, self.columns, self.past_length = layers, columns, past_length

    def get_seq_length(self, layer_idx: int = 0) -> int | torch.Tensor:
        return self.past_length

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args):
        return self.layers[layer_idx].write(self.columns, keys, values)


class LayerCache(nn.Module):
    """One layer's keys and values, as buffers so a compiled step writes them in place at static addresses."""

    def __init__(self, shape: tuple[int, int, int, int], max_length: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.max_length = max_length  # the tokens it may hold (its buffers may be longer, never visible)
        # Zeros, not empty: masked slots still meet the values in SDPA (0 * NaN would be NaN).
        self.register_buffer("keys", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def get_max_length(self) -> int:
        return self.max_length

    def write(self, columns: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Store (batch, heads, len(columns), head_dim) keys and values at `columns`; return the whole cache."""
        self.keys.index_copy_(2, columns, keys)
        self.values.index_copy_(2, columns, values)
        return self.keys, self.values


def visible_slots(columns, starts, cache_length: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
    """(batch, 1, len(columns), cache_length) additive mask (0 where visible, the dtype's minimum elsewhere,
    as the model's attention functions take it): which cache slots each new token may attend to.

    A token at column c sees the real (not left-padding) slots up to c, and within `window` of c on
    "local" layers; it always sees its own slot, so a padding token's attention is never empty (SDPA
    kernels differ on an all-masked row, zeros or NaNs, and a NaN would reach the next layer's cache).
    """
    slots = torch.arange(cache_length, device=columns.device)
    here = columns[:, None]  # (length, 1)
    visible = ((slots <= here) & (slots >= starts[:, None, None])) | (slots == here)
    if window is not None:
        visible = visible & (here - slots < window)
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)[
        :, None
    ]


class StaticDecoder(nn.Module):
    """Greedy or sampled decoding for a fixed batch size and maximum length, with an optional compiled step.

    It reuses `model`'s modules (so it follows later weight updates) and allocates its cache in the model's
    dtype and device at construction: build it after moving or casting the model. Each instance compiles
    its own graph, so torch's recompile limit bounds how many decoders one process can compile.
    """

    def __init__(self, model: HfGptForCausalLM, batch_size: int, max_length: int, compile: bool = False):
        super().__init__()
        if not isinstance(model, HfGptForCausalLM):
            raise ValueError(f"StaticDecoder needs an HfGptForCausalLM, got {type(model).__name__}")
        config = model.config
        if config._attn_implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"StaticDecoder attends under a mask over the whole cache, which eager and sdpa attention take; "
                f"this model uses {config._attn_implementation!r} (load it with attn_implementation='sdpa')"
            )
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_length > config.max_position_embeddings:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_position_embeddings={config.max_position_embeddings}"
            )
        self.model = model
        self.batch_size, self.max_length = batch_size, max_length
        # The band of each kind of layer present, keyed as the model's prepared masks are (transformers' layer_types).
        self.windows = {
            kind: config.local_window if kind == "sliding_attention" else None for kind in config.layer_types
        }
        weight = model.lm_head.weight
        # SDPA's memory-efficient kernel wants the mask's last dimension a multiple of 16 (else it pads a
        # copy every call); the extra slots are never visible.
        self.cache_length = -(-max_length // 16) * 16
        heads = config.num_attention_heads
        shape = (batch_size, heads, self.cache_length, config.hidden_size // heads)
        self.caches = nn.ModuleList(
            LayerCache(shape, max_length, weight.dtype, weight.device) for _ in range(config.num_hidden_layers)
        )
        # Per row, the first column that holds a real token (left padding fills the columns before it).
        self.register_buffer(
            "starts", torch.zeros(batch_size, dtype=torch.long, device=weight.device), persistent=False
        )
        self.compiled = compile
        self.decode_step = self.step
        if compile:
            # CUDA graphs on a GPU; on a CPU reduce-overhead would only add its bookkeeping.
            mode = "reduce-overhead" if weight.device.type == "cuda" else None
            self.decode_step = torch.compile(self.step, mode=mode, fullgraph=True, dynamic=False)

    @property
    def device(self) -> torch.device:
        return self.starts.device

    def step(self, tokens: torch.Tensor, columns: torch.Tensor, past_length: int | None = None) -> torch.Tensor:
        """Run (batch, len(columns)) tokens at cache `columns`, filling their slots; the last token's logits.

        The model does the work, with a cache that writes into this module's buffers and, per kind of layer, a
        mask over the whole cache. The prefill passes the prompt's columns (and `past_length=0`, so the model
        checks the prompt), a decoding step one column: a device tensor, so its value changes without changing
        the compiled graph.
        """
        positions = (columns[None, :] - self.starts[:, None]).clamp(min=0)  # padding skipped, as generate() does
        dtype = self.model.lm_head.weight.dtype
        masks = {kind: visible_slots(columns, self.starts, self.cache_length, window, dtype)
                 for kind, window in self.windows.items()}  # fmt: skip
        cache = ColumnCache(self.caches, columns, columns[0] if past_length is None else past_length)
        output = self.model(
            input_ids=tokens, attention_mask=masks, position_ids=positions, cache=cache, use_cache=False,
            logits_to_keep=1,
        )  # fmt: skip
        return output.logits[:, -1]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor,
        max_new_tokens: int,
        *,
        attention_mask: torch.Tensor | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        min_new_tokens: int = 0,
        generator: torch.Generator | None = None,
    ) -> torch.LongTensor:
        """Prompt + new tokens, as `model.generate` returns them (greedy: the same tokens).

        attention_mask: 0/1, left padding only (a row's padding before its tokens). eos_token_id: a row
        that emits one (after `min_new_tokens`, before which EOS is suppressed) then emits `pad_token_id`
        (default: the first EOS id); once every row has finished, generation stops and the output ends at
        the last row's EOS. None: no EOS handling, exactly `max_new_tokens` new tokens.
        """
        length = self.check_prompt(input_ids, attention_mask, max_new_tokens)
        eos_ids = self.check_special_ids(eos_token_id, pad_token_id)
        eos = torch.tensor(eos_ids, device=self.device) if eos_ids else None
        pad = pad_token_id if pad_token_id is not None else eos_ids[0] if eos_ids else 0
        self.check_sampling(do_sample, temperature, top_k, generator)

        input_ids = input_ids.to(self.device)
        output = torch.full((self.batch_size, length + max_new_tokens), pad, dtype=torch.long, device=self.device)
        output[:, :length] = input_ids
        self.starts.copy_(self.padding_starts(attention_mask, length))
        finished = torch.zeros(self.batch_size, 1, dtype=torch.bool, device=self.device)
        logits = self.step(input_ids, torch.arange(length, device=self.device), past_length=0)  # prefill: eager, once
        column = torch.tensor([length], device=self.device)
        for index in range(max_new_tokens):
            if eos is not None and index < min_new_tokens:
                logits = logits.index_fill(-1, eos, float("-inf"))
            tokens = self.choose(logits, do_sample, temperature, top_k, generator)
            if eos is not None:
                tokens = tokens.masked_fill(finished, pad)
                finished = finished | torch.isin(tokens, eos)
            output[:, length + index] = tokens[:, 0]
            if index + 1 == max_new_tokens:
                break
            check = eos is not None and index >= min_new_tokens and index % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1
            if check and bool(finished.all()):
                break
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            logits = self.decode_step(tokens, column)
            column.add_(1)
        return output if eos is None else trim_after_eos(output, length, eos)

    @staticmethod
    def choose(logits, do_sample: bool, temperature: float, top_k: int | None, generator) -> torch.Tensor:
        """The next token per row, (batch, 1): argmax, or a sample without a host sync."""
        if not do_sample:
            return logits.argmax(-1, keepdim=True)
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = logits.softmax(-1)
        # argmax(p / Exp(1)) draws from p (an exponential race), with no device-to-host read as multinomial has.
        noise = torch.empty_like(probs).exponential_(1, generator=generator)
        return (probs / noise).argmax(-1, keepdim=True)

    def check_prompt(self, input_ids, attention_mask, max_new_tokens: int) -> int:
        """Reject a prompt that does not fit this decoder; its length."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError("input_ids must be a 2D (batch, length) LongTensor")
        batch, length = input_ids.shape
        if batch != self.batch_size:
            raise ValueError(f"input_ids has batch size {batch}, but this decoder was built for {self.batch_size}")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if length < 1:
            raise ValueError("input_ids must hold at least one token per row, got an empty prompt")
        if length + max_new_tokens > self.max_length:
            raise ValueError(
                f"prompt length {length} + max_new_tokens {max_new_tokens} = {length + max_new_tokens} exceeds "
                f"max_length={self.max_length} (the decoder's cache size)"
            )
        if attention_mask is not None:
            if tuple(attention_mask.shape) != (batch, length):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(batch, length)}")
            check_mask_values(attention_mask)  # before .long(), which would read 0.5 as padding
            mask = attention_mask.long()
            left_padded = (mask.diff(dim=1) >= 0).all() & (mask[:, -1] == 1).all()
            if not left_padded:
                raise ValueError(
                    "attention_mask must be 0/1 with each row's padding on the left (zeros, then ones, "
                    "ending in a 1); right padding and gaps are not supported"
                )
        return length

    def check_special_ids(self, eos_token_id, pad_token_id) -> list[int]:
        """The EOS ids as a list (empty without EOS handling), after range checks."""
        vocab_size = self.model.config.vocab_size
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        for name, token_id in [("eos_token_id", i) for i in eos] + [("pad_token_id", pad_token_id)]:
            if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < vocab_size):
                raise ValueError(f"{name}={token_id!r} is outside the vocabulary [0, {vocab_size})")
        return eos

    def check_sampling(self, do_sample: bool, temperature: float, top_k: int | None, generator) -> None:
        if do_sample and not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        if generator is not None and generator.device.type != self.device.type:
            raise ValueError(f"generator is on {generator.device}, but the decoder runs on {self.device}")

    def padding_starts(self, attention_mask, length: int) -> torch.Tensor:
        """Per row, the first real column: the number of left-padding tokens."""
        if attention_mask is None:
            return torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
        return length - attention_mask.to(self.device).long().sum(-1)


def trim_after_eos(output: torch.Tensor, length: int, eos: torch.Tensor) -> torch.Tensor:
    """Cut the columns after the last row's first EOS when every row has one, as generate() stops there."""
    hit = torch.isin(output[:, length:], eos)
    last = hit.shape[1] - 1  # a row without EOS keeps every column
    ends = torch.where(hit.any(-1), hit.int().argmax(-1), last)
    return output[:, : length + int(ends.max()) + 1]


__all__ = ["StaticDecoder"]
