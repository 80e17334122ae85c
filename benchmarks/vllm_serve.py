"""vLLM serves hf_gpt models: a native folder through vLLM's Transformers backend, and the GPT-2 export natively.

    pip install vllm                       # a CUDA GPU machine with network access to the package registry
    python benchmarks/vllm_serve.py [--model FOLDER] [--new-tokens 128]
    python benchmarks/vllm_serve.py --dry-run   # on a CPU: builds the folders and the reference tokens only

vLLM runs a transformers model that keeps the attention-interface contract through its Transformers backend
(`model_impl="transformers"`), custom code included: hf_gpt's folder runs there without conversion. For each
of (a) the native hf_gpt folder with the Transformers backend and (b) its GPT-2 export with vLLM's own GPT-2, the
script generates greedily (temperature 0, no early stop) for the same prompts, compares the tokens with the
model's generate() on the same GPU, and times batch 1 and batch 64. Rows go to benchmarks/RESULTS.md.
Without --model it uses a GPT-2-small shape (12 x 768, context 1024) with random weights at GPT-2's scale and
a small tokenizer trained on the benchmark scripts, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from export_common import build_random_model, greedy_agreement
from results import append_section

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["def main(", "The quick brown fox", "import torch\n", "Once upon a time"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an hf_gpt model folder (default: build a random GPT-2-small shape)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dry-run", action="store_true", help="build and check what can be without vLLM or a GPU")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def reference_tokens(folder: Path, prompts: list[list[int]], new_tokens: int, dtype: str):
    """The model, and generate()'s greedy sequence (prompt + new tokens) for each prompt, one at a time (no padding),
    on the GPU when there is one. The model is kept to measure the top-2 margin where vLLM's tokens part."""
    from hf_gpt import HfGptForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = HfGptForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).to(device).eval()
    model.generation_config.eos_token_id = None  # as vLLM's ignore_eos: every row decodes all its tokens
    out = []
    with torch.no_grad():
        for ids in prompts:
            generated = model.generate(torch.tensor([ids], device=device), max_new_tokens=new_tokens, do_sample=False)
            out.append(generated[0].tolist())
    return model, out


def serve(folder: Path, prompts, expected, reference, args, **engine) -> list[tuple[int, str, float]]:
    """(batch, greedy_agreement with generate() over all prompts, seconds) per batch size."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(folder), dtype=args.dtype, trust_remote_code=True, seed=0, **engine)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    first = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompts], greedy, use_tqdm=False)
    produced = [ids + list(o.outputs[0].token_ids) for ids, o in zip(prompts, first, strict=True)]
    agree = greedy_agreement(reference, expected, produced, [len(ids) for ids in prompts])
    rows = []
    for batch in args.batch_sizes:
        requests = [TokensPrompt(prompt_token_ids=prompts[i % len(prompts)]) for i in range(batch)]
        torch.cuda.synchronize()
        started = time.perf_counter()
        llm.generate(requests, greedy, use_tqdm=False)
        torch.cuda.synchronize()
        rows.append((batch, agree, time.perf_counter() - started))
    del llm
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    args = parse_args()
    from hf_gpt.conversion.gpt2 import export_gpt2
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        native = Path(args.model) if args.model else build_random_model(scratch, 1024)  # GPT-2 small's shape
        exported = export_gpt2(str(native), str(scratch / "gpt2"))
        tokenizer = AutoTokenizer.from_pretrained(exported)  # plain GPT-2 class: no custom code
        prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
        reference, expected = reference_tokens(native, prompts, args.new_tokens, args.dtype)
        print(f"reference: {len(prompts)} prompts, {args.new_tokens} greedy tokens each ({native}, {exported})")
        if args.dry_run:
            print("dry run: vLLM not started (it needs a CUDA GPU)")
            return
        runs = {
            "hf_gpt folder, vLLM Transformers backend": serve(
                native, prompts, expected, reference, args, model_impl="transformers"
            ),
            "GPT-2 export, vLLM native GPT-2": serve(exported, prompts, expected, reference, args),
        }

    import transformers
    import vllm

    from hf_gpt.machine import device_name

    description = (
        f"{device_name(torch.device('cuda'))}; vllm {vllm.__version__}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {args.model or 'random GPT-2-small shape (12 x 768)'}, "
        f"{args.dtype}; greedy, {args.new_tokens} new tokens per request, no early stop"
    )
    columns = ["served as", "batch", "tokens equal to generate() (worst prompt)", "tokens/s"]
    table = [
        [name, batch, agree, f"{batch * args.new_tokens / seconds:,.0f}"]
        for name, rows in runs.items()
        for batch, agree, seconds in rows
    ]
    append_section(args.results, "vllm_serve", description, columns, table)


if __name__ == "__main__":
    main()
