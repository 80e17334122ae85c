"""Greedy decoding speed: hf_gpt vs transformers' GPT2LMHeadModel, same shape, same weights, same card, same run.

    python benchmarks/generation_speed.py                       # transformers' default generate() (dynamic cache)
    python benchmarks/generation_speed.py --static-compile      # static cache + torch.compile (CUDA graphs on GPU)
    python benchmarks/generation_speed.py --fast                # hf_gpt's StaticDecoder vs the default generate()
A 32-token prompt, 256 new tokens (64 on a CPU, at the cut-down CPU shape), batch 1 and batch 32 (8 on a CPU).
The generated tokens must be equal: exactly in fp32; in bf16 a first difference is accepted only where the
reference's top two logits nearly tie (reported). Appends a row to benchmarks/RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers
from reference import benchmark_config, matched_pair, timed
from results import append_section

import hf_gpt
from hf_gpt.generation.static_decoder import StaticDecoder
from hf_gpt.machine import device_name

ROOT = Path(__file__).resolve().parent.parent
NEAR_TIE = 1e-2  # logits closer than this may swap order under different bf16 kernels


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256 if cuda else 64)
    parser.add_argument("--batches", default="1,32" if cuda else "1,8")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")
    parser.add_argument("--rounds", type=int, default=3, help="timed generations per model, alternating")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--static-compile", action="store_true", help="static cache + torch.compile")
    mode.add_argument(
        "--fast",
        action="store_true",
        help="hf_gpt decodes with StaticDecoder (compiled step, CUDA graphs on GPU); the reference with its "
        "default generate() (dynamic cache), the baseline the issue's targets are stated against",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def first_difference(ours: torch.Tensor, reference: torch.Tensor) -> tuple[int, int] | None:
    """(row, position) of the first token where the two generations differ, else None."""
    different = (ours != reference).nonzero()
    if len(different) == 0:
        return None
    row, position = min(different.tolist(), key=lambda rc: rc[1])
    return row, position


def near_tie(model, tokens: torch.Tensor, row: int, position: int) -> float:
    """Gap between the reference's two best logits where the generations part."""
    with torch.no_grad():
        logits = model(tokens[row : row + 1, :position]).logits[0, -1].float()
    top = logits.topk(2).values
    return (top[0] - top[1]).item()


@torch.no_grad()
def timed_generate(generate, prompt: torch.Tensor, options: dict, device: torch.device) -> tuple[torch.Tensor, float]:
    """`generate` is a model's generate method, or a StaticDecoder's (which takes the same options)."""
    mask = torch.ones_like(prompt)
    result = []
    seconds = timed(lambda: result.append(generate(prompt, attention_mask=mask, **options)), device)
    return result[0], seconds


def static_decoder_generate(model, batch_size: int, args: argparse.Namespace):
    """StaticDecoder's generate with generate()'s options; compiled, so it warms up on a whole generation."""
    decoder = StaticDecoder(model, batch_size, args.prompt + args.new_tokens, compile=True)

    def generate(prompt, attention_mask, max_new_tokens, min_new_tokens, pad_token_id, do_sample):
        # generate() keeps the config's EOS, suppressed for min_new_tokens: the same here, so tokens match.
        return decoder.generate(
            prompt, max_new_tokens, attention_mask=attention_mask, do_sample=do_sample,
            eos_token_id=model.config.eos_token_id, pad_token_id=pad_token_id, min_new_tokens=min_new_tokens,
        )  # fmt: skip

    return generate


def mode_text(args: argparse.Namespace, device: torch.device) -> str:
    if args.fast:
        graphs = ", CUDA graphs" if device.type == "cuda" else ""
        return f"hf_gpt StaticDecoder (compiled step{graphs}) vs GPT2LMHeadModel default generate (dynamic cache)"
    return "static cache + compile" if args.static_compile else "default generate (dynamic cache)"


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    config = benchmark_config(args.preset, device)
    ours, reference = matched_pair(config, device)
    models = {"hf_gpt": ours.to(dtype).eval(), "GPT2LMHeadModel": reference.to(dtype).eval()}
    options = dict(do_sample=False, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)
    if args.static_compile:
        options["cache_implementation"] = "static"
        for model in models.values():
            model.forward = torch.compile(model.forward, mode="reduce-overhead")
    rows, notes = [], []
    for batch_size in (int(b) for b in args.batches.split(",")):
        prompt = torch.randint(0, config.vocab_size, (batch_size, args.prompt), device=device,
                               generator=torch.Generator(device).manual_seed(batch_size))  # fmt: skip
        outputs, seconds = {}, {}
        generates = {name: model.generate for name, model in models.items()}
        if args.fast:
            generates["hf_gpt"] = static_decoder_generate(models["hf_gpt"], batch_size, args)
        # Warm-up: kernels and allocation; compiled models run the whole generation once, so that every
        # graph they need (prefill and decoding) is compiled before the clock starts.
        short = {**options, "max_new_tokens": 4, "min_new_tokens": 4}
        working = []
        for name, generate in generates.items():
            compiled = args.static_compile or (args.fast and name == "hf_gpt")
            try:
                timed_generate(generate, prompt, options if compiled else short, device)
                working.append(name)
            except Exception as e:  # the reference's static-cache path has crashed on CUDA: report, don't hide
                notes.append(f"{name} batch {batch_size} failed: {type(e).__name__}: {str(e)[:200]}")
        for _ in range(args.rounds):  # the models alternate, so drifting machine load hits both alike
            for name in working:
                outputs[name], spent = timed_generate(generates[name], prompt, options, device)
                seconds[name] = seconds.get(name, 0.0) + spent
        if len(outputs) == 2:
            place = first_difference(outputs["hf_gpt"], outputs["GPT2LMHeadModel"])
            if place is not None:
                gap = near_tie(models["GPT2LMHeadModel"], outputs["GPT2LMHeadModel"], *place)
                message = (
                    f"batch {batch_size}: first difference at row {place[0]}, token {place[1]}, top-2 gap {gap:.3g}"
                )
                if args.precision == "fp32" or gap > NEAR_TIE:
                    raise AssertionError(f"generations differ ({message}), not at a near-tie")
                notes.append(message)
        for name in models:
            if name in seconds:
                rate = batch_size * args.new_tokens * args.rounds / seconds[name]
                ratio = seconds["GPT2LMHeadModel"] / seconds[name] if "GPT2LMHeadModel" in seconds else float("nan")
                rows.append((batch_size, name, rate, ratio))
    mode = mode_text(args, device)
    print(f"\n{'batch':>5} {'model':18} {'tokens/s':>10}  ratio ({mode}, {args.precision})")
    for batch_size, name, rate, ratio in rows:
        print(f"{batch_size:5} {name:18} {rate:10,.1f}  {ratio:.2f}")
    for note in notes:
        print("note:", note)
    shape = f"{config.num_hidden_layers} x {config.hidden_size}, vocab {config.vocab_size}"
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, hf_gpt {hf_gpt.__version__}"
    # The notes (near-tie differences, failed models) go in the description: append_section ends with the table.
    description = (
        f"{device_name()}; {versions}\n\n{shape}; greedy, {args.prompt}-token prompt, {args.new_tokens} new tokens; "
        f"{mode}, {args.precision}; generated tokens equal{' (see notes)' if notes else ''}"
        + "".join(f"\n\nnote: {n}" for n in notes)
    )
    columns = ["batch", "model", "tokens/s", "ratio (>1: hf_gpt faster)"]
    table = [[b, n, f"{r:,.1f}", f"{q:.2f}"] for b, n, r, q in rows]
    append_section(args.results, "generation_speed", description, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
