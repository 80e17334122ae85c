"""llama.cpp runs hf_gpt's GGUF export: the same token ids and the same greedy tokens as PyTorch, and its speed.

    pip install llama-cpp-python   # builds llama.cpp from source (minutes): why this is not a CI test
    python benchmarks/gguf_llama_cpp.py [--model FOLDER] [--new-tokens 64]

Without --model it builds a GPT-2-shaped model (6 x 256, context 256) with wide random weights (std 0.3: greedy
decoding then wanders instead of repeating one token) and a GPT-2-style tokenizer trained on these scripts. It
exports the model with `hf-gpt convert gguf export` in each --outtypes and loads every file in llama.cpp
(through llama-cpp-python). Checked: llama.cpp's tokenizer gives our ids for a mixed text (its pre-tokenizer
comes from the file's `tokenizer.ggml.pre = "gpt-2"`), and greedy decoding gives our tokens (how many agree is
reported: rounded types part at near-ties). Then greedy decoding at batch 1 is timed in both, with the same
threads, and the rows go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from export_common import greedy_agreement

ROOT = Path(__file__).resolve().parent.parent
TEXT = "naïve café — 東京 🙂 the quick  brown\tfox, it's 1234 <|endoftext|> done"
PROMPT = "def parse_args() -> argparse.Namespace:"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an hf_gpt model folder (default: build a random one)")
    parser.add_argument("--outtypes", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def build_model(folder: Path) -> Path:
    """A GPT-2-shaped model, 6 x 256 with context 256, wide random weights (std 0.3: greedy decoding then wanders
    instead of repeating one token)."""
    from export_common import build_random_model

    shape = {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "max_position_embeddings": 256}
    return build_random_model(folder, 512, initializer_range=0.3, **shape)


def torch_greedy(model, ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    prompt = torch.tensor([ids])
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False)  # warm-up
        started = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        seconds = time.perf_counter() - started
    return out[0, len(ids) :].tolist(), seconds


def llama_greedy(llm, ids: list[int], new_tokens: int) -> tuple[list[int], float]:
    llm.reset()
    started = time.perf_counter()
    tokens = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        tokens.append(token)
        if len(tokens) == new_tokens:
            break
    return tokens, time.perf_counter() - started


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    import llama_cpp
    from hf_gpt.conversion.gguf_file import export_gguf
    from transformers import AutoTokenizer

    from hf_gpt import HfGptForCausalLM
    from hf_gpt.machine import device_name

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        source = Path(args.model) if args.model else build_model(scratch)
        model = HfGptForCausalLM.from_pretrained(source).float().eval()
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
        ours_text_ids = tokenizer(TEXT)["input_ids"]
        prompt_ids = tokenizer(PROMPT)["input_ids"]
        expected, torch_seconds = torch_greedy(model, prompt_ids, args.new_tokens)
        with torch.no_grad():
            our_logits = model(torch.tensor([prompt_ids + expected])).logits[0]
        rows = []
        for outtype in args.outtypes:
            path = export_gguf(str(source), str(scratch / f"gguf-{outtype}"), outtype=outtype)
            # An f32 file gets an f32 KV cache too (llama.cpp's default is f16, which shows in the logits).
            cache = {"type_k": 0, "type_v": 0} if outtype == "f32" else {}
            llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=model.config.max_position_embeddings, n_threads=args.threads,
                n_batch=64, logits_all=True, verbose=False, **cache,
            )  # fmt: skip
            llama_ids = llm.tokenize(TEXT.encode("utf-8"), add_bos=False, special=True)
            same_ids = llama_ids == ours_text_ids
            llm.eval(expected_sequence := prompt_ids + expected)  # logits at every position of our greedy text
            difference = float(abs(torch.tensor(llm.scores[: len(expected_sequence)]) - our_logits).max())
            tokens, seconds = llama_greedy(llm, prompt_ids, args.new_tokens)
            agree = greedy_agreement(model, [expected_sequence], [prompt_ids + tokens], len(prompt_ids))
            rows.append((outtype, same_ids, difference, agree, seconds))
            speeds = f"{args.new_tokens / seconds:.0f} tok/s (PyTorch: {args.new_tokens / torch_seconds:.0f})"
            print(f"{outtype}: token ids {'equal' if same_ids else 'DIFFER'}; largest logit difference "
                  f"{difference:.3g}; greedy tokens equal: {agree}; {speeds}")  # fmt: skip
            if not same_ids:
                print(f"  text ids, ours: {ours_text_ids}\n  llama.cpp: {llama_ids}")

    import transformers
    from results import append_section

    description = (
        f"{device_name(torch.device('cpu'))}, {args.threads} threads; llama-cpp-python {llama_cpp.__version__}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{'model ' + args.model if args.model else 'random GPT-2 shape 6 x 256, context 256, std 0.3'}; "
        f"greedy, batch 1, {len(prompt_ids)}-token prompt, {args.new_tokens} new tokens"
    )
    columns = [
        "GGUF type",
        "llama.cpp token ids = ours",
        "largest logit difference (largest logit)",
        "greedy tokens equal",
        "llama.cpp tok/s",
        "PyTorch generate() tok/s",
        "ratio (>1: llama.cpp faster)",
    ]
    scale = float(our_logits.abs().max())
    table = [
        [t, "yes" if same else "no", f"{difference:.3g} (of {scale:.1f})", agree, f"{args.new_tokens / s:.0f}",
         f"{args.new_tokens / torch_seconds:.0f}", f"{torch_seconds / s:.2f}"]
        for t, same, difference, agree, s in rows
    ]  # fmt: skip
    append_section(args.results, "gguf_llama_cpp", description, columns, table)


if __name__ == "__main__":
    main()
