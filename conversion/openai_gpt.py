"""transformers GPT-1 (OpenAIGPTLMHeadModel) -> hf_gpt.

    python conversion/openai_gpt.py import SRC DST

GPT-1 is post-norm (LayerNorm after each residual add, none at the end): hf_gpt's norm_position="post".
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
    strip_prefix,
    transpose_projections,
    write_converted,
)
from transformers import OpenAIGPTLMHeadModel

from hf_gpt import HfGptConfig, HfGptForCausalLM

RENAMES = {"tokens_embed.": "wte.", "positions_embed.": "wpe."}
# transformers' OpenAIGPT ACT_FNS as our activation_function: its "gelu" is the tanh approximation (gelu_new, as
# OpenAI's GPT-1 code had it), not the exact erf GELU that the name means in ACT2FN.
AFN_ACTIVATIONS = {"relu": "relu", "silu": "silu", "swish": "silu", "gelu": "gelu_new"}


def import_openai_gpt(source: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None) -> Path:
    folder = model_folder(source)
    config = read_config(folder)
    if config.get("model_type") != "openai-gpt":
        raise ValueError(f"{source} holds a {config.get('model_type')!r} model, not openai-gpt")
    afn = config.get("afn", "gelu")
    if afn not in AFN_ACTIVATIONS:
        raise ValueError(f"{source}: afn={afn!r} is not one transformers' GPT-1 has ({', '.join(AFN_ACTIVATIONS)})")
    ours = HfGptForCausalLM(
        HfGptConfig(
            vocab_size=config["vocab_size"],
            n_positions=config["n_positions"],
            n_embd=config["n_embd"],
            n_layer=config["n_layer"],
            n_head=config["n_head"],
            activation_function=AFN_ACTIVATIONS[afn],
            resid_pdrop=config.get("resid_pdrop", 0.1),
            embd_pdrop=config.get("embd_pdrop", 0.1),
            attn_pdrop=config.get("attn_pdrop", 0.1),
            layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
            norm_position="post",
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    reference = load_reference(OpenAIGPTLMHeadModel, folder, source)  # read once, by transformers
    weights = {}
    for key, value in strip_prefix(reference.state_dict(), "transformer.").items():
        if key.startswith("lm_head.") or key.endswith(".attn.bias"):  # tied output layer, causal-mask buffer
            continue
        for old, new in RENAMES.items():
            key = key.replace(old, new) if key.startswith(old) else key
        weights[f"transformer.{key}"] = value
    load_exactly(ours, transpose_projections(weights), source)
    difference = largest_difference(lambda x: ours(x).logits, lambda x: reference(x).logits,
                                    ours.config.vocab_size, ours.config.max_position_embeddings)  # fmt: skip
    check_same_logits(difference, source)
    return write_converted(
        ours, output_dir, source=source, overwrite=overwrite, tokenizer_from=tokenizer or folder,
        summary=f"{source} (transformers GPT-1, OpenAIGPTLMHeadModel) converted to hf_gpt with identical outputs.",
    )  # fmt: skip


DIRECTIONS = {"import": import_openai_gpt}  # also `hf-gpt convert openai-gpt ...`


def main(argv: list[str] | None = None) -> int:
    return run_converter("conversion/openai_gpt.py", __doc__, DIRECTIONS, argv)


if __name__ == "__main__":
    sys.exit(main())
