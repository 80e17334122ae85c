"""Quality of a stated pretraining config on tinyshakespeare, in nats per character.

The last 10% of the characters is the validation set (as in nanoGPT's shakespeare_char), the tokenizer
is trained on the first 90% only, and the loss is reported per character (token loss x tokens /
characters) so it compares with character-level models: nanoGPT reports 1.47 for its GPU config
(6 x 384, a few minutes on an A100) and about 1.88 for its small CPU config.

    python benchmarks/shakespeare_quality.py [--max-steps 2000] [--data ../shared/data/tinyshakespeare.txt]

Appends a row to benchmarks/RESULTS.md. Uses the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from results import append_section

from hf_gpt.machine import device_name

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--mixed-precision", default="no")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    import transformers

    import hf_gpt
    from hf_gpt.data.tokenizer import train_bpe_tokenizer
    from hf_gpt.data.tokens import prepare_data
    from hf_gpt.train.pretraining import pretrain

    text = args.data.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    with tempfile.TemporaryDirectory(prefix="shakespeare-") as work:
        work = Path(work)
        (work / "train.txt").write_text(text[:cut], encoding="utf-8")
        (work / "val.txt").write_text(text[cut:], encoding="utf-8")
        started = time.perf_counter()
        tokenizer = train_bpe_tokenizer([work / "train.txt"], args.vocab_size, work / "tokenizer")
        prepare_data([work / "train.txt"], tokenizer, work / "data", val_inputs=[work / "val.txt"])
        dropout = {name: args.dropout for name in ("embd_pdrop", "attn_pdrop", "resid_pdrop")}
        shape = {"num_hidden_layers": args.layers, "hidden_size": args.width, "num_attention_heads": args.heads}
        pretrain(
            output_dir=str(work / "run"),
            data=[str(work / "data")],
            tokenizer=str(work / "tokenizer"),
            model="gpt2-tiny",
            model_overrides={**shape, **dropout, "max_position_embeddings": args.block_size},
            block_size=args.block_size,
            batch_size=args.batch_size,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            warmup_steps=min(100, args.max_steps // 10),
            eval_every=max(1, args.max_steps // 4),
            eval_blocks=None,  # the whole validation set
            save_every=args.max_steps,
            keep_checkpoints=1,
            log_every=50,
            log_with="none",
            mixed_precision=args.mixed_precision,
        )
        wall = time.perf_counter() - started
        log = [json.loads(line) for line in (work / "run" / "logs" / "metrics.jsonl").read_text().splitlines()]
        final = [m for m in log if "val_nats_per_char" in m][-1]
        trained = max(m["tokens"] for m in log if "tokens" in m)
        parameters = sum(
            p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(work / "run" / "model").parameters()
        )

    config = (
        f"{args.layers} layers x {args.width}, {args.heads} heads, {parameters / 1e6:.2f}M parameters, "
        f"BPE vocab {args.vocab_size}, block {args.block_size}, batch {args.batch_size}, {args.max_steps} steps "
        f"({trained / 1e6:.1f}M tokens), lr {args.learning_rate:g}, dropout {args.dropout:g}, "
        f"precision {args.mixed_precision}"
    )
    print(f"\nval loss {final['val_loss']:.4f} nats/token = {final['val_nats_per_char']:.4f} nats/char in {wall:.0f} s")
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, hf_gpt {hf_gpt.__version__}"
    description = f"{device_name()}; {versions}\n\n{config}; last 10% of tinyshakespeare.txt as validation"
    table = [
        ["hf_gpt (this run, tokenizer + data + training)", f"{final['val_nats_per_char']:.3f}", f"{wall:.0f} s"],
        ["nanoGPT shakespeare_char, CPU config (published)", "about 1.88", "a few minutes on a laptop CPU"],
        ["nanoGPT shakespeare_char, GPU config (published)", "1.47", "about 3 minutes on one A100"],
    ]
    append_section(args.results, "shakespeare_quality", description, ["what", "val nats/char", "wall time"], table)


if __name__ == "__main__":
    sys.exit(main())
