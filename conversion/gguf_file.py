"""hf_gpt -> GGUF, the file llama.cpp (and ollama, LM Studio, transformers' GGUF loader) runs.

    python conversion/gguf_file.py export SRC DST [--outtype f32|f16|bf16|q8_0]

DST is a folder holding `model-OUTTYPE.gguf` and a model card. The file uses llama.cpp's `gpt2` architecture:
its metadata, tensor names and layout as llama.cpp's own converter writes them for a GPT-2 checkpoint, written
with the `gguf` package (the library that converter uses). The tokenizer goes in too: tokens, merges and the
special ids, with the pre-tokenizer declared as GPT-2's (`tokenizer.ggml.pre = "gpt-2"`): llama.cpp's converter
recognises pre-tokenizers by a hash of a test string's ids, which a freshly trained vocabulary never matches,
while ours splits text with GPT-2's regex by construction.

What the gpt2 architecture cannot compute is refused, naming the field: GPT-1's post-norm, local attention
layers, activations other than GPT-2's tanh-approximated GELU. (The module is not named gguf.py: run as a script,
it would hide the `gguf` package it imports.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from hf_gpt.conversion.common import KIND, model_folder, run_converter, source_tokenizer
from transformers import PreTrainedTokenizerBase

from hf_gpt import HfGptConfig, HfGptForCausalLM
from hf_gpt.cli import GGUF_OUTTYPES as OUTTYPES
from hf_gpt.counting import count_parameters
from hf_gpt.files import atomic_directory, weights_as_value_errors
from hf_gpt.hub.cards import render_card

# llama.cpp computes GELU with the tanh approximation (GPT-2's "gelu_new"); these names are that function.
GGUF_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
GGUF_USAGE = """A GGUF file (llama.cpp's `gpt2` architecture, its tokenizer inside) for llama.cpp and what builds on it:

```bash
llama-cli -m {file} -p "Once upon a time"
```

transformers reads it too (with the `gguf` package installed):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

# n_positions: transformers' GGUF loader does not read it from the file (it takes 1024)
model = AutoModelForCausalLM.from_pretrained("{path}", gguf_file="{file}", n_positions={context})
tokenizer = AutoTokenizer.from_pretrained("{path}", gguf_file="{file}")
```"""
# Our parameter names (after transformer.h.N.) -> llama.cpp's gpt2 tensor names (after blk.N.).
BLOCK_TENSORS = {
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}  # fmt: skip
TOP_TENSORS = {"transformer.wte": "token_embd", "transformer.wpe": "position_embd", "transformer.ln_f": "output_norm",
               "lm_head": "output"}  # fmt: skip


def check_gguf_representable(config: HfGptConfig) -> None:
    """Refuse, naming the field, what llama.cpp's gpt2 architecture cannot compute."""
    if config.norm_position != "pre":
        raise ValueError(f"norm_position={config.norm_position!r} (GPT-1's post-norm) cannot be exported to GGUF: "
                         "its gpt2 architecture is pre-norm only")  # fmt: skip
    if "local" in config.attention_layers:
        raise ValueError("attention_layers has 'local' (banded) layers: GGUF's gpt2 architecture has only dense "
                         "attention")  # fmt: skip
    if config.activation_function not in GGUF_ACTIVATIONS:
        raise ValueError(f"activation_function={config.activation_function!r}: GGUF's gpt2 architecture computes "
                         f"GPT-2's tanh-approximated GELU only ({', '.join(GGUF_ACTIVATIONS)})")  # fmt: skip


def gguf_name(name: str) -> str:
    """Our parameter name -> llama.cpp's (transformer.h.3.mlp.c_fc.weight -> blk.3.ffn_up.weight)."""
    stem, suffix = name.rsplit(".", 1)
    if stem.startswith("transformer.h."):
        index, part = stem.removeprefix("transformer.h.").split(".", 1)
        return f"blk.{index}.{BLOCK_TENSORS[part]}.{suffix}"
    return f"{TOP_TENSORS[stem]}.{suffix}"


def tensor_type(name: str, tensor: torch.Tensor, outtype: str):
    """The GGML type a tensor is stored as: matrices in the chosen type, as llama.cpp's converter does; vectors
    (biases, norms) and the position table in f32 (they are small, and llama.cpp expects them so)."""
    import gguf

    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}  # fmt: skip
    if tensor.ndim < 2 or name.startswith("position_embd"):
        return types["f32"]
    if outtype == "q8_0" and tensor.shape[-1] % gguf.GGML_QUANT_SIZES[types["q8_0"]][0]:
        return types["f16"]  # rows that do not split into q8_0 blocks of 32
    return types[outtype]


def vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, their GGUF token types, merges "a b") from the tokenizer's tokenizer.json; ids the model has
    beyond the tokenizer (a padded embedding) become unused [PAD...] tokens."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "BPE":
        raise ValueError(f"the tokenizer is {state['model']['type']}, not byte-level BPE: GGUF's gpt2 tokenizer "
                         "cannot run it")  # fmt: skip
    by_id = {index: token for token, index in state["model"]["vocab"].items()}
    types = dict.fromkeys(by_id, gguf.TokenType.NORMAL)
    for added in state["added_tokens"]:
        by_id[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ValueError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's vocab_size {vocab_size}")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [int(types.get(i, gguf.TokenType.UNUSED)) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    return tokens, token_types, merges


def write_gguf(model: HfGptForCausalLM, tokenizer: PreTrainedTokenizerBase, path: Path, outtype: str, name: str):
    """The GGUF file of `model` (checked by `check_gguf_representable`) and its tokenizer."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}  # fmt: skip
    writer.add_file_type(file_types[outtype])

    tokens, token_types, merges = vocabulary(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    for kind, token_id in (("bos", config.bos_token_id), ("eos", config.eos_token_id), ("pad", config.pad_token_id)):
        if token_id is not None and 0 <= token_id < config.vocab_size:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "pad": "add_pad_token_id"}[kind])(
                token_id
            )
    writer.add_add_bos_token(False)  # GPT-2 prepends nothing

    weights = model.state_dict()
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
        weights["lm_head.weight"] = model.transformer.wte.weight  # llama.cpp's gpt2 reads output.weight when present
    for our_name, tensor in weights.items():
        target = gguf_name(our_name)
        kind = tensor_type(target, tensor, outtype)
        data = tensor.detach().float().cpu().numpy()
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(target, data)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(target, data.astype(np.float16))
        else:
            writer.add_tensor(target, gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(
    source: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None, outtype: str = "f16"
) -> Path:
    """An hf_gpt folder -> a folder with `model-OUTTYPE.gguf` (and a card) for llama.cpp."""
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, got {outtype!r}")
    folder = model_folder(source)
    with weights_as_value_errors(source):
        ours = HfGptForCausalLM.from_pretrained(folder).float().eval()
    check_gguf_representable(ours.config)
    tokens = source_tokenizer(tokenizer or folder)
    if tokens is None:
        raise ValueError(f"{tokenizer or source} has no tokenizer: a GGUF file carries one (pass --tokenizer)")
    file_name = f"model-{outtype}.gguf"
    card = render_card(
        ours.config,
        count_parameters(ours),
        model_name=Path(output_dir).name,
        summary=f"{source} (hf_gpt) as a GGUF file ({outtype}) for llama.cpp, in its gpt2 architecture.",
        base_model=source,
        model_path=str(output_dir),
        custom_code=False,
        usage=GGUF_USAGE.format(file=file_name, path=output_dir, context=ours.config.max_position_embeddings),
        library_name="gguf",
    )
    inputs = [p for p in (source, tokenizer) if p is not None]
    with atomic_directory(output_dir, overwrite, kind=KIND, inputs=inputs) as staging:
        write_gguf(ours, tokens, staging / file_name, outtype, name=Path(output_dir).name)
        card.save(staging / "README.md")
    print(f"converted {source} -> {Path(output_dir) / file_name}")
    return Path(output_dir) / file_name


DIRECTIONS = {"export": export_gguf}  # also `hf-gpt convert gguf export ...`


def main(argv: list[str] | None = None) -> int:
    return run_converter("conversion/gguf_file.py", __doc__, DIRECTIONS, argv)


if __name__ == "__main__":
    sys.exit(main())
