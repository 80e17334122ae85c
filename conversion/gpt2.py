"""transformers GPT-2 <-> hf_gpt.

    python conversion/gpt2.py import SRC DST   GPT2LMHeadModel folder -> hf_gpt folder (tokenizer carried over)
    python conversion/gpt2.py export SRC DST   hf_gpt folder -> GPT2LMHeadModel folder that needs no custom code

Both check that the result computes the source's logits (fp32, within 1e-5 here; refused above 1e-4).
GPT-2's Conv1D layers store weights as (in, out), nn.Linear as (out, in): the four projections transpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hf_gpt.conversion.common import (
    check_same_logits,
    largest_difference,
    load_exactly,
    load_reference,
    model_folder,
    read_config,
    run_converter,
    transpose_projections,
    write_converted,
)
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast, PreTrainedTokenizerBase

from hf_gpt import HfGptConfig, HfGptForCausalLM
from hf_gpt.files import weights_as_value_errors

SHARED_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                 "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range",
                 "bos_token_id", "eos_token_id", "tie_word_embeddings")  # fmt: skip
# GPT-2 options our model does not implement: converting would silently change the computation.
GPT2_ONLY = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
             "add_cross_attention": False}  # fmt: skip
# What GPT-2 serving stacks (TGI, vLLM, llama.cpp) implement for its MLP.
GPT2_ACTIVATIONS = ("gelu_new", "gelu", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "relu")


def import_gpt2(source: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None) -> Path:
    """A transformers GPT-2 folder or Hub repo (config.json + safetensors, sharded or not, or pytorch_model.bin)
    -> an hf_gpt folder."""
    folder = model_folder(source)
    config = read_config(folder)
    if config.get("model_type") != "gpt2":
        raise ValueError(f"{source} holds a {config.get('model_type')!r} model, not gpt2")
    for name, default in GPT2_ONLY.items():
        if config.get(name, default) != default:
            raise ValueError(f"{source}: {name}={config[name]!r} is not supported by hf_gpt (only {default!r})")
    values = {name: config[name] for name in SHARED_FIELDS if name in config}
    values.update({name: config.get(name) for name in ("bos_token_id", "eos_token_id")})  # absent means none
    ours = HfGptForCausalLM(HfGptConfig(**values)).eval()
    # Loaded once, by transformers: it reads every checkpoint layout (GPT2Model folders, old mask buffers too).
    reference = load_reference(GPT2LMHeadModel, folder, source, attn_implementation="eager")
    weights = reference.state_dict()
    if ours.config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    load_exactly(ours, transpose_projections(weights), source)
    difference = largest_difference(lambda x: ours(x).logits, lambda x: reference(x).logits,
                                    ours.config.vocab_size, ours.config.max_position_embeddings)  # fmt: skip
    check_same_logits(difference, source)
    return write_converted(
        ours, output_dir, source=source, overwrite=overwrite, tokenizer_from=tokenizer or folder,
        summary=f"{source} (transformers GPT-2) converted to hf_gpt with identical outputs.",
    )  # fmt: skip


def check_gpt2_representable(config: HfGptConfig) -> None:
    """Refuse, naming the field, what a plain GPT2LMHeadModel cannot compute."""
    if config.norm_position != "pre":
        raise ValueError(f"norm_position={config.norm_position!r} (GPT-1's post-norm) cannot be exported: GPT-2 is "
                         "pre-norm only")  # fmt: skip
    if "local" in config.attention_layers:
        raise ValueError("attention_layers has 'local' (banded) layers: GPT-2 has only dense attention")
    if config.activation_function not in GPT2_ACTIVATIONS:
        raise ValueError(f"activation_function={config.activation_function!r} is not one GPT-2 serving stacks "
                         f"implement ({', '.join(GPT2_ACTIVATIONS)})")  # fmt: skip


def as_gpt2(ours: HfGptForCausalLM, source: str = "the model", **kwargs) -> GPT2LMHeadModel:
    """transformers' GPT2LMHeadModel with `ours`'s config and exactly its weights (GPT-2's Conv1D layers hold
    them transposed); kwargs go to its construction, e.g. attn_implementation."""
    check_gpt2_representable(ours.config)
    values = {name: getattr(ours.config, name) for name in SHARED_FIELDS}
    # n_ctx: gone from transformers' GPT2Config, but in every released GPT-2 config.json, and llama.cpp's converter
    # reads it (KeyError without it).
    config = GPT2Config(**values, n_ctx=ours.config.max_position_embeddings, pad_token_id=ours.config.pad_token_id)
    gpt2 = GPT2LMHeadModel._from_config(config, **kwargs)
    weights = {
        k: v for k, v in ours.state_dict().items() if not (ours.config.tie_word_embeddings and k == "lm_head.weight")
    }
    load_exactly(gpt2, transpose_projections(weights), source)
    return gpt2.to(ours.device, ours.dtype).eval()


def as_gpt2_tokenizer(tokenizer: PreTrainedTokenizerBase) -> GPT2TokenizerFast:
    """The same tokenizer (its tokenizer.json unchanged) as GPT-2's class, which transformers 4.x and 5.x both load:
    5.x saves a generic tokenizer as "TokenizersBackend", a class 4.x does not have."""
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "pad_token")}
    return GPT2TokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        unk_token=tokenizer.unk_token or tokenizer.eos_token,  # GPT-2's; byte-level BPE never needs it
        model_max_length=tokenizer.model_max_length,
        **special,
    )


def export_gpt2(source: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None) -> Path:
    """An hf_gpt folder -> a GPT2LMHeadModel folder that loads with plain transformers, no custom code."""
    folder = model_folder(source)
    with weights_as_value_errors(source):
        ours = HfGptForCausalLM.from_pretrained(folder).float().eval()
    gpt2 = as_gpt2(ours, source)
    difference = largest_difference(lambda x: gpt2(x).logits, lambda x: ours(x).logits,
                                    gpt2.config.vocab_size, gpt2.config.n_positions)  # fmt: skip
    check_same_logits(difference, source)
    return write_converted(
        gpt2, output_dir, source=source, overwrite=overwrite, tokenizer_from=tokenizer or folder,
        card_config=ours.config, tokenizer_as=as_gpt2_tokenizer,
        summary=f"{source} (hf_gpt) exported as a plain GPT-2 (GPT2LMHeadModel): no custom code needed.",
    )  # fmt: skip


DIRECTIONS = {"import": import_gpt2, "export": export_gpt2}  # also `hf-gpt convert gpt2 ...`


def main(argv: list[str] | None = None) -> int:
    return run_converter("conversion/gpt2.py", __doc__, DIRECTIONS, argv)


if __name__ == "__main__":
    sys.exit(main())
