# Copyright 2026 The hf_gpt authors. Licensed under the Apache License, Version 2.0.
"""The HfGpt models: one GPT decoder body (`HfGptModel`) and small task heads on top of it.

Part of the remote-code core: imports only torch, transformers and its sibling config module, so
`save_pretrained` can copy both files next to the weights for `trust_remote_code=True` loading.
Names follow GPT-2/nanoGPT (wte, wpe, h, ln_f, c_attn, c_proj, c_fc) so checkpoints map one to one.
"""

import copy
import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.dynamic_module_utils import custom_object_save
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs, can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_hf_gpt import MAX_LISTED_LAYERS, HfGptConfig, special_ids_outside_vocabulary

logger = logging.get_logger(__name__)
GIB = 2**30

# transformers 5.24 renamed the cache argument and output field from `past_key_values` to `cache`;
# we accept both names and fill whichever field the installed version's outputs have.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def head_output(output_class, body_outputs: BaseModelOutputWithPast, **fields):
    """A head's output: its own fields plus the body's hidden states, attentions and (where it has one) cache."""
    if CACHE_FIELD in output_class.__dataclass_fields__:
        fields[CACHE_FIELD] = getattr(body_outputs, CACHE_FIELD)
    return output_class(hidden_states=body_outputs.hidden_states, attentions=body_outputs.attentions, **fields)


def renamed_cache_argument(forward):
    """Where `cache` is transformers' name (5.24+), `past_key_values=` is renamed with the FutureWarning its own
    models give; before that, `past_key_values` is the current name and passes silently."""
    if CACHE_FIELD != "cache":
        return forward
    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)


def _pick_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once, as `cache` or as `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention; the reference the fused kernels are checked against."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask[:, :, :, : key.shape[-2]]
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class HfGptAttention(nn.Module):
    """Causal self-attention with one fused QKV projection; "local" layers see a band of past tokens."""

    def __init__(self, config: HfGptConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        self.sliding_window = config.local_window if config.attention_layers[layer_idx] == "local" else None
        self.c_attn = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.c_proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states, attention_mask, cache: Cache | None = None, output_attentions=False, **kwargs):
        batch, length, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, length, head_dim)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        # Only the eager way has the weights to return; the body then built this call's masks for it.
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.attn_pdrop if self.training else 0.0,
            scaling=self.scaling,
            sliding_window=self.sliding_window,
            **kwargs,
        )
        output = self.c_proj(output.reshape(batch, length, -1))
        return self.resid_dropout(output), weights


class HfGptMLP(nn.Module):
    def __init__(self, config: HfGptConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.activation_function]
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.c_proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states):
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class HfGptBlock(GradientCheckpointingLayer):
    """Attention then MLP, each in a residual branch; LayerNorm before (GPT-2/3) or after (GPT-1) it."""

    def __init__(self, config: HfGptConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.attn = HfGptAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mlp = HfGptMLP(config)

    def forward(self, hidden_states, attention_mask, cache: Cache | None = None, **kwargs):
        if self.pre_norm:
            attn_output, weights = self.attn(self.ln_1(hidden_states), attention_mask, cache, **kwargs)
            hidden_states = hidden_states + attn_output
            hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        else:
            attn_output, weights = self.attn(hidden_states, attention_mask, cache, **kwargs)
            hidden_states = self.ln_1(hidden_states + attn_output)
            hidden_states = self.ln_2(hidden_states + self.mlp(hidden_states))
        return hidden_states, weights


class HfGptPreTrainedModel(PreTrainedModel):
    config: HfGptConfig
    config_class = HfGptConfig  # the annotation is a string here (postponed annotations): name the class
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HfGptBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def _init_weights(self, module):
        """GPT-2 init: N(0, 0.02) everywhere, residual output projections scaled by 1/sqrt(2 * layers)."""
        super()._init_weights(module)
        if getattr(module, "is_residual_projection", False):
            std = self.config.initializer_range / math.sqrt(2 * self.config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)

    def get_position_embeddings(self) -> nn.Embedding:
        """The learned position table, under transformers' name for it."""
        return self.base_model.wpe

    def resize_position_embeddings(self, new_num_position_embeddings: int) -> None:
        """Lengthen or shorten the context: the rows kept keep their learned values, added rows start as freshly
        initialized ones (N(0, initializer_range)), and `max_position_embeddings` follows."""
        size = new_num_position_embeddings
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"new_num_position_embeddings must be a positive integer (>= 1), got {size!r}")
        old = self.base_model.wpe
        new = nn.Embedding(size, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        self._init_weights(new)
        kept = min(size, old.num_embeddings)
        with torch.no_grad():
            new.weight[:kept] = old.weight[:kept]
        self.base_model.wpe = new
        self.config.max_position_embeddings = size

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, telling the size check where the weights will go: it builds the model on the meta
        device, then without a device_map (which may offload to disk) loads every weight onto the default device."""
        one_device = all(kwargs.get(name) is None for name in ("device_map", "tp_plan", "quantization_config"))
        token = LOADING_ONTO.set(torch.empty(0).device if one_device else None)
        try:
            return super().from_pretrained(*args, **kwargs)
        finally:
            LOADING_ONTO.reset(token)

    def save_pretrained(self, save_directory, *args, push_to_hub: bool = False, **kwargs):
        """Save as transformers does, plus the flat code files that `trust_remote_code=True` loads."""
        hub_kwargs = {key: kwargs.pop(key) for key in ("repo_id", "commit_message", "private") if key in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            custom_object_save(self, save_directory)
        if push_to_hub:
            # push_to_hub saves through this method again, into a fresh folder it uploads whole.
            repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, token=kwargs.get("token"), **hub_kwargs)


# Set by from_pretrained while it builds a model on the meta device: the one device its weights will then be
# loaded onto (None: a device_map spreads them, possibly to disk). Context-local, so concurrent loads don't mix.
LOADING_ONTO: ContextVar[torch.device | None] = ContextVar("hf_gpt_loading_onto", default=None)
SIZE_FIELDS = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings")


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory `device` has in all (RAM for the CPU), or None where that is unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    return None


def check_fits_in_memory(config: HfGptConfig) -> None:
    """Refuse, before building a layer, a model whose weights exceed all the memory of the device they are made on.

    Built anyway, it allocates layer after layer until the machine runs out (10**6 layers: an hour of it). Only
    sizes that cannot fit are refused: nothing is checked on the meta device (from_pretrained with a device_map,
    accelerate's init_empty_weights, counting), under DeepSpeed ZeRO-3 (which shards the weights as they are made)
    or for a quantized model.
    """
    if is_deepspeed_zero3_enabled() or getattr(config, "quantization_config", None) is not None:
        return
    probe = nn.Linear(1, 1, bias=False).weight  # placed and typed as the model's own weights will be
    device = LOADING_ONTO.get() if probe.device.type == "meta" else probe.device
    available = None if device is None else device_memory(device)
    needed = config.parameter_count() * probe.element_size()
    if available is not None and needed > available:
        shape = ", ".join(f"{name}={getattr(config, name):,}" for name in SIZE_FIELDS)
        where = "this machine's RAM" if device.type == "cpu" else f"the memory of {device}"
        raise ValueError(
            f"a model with {shape} has {config.parameter_count():,} parameters: its {probe.dtype} weights need "
            f"{needed:,} bytes ({needed / GIB:,.1f} GiB), more than all {available:,} bytes ({available / GIB:,.1f} "
            f"GiB) of {where}"
        )


# Set while a caller runs batches whose values it has already checked off the device (hf_gpt's training loop:
# TokenBlocks checks each block's token ids on the CPU; fine-tuning's come from the model's own tokenizer), so the
# model reads nothing back from the device for them.
VALUES_CHECKED: ContextVar[bool] = ContextVar("hf_gpt_values_checked", default=False)


@contextmanager
def values_checked():
    """Within this block, forwards skip the input value checks that read back from the device (token ids,
    position ids, padding-mask values), and build a given padding mask without reading it first: for callers that
    checked their batches before they reached the device. Shape checks, which cost nothing, still run."""
    token = VALUES_CHECKED.set(True)
    try:
        yield
    finally:
        VALUES_CHECKED.reset(token)


def first_out_of_range(values: torch.Tensor, limit: int) -> int | None:
    """The smallest negative or largest >= limit value, else None (one device read, for min and max)."""
    low, high = (value.item() for value in torch.aminmax(values))
    return low if low < 0 else high if high >= limit else None


def is_padding_mask(attention_mask) -> bool:
    """A 2D (batch, length) 0/1 mask, rather than a prepared 4D mask, a dict of them, or None."""
    return isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2


def check_shapes(config, input_ids, inputs_embeds) -> tuple[int, int]:
    """(batch, length) of the inputs, after refusing what no embedding lookup can take: wrong ranks, float ids,
    and empty inputs (which transformers' GPT-2 fails on too, deep inside, as "cannot reshape tensor of 0 elements")."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds (got both or neither)")
    if input_ids is not None:
        name, tokens = "input_ids", input_ids
        if input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
            hint = " (for one sequence: input_ids[None])" if input_ids.dim() == 1 else ""
            raise ValueError(
                f"input_ids must be a (batch, length) int64 or int32 tensor of token ids, got a {input_ids.dtype} "
                f"tensor of shape {tuple(input_ids.shape)}{hint}"
            )
    else:
        name, tokens = "inputs_embeds", inputs_embeds
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape (batch, length, hidden_size={config.hidden_size}), "
                f"got {tuple(inputs_embeds.shape)}"
            )
    batch, length = tokens.shape[:2]
    if not batch or not length:
        raise ValueError(
            f"{name} has shape {tuple(tokens.shape)}: the model needs at least one sequence of at least one token "
            "(generate() too: give a prompt of at least one token, such as the BOS token)"
        )
    return batch, length


def check_mask_shape(attention_mask, batch: int, length: int, total: int | None, heads: int) -> None:
    """What transformers' GPT-2 takes: a (batch, cached + new tokens) padding mask, or a prepared 4D mask (bool,
    or float added to the scores) that broadcasts to (batch, heads, new tokens, at least cached + new)."""
    if not isinstance(attention_mask, torch.Tensor):  # None, prepared masks (a dict of them, a flex BlockMask)
        return
    shape = tuple(attention_mask.shape)
    if attention_mask.dim() == 2:
        if shape[0] != batch or (total is not None and shape[1] != total):
            raise ValueError(f"attention_mask has shape {shape}, expected ({batch}, {total or 'cached + new tokens'})")
    elif attention_mask.dim() == 4:
        fits = shape[0] in (1, batch) and shape[1] in (1, heads) and shape[2] in (1, length)
        if not fits or (total is not None and shape[3] < total):
            raise ValueError(
                f"a 4D attention_mask must broadcast to (batch {batch}, heads {heads}, new tokens {length}, "
                f"keys {total or 'cached + new'}), got {shape}"
            )
        if attention_mask.dtype != torch.bool and not attention_mask.is_floating_point():
            raise ValueError(f"a 4D attention_mask must be bool or float (added to scores), got {attention_mask.dtype}")
    else:
        hint = " (for one sequence: attention_mask[None])" if len(shape) == 1 else ""
        raise ValueError(
            f"attention_mask has shape {shape}: expected a (batch, length) padding mask of 0s and 1s, or a prepared "
            f"4D (batch, 1, query, key) mask{hint}"
        )


def check_mask_values(attention_mask: torch.Tensor) -> None:
    """A padding mask holds 0 (padding) and 1 (a token) only; anything else would give positions that do not exist."""
    if attention_mask.dtype == torch.bool:
        return
    bad = (attention_mask != 0) & (attention_mask != 1)
    if bad.any():
        raise ValueError(
            f"attention_mask holds {attention_mask[bad][0].item()!r}: a (batch, length) padding mask holds only "
            "0 (padding) and 1 (a token), as bool, int or float"
        )


def check_inputs(config, input_ids, inputs_embeds, attention_mask, position_ids, cache, past_length) -> None:
    """Reject bad inputs with a ValueError before they reach an embedding lookup (a CUDA device assert).

    Shape checks are free. Value checks (token ids, explicit position ids, padding mask values) read back from
    the device, so they run only where inputs enter: without a cache (a user's batch), into an empty dynamic
    cache, or as a multi-token prefill of a static cache. Decoding steps, assisted-decoding candidates included,
    torch.compile'd regions and batches checked before they reached the device (`values_checked()`) skip them.
    """
    batch, length = check_shapes(config, input_ids, inputs_embeds)
    limit = config.max_position_embeddings
    known_past = isinstance(past_length, int)  # a static cache keeps its length on the device
    # Given position ids (packed, padding-free rows restart them per sequence) are checked for range below instead.
    if known_past and past_length + length > limit and position_ids is None:
        raise ValueError(
            f"sequence length {past_length + length} (cached {past_length} + new {length}) exceeds "
            f"max_position_embeddings={limit}"
        )
    if not known_past:  # a fixed-size cache must not hold more tokens than there are positions
        capacity = max(layer.get_max_length() for layer in cache.layers)
        if capacity > limit:
            raise ValueError(f"the cache holds up to {capacity} tokens, more than max_position_embeddings={limit}")
    total = past_length + length if known_past else None
    check_mask_shape(attention_mask, batch, length, total, config.num_attention_heads)
    entering = cache is None or (past_length == 0 if known_past else length > 1)
    if not entering or torch.compiler.is_compiling() or VALUES_CHECKED.get():
        return
    if input_ids is not None and (bad := first_out_of_range(input_ids, config.vocab_size)) is not None:
        raise ValueError(f"input_ids contains token id {bad}, outside the vocabulary [0, {config.vocab_size})")
    if is_padding_mask(attention_mask):  # before position_ids: generate() derives those from the mask
        check_mask_values(attention_mask)
    if position_ids is not None and position_ids.numel():
        if (bad := first_out_of_range(position_ids, limit)) is not None:
            raise ValueError(f"position_ids contains {bad}, outside [0, {limit})")


def positions_from_mask(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Position ids that skip padding, so a left-padded row gets the positions it would have alone.

    Any nonzero entry counts as a token, as transformers' mask builders read it: positions stay in range even where
    the mask's values go unchecked (decoding steps, compiled code).
    """
    real = attention_mask != 0
    positions = real.long().cumsum(-1) - 1
    return positions.masked_fill(~real, 0)[:, -length:]


class HfGptModel(HfGptPreTrainedModel):
    """The decoder body: token + position embeddings, the blocks, and (pre-norm only) a final LayerNorm."""

    def __init__(self, config: HfGptConfig):
        config.check()  # again: from_pretrained(..., **overrides) and setattr change a config after __init__
        check_fits_in_memory(config)
        if config.attention_layers is None:
            raise ValueError(
                f"attention_layers is None (unlisted, as in configs deeper than {MAX_LISTED_LAYERS:,} layers, which "
                f"serve estimates only): a model needs one entry for each of its {config.num_hidden_layers:,} layers"
            )
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(HfGptBlock(config, i) for i in range(config.num_hidden_layers))
        pre_norm = config.norm_position == "pre"
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon) if pre_norm else nn.Identity()
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def _attention_masks(self, inputs_embeds, attention_mask, cache, position_ids, eager: bool = False) -> dict:
        """One mask per kind of layer present, keyed like transformers' `layer_types` (`eager`: in the form eager
        attention takes, whatever the model's own implementation)."""
        if isinstance(attention_mask, dict):  # prepared by generate() for compiled static-cache decoding
            return attention_mask
        config = self.config
        if eager and config._attn_implementation != "eager":
            config = copy.copy(config)
            config._attn_implementation = "eager"
        builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        # Given a padding mask, transformers reads it back from the device to see whether it may skip building the
        # mask (no padding after all): a host sync per forward. A caller that checked its batches (values_checked)
        # pads them, so the mask is built without asking. (A compiled forward reads nothing there: nor this flag.)
        may_skip = not (is_padding_mask(attention_mask) and not torch.compiler.is_compiling() and VALUES_CHECKED.get())
        # Positional arguments: the cache parameter's name differs between transformers versions.
        return {
            kind: builders[kind](
                config, inputs_embeds, attention_mask, cache, position_ids, allow_is_causal_skip=may_skip
            )
            for kind in set(config.layer_types)
        }

    @can_return_tuple
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPast:
        cache = _pick_cache(cache, past_key_values)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions and self.config._attn_implementation != "eager":
            logger.warning_once(
                f"output_attentions=True: attention is computed the eager way for such calls, since "
                f"{self.config._attn_implementation!r} does not return attention weights"
            )
        if self.gradient_checkpointing and self.training:
            if cache is not None:
                logger.warning_once("gradient checkpointing recomputes layers, so the KV cache is ignored")
            use_cache, cache = False, None
        if use_cache and cache is None and not self.training:  # training reuses no keys: skip the cache
            cache = DynamicCache(config=self.config)

        past_length = cache.get_seq_length() if cache is not None else 0
        check_inputs(self.config, input_ids, inputs_embeds, attention_mask, position_ids, cache, past_length)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        length = inputs_embeds.shape[1]
        # Only given position ids can pack several sequences into a row; transformers' mask builders look for
        # that with a read back from the device, which positions made here need not pay (every training step).
        packing_positions = position_ids
        if position_ids is None:
            if is_padding_mask(attention_mask):
                position_ids = positions_from_mask(attention_mask, length)
            else:
                position_ids = (torch.arange(length, device=inputs_embeds.device) + past_length).unsqueeze(0)

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))
        masks = self._attention_masks(inputs_embeds, attention_mask, cache, packing_positions, output_attentions)
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block, layer_type in zip(self.h, self.config.layer_types, strict=True):
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = block(
                hidden_states,
                masks[layer_type],
                cache=cache,
                position_ids=position_ids,
                output_attentions=output_attentions,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_FIELD: cache if use_cache else None},
        )


def last_token_index(hidden_states, input_ids, attention_mask, pad_token_id) -> torch.Tensor:
    """Index of each row's last real token, for left and right padding alike."""
    batch, length, device = hidden_states.shape[0], hidden_states.shape[1], hidden_states.device
    if is_padding_mask(attention_mask):
        real = attention_mask[:, -length:].to(device, torch.int32)
    elif input_ids is not None and pad_token_id is not None:
        real = (input_ids != pad_token_id).to(device, torch.int32)
    else:  # nothing says where padding is: take the last position
        return torch.full((batch,), length - 1, device=device, dtype=torch.long)
    return (torch.arange(length, device=device, dtype=torch.int32) * real).argmax(-1)


def flat(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, sequences, ...) -> (batch * sequences, ...): GPT-1's multi-sequence examples (the choices of
    multiple choice, the two orders of similarity) run through the body as sequences of their own."""
    return None if tensor is None else tensor.flatten(0, 1)


def gather_rows(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """states[b, index[b]] for every row b: read each sequence at one position."""
    return states[torch.arange(states.shape[0], device=states.device), index.to(states.device)]


class HfGptForCausalLM(HfGptPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        self.transformer = HfGptModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _prepare_special_tokens(self, generation_config, *args, **kwargs):
        """Refuse special-token ids outside the vocabulary before generate() feeds one to the embedding (padding
        finished rows, starting without a prompt): a config may hold such ids, as transformers' configs may."""
        outside = special_ids_outside_vocabulary(generation_config, self.config.vocab_size)
        if outside:
            raise ValueError(
                f"generate() cannot use {', '.join(outside)}: outside the vocabulary [0, {self.config.vocab_size}); "
                "set valid ids in the generation config or pass them to generate()"
            )
        return super()._prepare_special_tokens(generation_config, *args, **kwargs)

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        """Refuse, before the first step, a generation that would run past the learned positions."""
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        if generation_config.max_length > self.config.max_position_embeddings:
            raise ValueError(
                f"generation would reach {generation_config.max_length} tokens (prompt {input_ids_length} + new), "
                f"but max_position_embeddings={self.config.max_position_embeddings}; lower max_new_tokens"
            )

    @can_return_tuple
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        shift_labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CausalLMOutputWithPast:
        r"""labels: next-token targets, shifted inside (pass `labels=input_ids`); -100 is ignored.
        shift_labels: targets already aligned with the inputs (the next tokens, as `hf_gpt.data.TokenBlocks`
            serves them); they take precedence over `labels` and let the loss score the last position too.
        logits_to_keep: compute logits only for the last N positions (0 = all), or for given indices."""
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        loss = None
        if labels is not None or shift_labels is not None:
            loss = self.loss_function(
                logits, labels, vocab_size=self.config.vocab_size, shift_labels=shift_labels, **kwargs
            )
        return head_output(CausalLMOutputWithPast, outputs, loss=loss, logits=logits)


class HfGptForSequenceClassification(HfGptPreTrainedModel):
    """Classifies a sequence from its last real token, as GPT-1 does (left or right padding).

    GPT-1's fine-tuning extras are here too: inputs of shape (batch, sequences, length) are scored together
    (GPT-1's similarity head: both orders of a text pair, whose representations it adds; the score layer is linear
    without bias, so summing the sequences' scores is the same), and `lm_labels` adds GPT-1's auxiliary language
    modelling loss, through the tied input embedding, weighted by `config.lm_loss_weight`.
    """

    accepts_loss_kwargs = False  # a per-batch mean loss: Trainer must scale it for gradient accumulation

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = HfGptModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    @can_return_tuple
    @renamed_cache_argument
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        lm_labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutputWithPast:
        r"""input_ids (batch, length), or (batch, sequences, length) to score several sequences as one example.
        lm_labels (shaped as input_ids): GPT-1's auxiliary LM targets, shifted inside; -100 is ignored.
        kwargs: the body's other inputs (output_*), and `num_items_in_batch` to divide the LM term's sum by instead
        of taking its mean. Every input transformers may look for by name (Trainer's `remove_unused_columns` reads
        this signature) is named here."""
        tokens = input_ids if input_ids is not None else inputs_embeds
        grouped = tokens is not None and tokens.dim() == (3 if input_ids is not None else 4)
        if grouped:
            input_ids, attention_mask, position_ids, inputs_embeds, lm_labels = map(
                flat, (input_ids, attention_mask, position_ids, inputs_embeds, lm_labels)
            )
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache and not grouped,  # a cache of grouped rows would not match the caller's batch
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        last = last_token_index(hidden_states, input_ids, attention_mask, self.config.pad_token_id)
        logits = self.score(self.dropout(gather_rows(hidden_states, last)))
        if grouped:
            logits = logits.view(*tokens.shape[:2], -1).sum(1)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        if lm_labels is not None:
            lm_logits = nn.functional.linear(hidden_states, self.transformer.wte.weight)
            lm_loss = ForCausalLMLoss(lm_logits, lm_labels, vocab_size=self.config.vocab_size, **kwargs)
            loss = lm_loss if loss is None else loss + self.config.lm_loss_weight * lm_loss
        return head_output(SequenceClassifierOutputWithPast, outputs, loss=loss, logits=logits)


class HfGptForTokenClassification(HfGptPreTrainedModel):
    accepts_loss_kwargs = False  # a per-batch mean loss: Trainer must scale it for gradient accumulation

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = HfGptModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""kwargs: the body's other inputs (output_*)."""
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{**kwargs, "use_cache": False},
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = self.loss_function(logits, labels, self.config) if labels is not None else None
        return head_output(TokenClassifierOutput, outputs, loss=loss, logits=logits)


class HfGptForQuestionAnswering(HfGptPreTrainedModel):
    """Extractive QA: a start and an end logit per token."""

    accepts_loss_kwargs = False  # a per-batch mean loss: Trainer must scale it for gradient accumulation

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        self.transformer = HfGptModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.LongTensor | None = None,
        end_positions: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> QuestionAnsweringModelOutput:
        r"""kwargs: the body's other inputs (output_*)."""
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **{**kwargs, "use_cache": False},
        )
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions)
        return head_output(
            QuestionAnsweringModelOutput,
            outputs,
            loss=loss,
            start_logits=start_logits.contiguous(),
            end_logits=end_logits.contiguous(),
        )


@dataclass
class HfGptDoubleHeadsModelOutput(ModelOutput):
    """loss = mc_loss + lm_loss_weight * lm_loss when both label kinds are given, else whichever is."""

    loss: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mc_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class HfGptDoubleHeadsModel(HfGptPreTrainedModel):
    """GPT-1 fine-tuning: LM logits plus a multiple-choice score read at one token of each choice.

    Inputs are (batch, num_choices, length); each choice runs through the body as its own sequence.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    accepts_loss_kwargs = False  # per-batch mean losses: Trainer must scale them for gradient accumulation

    def __init__(self, config: HfGptConfig):
        super().__init__(config)
        self.transformer = HfGptModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mc_dropout = nn.Dropout(config.classifier_dropout)
        self.mc_head = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mc_token_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        mc_labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> HfGptDoubleHeadsModelOutput:
        r"""mc_token_ids (batch, num_choices): where to read each choice (default: its last real token).
        labels (batch, num_choices, length): LM targets, shifted inside. mc_labels (batch,): the right choice.
        num_items_in_batch (in kwargs): divide the LM term's sum by it instead of taking its mean."""
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is None or tokens.dim() != (3 if input_ids is not None else 4):
            shape = None if tokens is None else tuple(tokens.shape)
            raise ValueError(f"expected inputs of shape (batch, num_choices, length[, hidden]), got {shape}")
        choices, length = tokens.shape[:2], tokens.shape[2]

        if mc_token_ids is not None and not torch.compiler.is_compiling():
            if tuple(mc_token_ids.shape) != tuple(choices):
                raise ValueError(f"mc_token_ids has shape {tuple(mc_token_ids.shape)}, expected {tuple(choices)}")
            if first_out_of_range(mc_token_ids, length) is not None:
                raise ValueError(f"mc_token_ids must lie in [0, {length}), got {mc_token_ids.tolist()}")

        outputs = self.transformer(
            flat(input_ids),
            attention_mask=flat(attention_mask),
            position_ids=flat(position_ids),
            inputs_embeds=flat(inputs_embeds),
            **{**kwargs, "use_cache": False},  # this head returns no cache
        )
        hidden_states = outputs.last_hidden_state
        lm_logits = self.lm_head(hidden_states)
        if mc_token_ids is None:
            index = last_token_index(hidden_states, flat(input_ids), flat(attention_mask), self.config.pad_token_id)
        else:
            index = flat(mc_token_ids)
        mc_logits = self.mc_head(self.mc_dropout(gather_rows(hidden_states, index))).view(choices)

        lm_loss = mc_loss = None
        if labels is not None:
            lm_loss = ForCausalLMLoss(lm_logits, flat(labels), vocab_size=self.config.vocab_size, **kwargs)
        if mc_labels is not None:
            mc_loss = nn.functional.cross_entropy(mc_logits, mc_labels.to(mc_logits.device))
        if lm_loss is not None and mc_loss is not None:
            loss = mc_loss + self.config.lm_loss_weight * lm_loss
        else:
            loss = mc_loss if mc_loss is not None else lm_loss
        return head_output(
            HfGptDoubleHeadsModelOutput,
            outputs,
            loss=loss,
            mc_loss=mc_loss,
            lm_loss=lm_loss,
            logits=lm_logits.view(*choices, length, -1),
            mc_logits=mc_logits,
        )


__all__ = [
    "HfGptPreTrainedModel",
    "HfGptModel",
    "HfGptForCausalLM",
    "HfGptForSequenceClassification",
    "HfGptForTokenClassification",
    "HfGptForQuestionAnswering",
    "HfGptDoubleHeadsModel",
]
