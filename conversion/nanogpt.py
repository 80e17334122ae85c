"""nanoGPT checkpoint (ckpt.pt) -> hf_gpt.

    python conversion/nanogpt.py import out/ckpt.pt DST [--tokenizer FOLDER]

nanoGPT saves {"model": state_dict, "model_args": {n_layer, n_head, n_embd, block_size, bias, vocab_size,
dropout}, ...}; a model trained with torch.compile prefixes every key with "_orig_mod.". Its layers are
nn.Linear (no transpose), its GELU is the exact one, and with bias=False its linear layers and LayerNorms
have no biases: those become zeros here, which computes the same. The file is read with
torch.load(weights_only=True), so it cannot run code. nanoGPT has no tokenizer files (it uses tiktoken's
GPT-2 encoding, or a character table): give --tokenizer to carry one over.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hf_gpt.conversion.common import load_exactly, load_pickled_weights, run_converter, strip_prefix, write_converted

from hf_gpt import HfGptConfig, HfGptForCausalLM

GPT2_END_OF_TEXT = 50256
MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")


def check_model_args(model_args: dict, weights: dict, source: str) -> None:
    """The sizes model_args declare must be those of the saved tensors, checked before a model is built from them:
    a wrong (or hostile) n_layer or vocab_size would have the converter allocate a model the file does not hold."""
    missing = [name for name in MODEL_ARGS if name not in model_args]
    if missing:
        raise ValueError(f"model_args lacks {missing}: not a nanoGPT checkpoint")
    wte, wpe = weights.get("transformer.wte.weight"), weights.get("transformer.wpe.weight")
    if not all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in (wte, wpe)):
        raise ValueError(f"{source} has no 2D transformer.wte and transformer.wpe weights: not a nanoGPT checkpoint")
    layers = {key.split(".")[2] for key in weights if key.startswith("transformer.h.")}
    held = {"n_layer": len(layers), "vocab_size": wte.shape[0], "n_embd": wte.shape[1], "block_size": wpe.shape[0]}
    wrong = [f"{name}={model_args[name]!r} (the tensors hold {value})" for name, value in held.items()
             if model_args[name] != value]  # fmt: skip
    if wrong:
        raise ValueError(f"{source}: model_args do not match the saved weights: {', '.join(wrong)}")


def nanogpt_config(model_args: dict) -> HfGptConfig:
    dropout = float(model_args.get("dropout", 0.0))
    # GPT-2's end-of-text id when the vocabulary is GPT-2's (nanoGPT pads it to 50304); none for character tables.
    end = GPT2_END_OF_TEXT if model_args["vocab_size"] > GPT2_END_OF_TEXT else None
    return HfGptConfig(
        vocab_size=model_args["vocab_size"],
        n_positions=model_args["block_size"],
        n_embd=model_args["n_embd"],
        n_layer=model_args["n_layer"],
        n_head=model_args["n_head"],
        activation_function="gelu",
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        resid_pdrop=dropout,
        bos_token_id=end,
        eos_token_id=end,
    )


def import_nanogpt(source: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None) -> Path:
    if not Path(source).is_file():
        raise FileNotFoundError(f"nanoGPT checkpoint {source} does not exist")
    checkpoint = load_pickled_weights(source)
    if not (isinstance(checkpoint, dict) and all(isinstance(checkpoint.get(k), dict) for k in ("model", "model_args"))):
        raise ValueError(f"{source} has no 'model' and 'model_args': not a nanoGPT checkpoint")
    weights = strip_prefix(checkpoint["model"], "_orig_mod.")
    check_model_args(checkpoint["model_args"], weights, source)
    model = HfGptForCausalLM(nanogpt_config(checkpoint["model_args"])).eval()
    weights = {k: v for k, v in weights.items() if not k.endswith(".attn.bias") and k != "lm_head.weight"}
    if not checkpoint["model_args"].get("bias", True):  # bias=False: the zeros nanoGPT leaves out
        for name, parameter in model.state_dict().items():
            if name.endswith(".bias"):
                weights.setdefault(name, torch.zeros_like(parameter))
    load_exactly(model, weights, source)
    return write_converted(
        model, output_dir, source=source, overwrite=overwrite, tokenizer_from=tokenizer,
        summary=f"The nanoGPT checkpoint {Path(source).name} converted to hf_gpt.",
    )  # fmt: skip


DIRECTIONS = {"import": import_nanogpt}  # also `hf-gpt convert nanogpt ...`


def main(argv: list[str] | None = None) -> int:
    return run_converter("conversion/nanogpt.py", __doc__, DIRECTIONS, argv)


if __name__ == "__main__":
    sys.exit(main())
