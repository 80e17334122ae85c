"""Training-step speed: hf_gpt vs transformers' GPT2LMHeadModel, same shape, same weights, same card, same run.

    python benchmarks/training_step.py                 # CUDA: gpt2 (124M), seq 1024, batch 16, bf16 autocast
    python benchmarks/training_step.py --compile       # both models under torch.compile
On a CPU the default shape is gpt2 cut to 4 layers x 256 (GPT-2's vocabulary kept), seq 256, batch 4, fp32.
Forward + backward + AdamW step (fused on CUDA). Tokens/s, MFU (nanoGPT's 6N + 12·L·d·T FLOPs per token
over a bf16/fp32 matmul peak measured here), peak memory on CUDA. Appends a row to benchmarks/RESULTS.md.
"""

import argparse
import sys
from pathlib import Path

import torch
import transformers
from reference import benchmark_config, matched_pair, timed
from results import append_section

import hf_gpt
from hf_gpt.counting import count_parameters, flops_per_token
from hf_gpt.machine import device_name, measured_peak_flops

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2")
    parser.add_argument("--seq", type=int, default=1024 if cuda else 256)
    parser.add_argument("--batch", type=int, default=16 if cuda else 4)
    parser.add_argument("--steps", type=int, default=20 if cuda else 6, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3, help="the two models alternate this many times")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16" if cuda else "fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def make_step(model, batch, device, precision):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def main() -> int:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = benchmark_config(args.preset, device)
    ours, reference = matched_pair(config, device)
    models = {"hf_gpt": ours.train(), "GPT2LMHeadModel": reference.train()}
    batch = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    with torch.no_grad():  # same weights, same loss: the comparison is fair
        losses = [m(input_ids=batch, labels=batch).loss.item() for m in models.values()]
    assert abs(losses[0] - losses[1]) < 1e-3, losses
    steps = {}
    for name, model in models.items():
        if args.compile:
            model.forward = torch.compile(model.forward)
        steps[name] = make_step(model, batch, device, args.precision)
        for _ in range(3):  # warm-up: allocator, kernel selection, compilation
            steps[name]()
    seconds = dict.fromkeys(models, 0.0)
    memory = {}
    for _ in range(args.rounds):
        for name in models:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds[name] += timed(lambda name=name: [steps[name]() for _ in range(args.steps)], device)
            if device.type == "cuda":
                memory[name] = torch.cuda.max_memory_allocated(device) / 2**30
    tokens = args.batch * args.seq * args.steps * args.rounds
    flops = flops_per_token(config, count_parameters(ours, non_embedding=True), args.seq)
    peak = measured_peak_flops(device, torch.bfloat16 if args.precision == "bf16" else torch.float32, seconds=1.0)
    rows = []
    for name in models:
        rate = tokens / seconds[name]
        ratio = seconds["GPT2LMHeadModel"] / seconds[name]
        gib = f"{memory[name]:.2f}" if name in memory else "n/a"
        rows.append((name, rate, flops * rate / peak, gib, ratio))
    mode = "compiled" if args.compile else "eager"
    print(f"\n{'model':18} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}  ratio ({mode}, {args.precision})")
    for name, rate, mfu, gib, ratio in rows:
        print(f"{name:18} {rate:10,.0f} {mfu:6.1%} {gib:>9}  {ratio:.2f}")
    shape = (f"{config.num_hidden_layers} x {config.hidden_size}, vocab {config.vocab_size}, seq {args.seq}, "
             f"batch {args.batch}")  # fmt: skip
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, hf_gpt {hf_gpt.__version__}"
    description = (
        f"{device_name()}; {versions}\n\n{shape}; {mode}, {args.precision}; "
        f"MFU over a measured {peak / 1e12:.1f} TFLOP/s matmul peak"
    )
    columns = ["model", "tokens/s", "MFU", "peak GiB", "ratio (>1: hf_gpt faster)"]
    table = [[n, f"{r:,.0f}", f"{m:.1%}", g, f"{q:.2f}"] for n, r, m, g, q in rows]
    append_section(args.results, "training_step", description, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
