# Copyright 2026 The hf_gpt authors. Licensed under the Apache License, Version 2.0.
"""HfGptConfig: one config for GPT-1, GPT-2 and GPT-3 shaped decoders, plus the named presets.

Part of the remote-code core: imports only torch/transformers so a saved folder loads with
`trust_remote_code=True` on a machine without hf_gpt.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

logger = logging.get_logger(__name__)

# What `save_pretrained` writes into config.json so every Auto class finds the flat code files.
AUTO_MAP = {
    "AutoConfig": "configuration_hf_gpt.HfGptConfig",
    "AutoModel": "modeling_hf_gpt.HfGptModel",
    "AutoModelForCausalLM": "modeling_hf_gpt.HfGptForCausalLM",
    "AutoModelForSequenceClassification": "modeling_hf_gpt.HfGptForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_hf_gpt.HfGptForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_hf_gpt.HfGptForQuestionAnswering",
}

# Our layer names -> transformers' layer types (used by its caches and mask builders).
LAYER_TYPES = {"global": "full_attention", "local": "sliding_attention"}
NORM_POSITIONS = ("pre", "post")
# Deeper than this, the default all-"global" attention_layers stays unlisted (None): a list of 10**9 entries (which
# transformers' own config code walks too) would take minutes and gigabytes, for a config no model can be built
# from; such a config serves cost estimates only.
MAX_LISTED_LAYERS = 10**6


def special_ids_outside_vocabulary(holder, vocab_size: int) -> list[str]:
    """ "name=id" for each special-token id of `holder` (a config or a generation config) outside [0, vocab_size)."""
    found = []
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(holder, name, None)
        value = value.tolist() if hasattr(value, "tolist") else value  # generate() may hold them as tensors
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if token_id is not None and not 0 <= token_id < vocab_size:
                found.append(f"{name}={token_id}")
    return found


def _gpt2(n_layer: int, n_embd: int, n_head: int) -> dict:
    return dict(
        vocab_size=50257,
        max_position_embeddings=1024,
        hidden_size=n_embd,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        bos_token_id=50256,
        eos_token_id=50256,
    )


def _gpt3(n_layer: int, d_model: int, n_head: int) -> dict:
    # GPT-3 alternates dense and locally banded attention (paper, section 2.1); the band width is
    # not published, 256 follows GPT-Neo's reproduction.
    return dict(
        _gpt2(n_layer, d_model, n_head),
        max_position_embeddings=2048,
        attention_layers=["global", "local"] * (n_layer // 2),
        local_window=256,
    )


def _tiny(**overrides) -> dict:
    return dict(
        vocab_size=1024,
        max_position_embeddings=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        bos_token_id=0,
        eos_token_id=0,
        **overrides,
    )


# Presets are data: name -> HfGptConfig keyword arguments.
PRESETS: dict[str, dict] = {
    # Radford et al. 2018: 12 x 768, 12 heads, 3072 inner, 512 context, 40478 BPE tokens, post-norm.
    "gpt1": dict(
        vocab_size=40478,
        max_position_embeddings=512,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        norm_position="post",
        bos_token_id=None,
        eos_token_id=None,
    ),
    # Radford et al. 2019: the four released GPT-2 shapes.
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    # Brown et al. 2020, Table 2.1 (n_layers, d_model, n_heads).
    "gpt3-small": _gpt3(12, 768, 12),
    "gpt3-medium": _gpt3(24, 1024, 16),
    "gpt3-large": _gpt3(24, 1536, 16),
    # The table gives 24 heads for XL, but d_model 2048 / 24 is not whole; 16 heads keep its d_head 128.
    "gpt3-xl": _gpt3(24, 2048, 16),
    "gpt3-2.7b": _gpt3(32, 2560, 32),
    "gpt3-6.7b": _gpt3(32, 4096, 32),
    # The table gives d_model 5140, which 40 heads of d_head 128 do not fill; 5120 = 40 x 128 does.
    "gpt3-13b": _gpt3(40, 5120, 40),
    "gpt3-175b": _gpt3(96, 12288, 96),
    # Tiny shapes for tests and demos: one per family.
    "gpt1-tiny": _tiny(norm_position="post"),
    "gpt2-tiny": _tiny(),
    "gpt3-tiny": _tiny(attention_layers=["global", "local"], local_window=16),
}


class HfGptConfig(PretrainedConfig):
    r"""Configuration of a GPT-1/2/3 style decoder (learned absolute positions, causal attention).

    Standard transformers names, with the GPT-2 names (`n_embd`, `n_layer`, `n_head`, `n_positions`,
    `n_inner`) accepted as aliases.

    norm_position (`str`): "pre" (GPT-2/3: LayerNorm before each sublayer, plus a final LayerNorm) or
        "post" (GPT-1: LayerNorm after each residual add, no final LayerNorm).
    attention_layers (`list[str]`): per layer, "global" (dense causal) or "local" (causal, banded to
        the last `local_window` tokens). Defaults to all "global" (left None beyond `MAX_LISTED_LAYERS` layers).
    lm_loss_weight (`float`): λ of GPT-1's auxiliary LM objective, added to the task loss by `HfGptDoubleHeadsModel`
        and `HfGptForSequenceClassification` (given `labels` / `lm_labels` respectively).
    """

    model_type = "hf_gpt"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "n_embd": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
        "n_ctx": "max_position_embeddings",
        "n_inner": "intermediate_size",
    }

    vocab_size: int = 50257
    max_position_embeddings: int = 1024
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    resid_pdrop: float = 0.1
    classifier_dropout: float = 0.1
    norm_position: str = "pre"
    attention_layers: list[str] | None = None
    local_window: int = 256
    lm_loss_weight: float = 0.5
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        layers = self.num_hidden_layers
        if self.attention_layers is None and isinstance(layers, int) and layers <= MAX_LISTED_LAYERS:
            self.attention_layers = ["global"] * layers  # a bad count is left to check() to name
        if self.attention_layers is not None:
            self.attention_layers = list(self.attention_layers)
        if self.id2label is not None and self.label2id is None:  # pipelines look labels up by name
            self.label2id = {label: index for index, label in self.id2label.items()}
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}
        self.check(building_model=False)

    @property
    def layer_types(self) -> list[str] | None:
        """transformers' name for each layer's attention kind (drives caches and mask creation)."""
        if self.attention_layers is None:  # read by the base __post_init__ before ours fills it in
            return None
        return [LAYER_TYPES.get(kind, kind) for kind in self.attention_layers]  # check() rejects unknown kinds

    @property
    def sliding_window(self) -> int | None:
        """The band width of "local" layers, under the name transformers' caches and masks read."""
        return self.local_window if "local" in (self.attention_layers or ()) else None

    @sliding_window.setter
    def sliding_window(self, value: int | None) -> None:
        if value is not None:
            self.local_window = value

    def check(self, building_model: bool = True) -> None:
        """Raise a ValueError naming the first bad value and what would be allowed.

        A config alone (`building_model=False`) is held to what transformers' configs hold theirs to: each value
        in range. Whether the heads divide the width is checked where a model is built, as transformers does
        (`GPT2Config(n_embd=37)` builds; its model does not).
        """
        for name in (
            "vocab_size",
            "max_position_embeddings",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "local_window",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer (>= 1), got {value!r}")
        if building_model and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop", "classifier_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
        if self.activation_function not in ACT2FN:
            raise ValueError(
                f"activation_function {self.activation_function!r} is unknown; choose one of {sorted(ACT2FN)}"
            )
        if self.norm_position not in NORM_POSITIONS:
            raise ValueError(f"norm_position must be one of {NORM_POSITIONS}, got {self.norm_position!r}")
        if self.attention_layers is not None:
            if len(self.attention_layers) != self.num_hidden_layers:
                raise ValueError(
                    f"attention_layers has {len(self.attention_layers)} entries but num_hidden_layers is "
                    f"{self.num_hidden_layers}: give one entry per layer"
                )
            unknown = sorted(set(self.attention_layers) - set(LAYER_TYPES))
            if unknown:
                raise ValueError(f"attention_layers entries must be in {sorted(LAYER_TYPES)}, got {unknown}")
        outside = special_ids_outside_vocabulary(self, self.vocab_size)
        if outside:  # as transformers' own configs: a notice here, an error where such an id would be used
            logger.warning_once(
                f"{', '.join(outside)} outside the vocabulary [0, {self.vocab_size}); generate() refuses such ids"
            )

    def parameter_count(self) -> int:
        """Parameters of `HfGptForCausalLM` on this config (a tied output layer once), in closed form, so any size
        is counted at once and a model too large to build is refused before building it.

        Per layer: QKV d·3d+3d, output d·d+d, MLP d·i+i and i·d+d, two LayerNorms 2d each; then the token and
        position tables, the final LayerNorm of pre-norm models, and an untied output layer v·d.
        """
        d, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        layer = 4 * d * d + 2 * d * i + 9 * d + i
        final_norm = 2 * d if self.norm_position == "pre" else 0
        output = 0 if self.tie_word_embeddings else v * d
        return self.num_hidden_layers * layer + (v + self.max_position_embeddings) * d + final_norm + output

    @classmethod
    def from_preset(cls, name: str, **overrides) -> HfGptConfig:
        """Build a config from a named preset (see `PRESETS`), with keyword overrides on top."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls.from_values(PRESETS[name], **overrides)

    @classmethod
    def from_values(cls, values: dict, **overrides) -> HfGptConfig:
        """A config from a preset's or a saved config's values, with overrides on top. A new depth keeps the
        attention pattern's period (GPT-3's global/local alternation), since the pattern was drawn for the old one."""
        values = {key: value for key, value in values.items() if key != "model_type"}
        if "num_hidden_layers" in overrides or "n_layer" in overrides:
            layers = overrides.get("num_hidden_layers", overrides.get("n_layer"))
            pattern = values.get("attention_layers") or ["global"]
            if set(pattern) == {"global"} or not isinstance(layers, int):  # the default, or a count check() refuses
                values["attention_layers"] = None
            elif layers > MAX_LISTED_LAYERS:
                raise ValueError(
                    f"num_hidden_layers={layers:,} is too deep to list a mix of {sorted(set(pattern))} attention "
                    f"layers one by one (at most {MAX_LISTED_LAYERS:,} layers); only all-global models may be deeper"
                )
            else:
                values["attention_layers"] = [pattern[i % len(pattern)] for i in range(layers)]
        return cls(**{**values, **overrides})


__all__ = ["HfGptConfig", "PRESETS", "MAX_LISTED_LAYERS"]
