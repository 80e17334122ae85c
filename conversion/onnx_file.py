"""hf_gpt -> ONNX with a KV cache, for onnxruntime (and anything else that runs ONNX), any of our shapes.

    python conversion/onnx_file.py export SRC DST

DST is a folder with:
    model.onnx          one decoding step: input_ids (batch, new), attention_mask (batch, past + new; 0/1, left
                        padding only), past.N.key / past.N.value (batch, heads, past, head size) for every layer ->
                        logits (batch, new, vocab), present.N.key / present.N.value (the past with the new tokens).
                        Batch, new and past lengths are dynamic; a prefill passes past tensors of length 0.
    onnx_config.json    what a runner needs: layers, heads, head size, context, special ids
    generate_onnx.py    a runner that needs only onnxruntime, numpy and tokenizers (no torch, no hf_gpt)
    tokenizer files, and a model card

The step runs the model's own body (the ONNX graph is torch.export's trace of HfGptForCausalLM) with the masks
StaticDecoder uses (causal, left padding, GPT-3's local band), built in the graph from attention_mask, and
positions counted from each row's first real token, as generate() counts them. (The module is not named
onnx.py: run as a script, it would hide the `onnx` package that torch's exporter imports.)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from hf_gpt.conversion.common import KIND, model_folder, run_converter, source_tokenizer
from torch import nn
from transformers import DynamicCache

from hf_gpt import HfGptForCausalLM
from hf_gpt.counting import count_parameters
from hf_gpt.files import atomic_directory, weights_as_value_errors
from hf_gpt.generation.static_decoder import visible_slots
from hf_gpt.hub.cards import render_card

RUNNER = Path(__file__).with_name("onnx_runner.py")
ONNX_USAGE = """`model.onnx` is one decoding step with its KV cache as inputs and outputs; `generate_onnx.py` runs
it with onnxruntime, numpy and tokenizers alone:

```bash
pip install onnxruntime tokenizers numpy
python generate_onnx.py {path} "Once upon a time" --max-new-tokens 50
```

or from Python: `OnnxGenerator("{path}").generate([[token ids], ...], max_new_tokens=50)` (greedy)."""


class DecodingStep(nn.Module):
    """One decoding step with the KV cache as plain tensors in and out, as ONNX runtimes take it."""

    def __init__(self, model: HfGptForCausalLM):
        super().__init__()
        self.model = model
        config = model.config
        self.windows = {kind: config.local_window if kind == "sliding_attention" else None
                        for kind in config.layer_types}  # fmt: skip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: tuple[torch.Tensor, ...]):
        # The length is the cache's (attention_mask must match it): one length for the exporter, not two to equate.
        new = input_ids.shape[1]
        total = past[0].shape[2] + new
        columns = torch.arange(total - new, total, device=input_ids.device)
        starts = (attention_mask.cumsum(-1) == 0).sum(-1)  # each row's left padding
        positions = (columns[None, :] - starts[:, None]).clamp(min=0)
        dtype = self.model.lm_head.weight.dtype
        masks = {kind: visible_slots(columns, starts, total, window, dtype) for kind, window in self.windows.items()}
        cache = DynamicCache()  # full layers: the masks band the local ones (a sliding layer would crop its past)
        for layer in range(self.model.config.num_hidden_layers):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        output = self.model(
            input_ids=input_ids, attention_mask=masks, position_ids=positions, cache=cache, use_cache=True
        )
        present = [tensor for layer in output.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return output.logits, *present


def cache_names(prefix: str, layers: int) -> list[str]:
    return [f"{prefix}.{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]


def write_onnx(model: HfGptForCausalLM, path: Path) -> None:
    """Trace one decoding step (an example with a past, so no length is specialised) and write it to `path`."""
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    head_size = config.hidden_size // heads
    batch, new, past_length = 2, 3, 5
    past = tuple(torch.zeros(batch, heads, past_length, head_size) for _ in range(2 * layers))
    example = (torch.zeros(batch, new, dtype=torch.long), torch.ones(batch, past_length + new, dtype=torch.long), past)
    dims = {name: torch.export.Dim(name) for name in ("batch", "new", "total", "past")}
    shapes = (
        {0: dims["batch"], 1: dims["new"]},
        {0: dims["batch"], 1: dims["total"]},
        tuple({0: dims["batch"], 2: dims["past"]} for _ in range(2 * layers)),
    )
    program = torch.onnx.export(
        DecodingStep(model).eval(), example, dynamo=True, dynamic_shapes=shapes, verbose=False,
        input_names=["input_ids", "attention_mask", *cache_names("past", layers)],
        output_names=["logits", *cache_names("present", layers)],
    )  # fmt: skip
    program.save(str(path))


def export_onnx(source: str, output_dir: str, overwrite: bool = False, tokenizer: str | None = None) -> Path:
    """An hf_gpt folder -> a folder with model.onnx, its runner, its settings and the tokenizer."""
    folder = model_folder(source)
    with weights_as_value_errors(source):
        ours = HfGptForCausalLM.from_pretrained(folder, attn_implementation="sdpa").float().eval()
    tokens = source_tokenizer(tokenizer or folder)
    if tokens is None:
        raise ValueError(f"{tokenizer or source} has no tokenizer: the ONNX runner needs one (pass --tokenizer)")
    config = ours.config
    settings = {
        "num_layers": config.num_hidden_layers, "num_heads": config.num_attention_heads,
        "head_size": config.hidden_size // config.num_attention_heads, "context": config.max_position_embeddings,
        "vocab_size": config.vocab_size, "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
    }  # fmt: skip
    card = render_card(
        config, count_parameters(ours), model_name=Path(output_dir).name, base_model=source, custom_code=False,
        summary=f"{source} (hf_gpt) as ONNX with a KV cache.", model_path=str(output_dir),
        usage=ONNX_USAGE.format(path=output_dir), library_name="onnx",
    )  # fmt: skip
    inputs = [p for p in (source, tokenizer) if p is not None]
    with atomic_directory(output_dir, overwrite, kind=KIND, inputs=inputs) as staging:
        with torch.no_grad():
            write_onnx(ours, staging / "model.onnx")
        (staging / "onnx_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        shutil.copyfile(RUNNER, staging / "generate_onnx.py")
        tokens.save_pretrained(staging)
        card.save(staging / "README.md")
    runner = Path(output_dir) / "generate_onnx.py"
    print(f"converted {source} -> {output_dir} (model.onnx; run it with python {runner} {output_dir} PROMPT)")
    return Path(output_dir)


DIRECTIONS = {"export": export_onnx}  # also `hf-gpt convert onnx export ...`


def main(argv: list[str] | None = None) -> int:
    return run_converter("conversion/onnx_file.py", __doc__, DIRECTIONS, argv)


if __name__ == "__main__":
    sys.exit(main())
