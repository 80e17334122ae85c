"""onnxruntime runs hf_gpt's ONNX export: greedy decoding speed against PyTorch's generate(), same tokens.

    pip install "hf_gpt[onnx]"
    python benchmarks/onnx_decode.py [--model FOLDER] [--new-tokens 64] [--batch-sizes 1 8]

Without --model it builds the same random GPT-2-shaped model as gguf_llama_cpp.py (6 x 256, context 256). It
exports it with `hf-gpt convert onnx export`, then for each batch size decodes greedily with the export's own
runner (generate_onnx.py: onnxruntime, numpy) and with the model's generate(), checks the tokens are equal, and
appends the times to benchmarks/RESULTS.md. Both on the CPU with the same threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from export_common import greedy_agreement
from gguf_llama_cpp import PROMPT, build_model
from results import append_section

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an hf_gpt model folder (default: build a random one)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def runner_of(folder: Path):
    """The export's own generate_onnx.py, imported from its folder."""
    spec = importlib.util.spec_from_file_location("generate_onnx", folder / "generate_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime
    import transformers
    from hf_gpt.conversion.onnx_file import export_onnx
    from transformers import AutoTokenizer

    from hf_gpt import HfGptForCausalLM
    from hf_gpt.machine import device_name

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source = Path(args.model) if args.model else build_model(scratch)
        model = HfGptForCausalLM.from_pretrained(source).float().eval()
        model.generation_config.eos_token_id = None  # both decode all the new tokens (the runner: eos_token_id=-1)
        prompt = AutoTokenizer.from_pretrained(source, trust_remote_code=True)(PROMPT)["input_ids"]
        export_onnx(str(source), str(scratch / "onnx"))
        generator = runner_of(scratch / "onnx").OnnxGenerator(scratch / "onnx", threads=args.threads)
        for batch in args.batch_sizes:
            ids = torch.tensor([prompt] * batch)
            new = {"max_new_tokens": args.new_tokens, "do_sample": False}
            with torch.no_grad():
                model.generate(ids, max_new_tokens=2, do_sample=False)  # warm-up
                started = time.perf_counter()
                expected = model.generate(ids, **new)
                torch_seconds = time.perf_counter() - started
            generator.generate([prompt] * batch, max_new_tokens=2)  # warm-up
            started = time.perf_counter()
            produced = generator.generate([prompt] * batch, max_new_tokens=args.new_tokens, eos_token_id=-1)
            onnx_seconds = time.perf_counter() - started
            agreement = greedy_agreement(model, expected.tolist(), produced.tolist(), len(prompt))
            rows.append((batch, agreement, onnx_seconds, torch_seconds))
            print(f"batch {batch}: greedy tokens equal for {agreement}; onnxruntime {onnx_seconds:.2f} s, "
                  f"PyTorch generate() {torch_seconds:.2f} s")  # fmt: skip

    description = (
        f"{device_name(torch.device('cpu'))}, {args.threads} threads; onnxruntime {onnxruntime.__version__}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{'model ' + args.model if args.model else 'random GPT-2 shape 6 x 256, context 256, std 0.3'}; "
        f"greedy, {len(prompt)}-token prompt, {args.new_tokens} new tokens, fp32"
    )
    columns = ["batch", "greedy tokens equal", "onnxruntime tok/s", "PyTorch generate() tok/s",
               "ratio (>1: onnxruntime faster)"]  # fmt: skip
    table = [
        [batch, agreement, f"{batch * args.new_tokens / o:.0f}", f"{batch * args.new_tokens / t:.0f}", f"{t / o:.2f}"]
        for batch, agreement, o, t in rows
    ]
    append_section(args.results, "onnx_decode", description, columns, table)


if __name__ == "__main__":
    main()
