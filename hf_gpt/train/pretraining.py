"""Pretraining: the training loop's driver that trains a GPT from scratch on packed token blocks.

Its run folder (see `loop`) also holds what it makes on the way: tokenizer/ (trained when none was given) and
data/ (prepared when raw text was given).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from ..counting import count_parameters, flops_per_token
from ..hub.cards import render_card
from ..machine import device_name, measured_peak_flops
from ..modeling_hf_gpt import HfGptForCausalLM, values_checked
from .loop import TrainingLoop, private_generator
from .pretraining_setup import PretrainArguments, block_size_for, build_config, load_blocks, prepare_inputs


class Pretraining(TrainingLoop):
    """One pretraining run; `pretrain()` is the entry point."""

    description = "pretraining"

    def setup(self) -> None:
        args = self.args
        self.tokenizer, self.data_dir = prepare_inputs(args, self.output, self.accelerator)
        self.config = build_config(args.model, args.model_overrides, self.tokenizer)
        self.block_size = block_size_for(args, self.config)
        self.tokens_per_step = args.batch_size * self.block_size
        self.train_data, self.val_blocks = load_blocks(self.data_dir, self.tokenizer, self.block_size, args.batch_size)
        self.max_steps, self.warmup_steps, self.final_lr_ratio = args.max_steps, args.warmup_steps, args.final_lr_ratio
        self.val = None  # the validation loader, made at the first evaluation

    def make_model(self) -> HfGptForCausalLM:
        model = HfGptForCausalLM(self.config)
        self.flops_per_token = flops_per_token(
            self.config, count_parameters(model, non_embedding=True), self.block_size
        )
        return model

    @functools.cached_property
    def peak(self) -> float:
        """Per-device peak FLOP/s for MFU: given, or measured once (at the first step, not for a finished run)."""
        if self.args.peak_tflops:
            return self.args.peak_tflops * 1e12
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.accelerator.mixed_precision, torch.float32)
        return measured_peak_flops(self.accelerator.device, precision)

    def summary(self) -> str:
        return f"{len(self.train_data)} training blocks of {self.block_size} tokens; "

    def loss(self, batch, step_inputs) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], shift_labels=batch["shift_labels"]).loss

    def throughput(self, seconds: float) -> tuple[dict[str, float], dict[str, str]]:
        tokens_per_second = self.tokens_per_step / seconds
        mfu = self.flops_per_token * tokens_per_second / (self.peak * self.accelerator.num_processes)
        logged = {
            "tokens": self.progress.step * self.tokens_per_step,
            "tokens_per_second": tokens_per_second,
            "mfu": mfu,
        }
        return logged, {"tok/s": f"{tokens_per_second:,.0f}", "mfu": f"{mfu:.1%}"}

    def eval_due(self, step: int) -> bool:
        return self.val_blocks is not None and (step % self.args.eval_every == 0 or step == self.max_steps)

    def val_loader(self) -> torch.utils.data.DataLoader:
        count = (
            len(self.val_blocks) if self.args.eval_blocks is None else min(self.args.eval_blocks, len(self.val_blocks))
        )
        self.val_characters = sum(len(self.tokenizer.decode(self.val_blocks[i]["shift_labels"])) for i in range(count))
        subset = torch.utils.data.Subset(self.val_blocks, range(count))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.micro_batch, generator=private_generator())
        return self.accelerator.prepare(loader)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean token loss over the validation blocks, perplexity, and nats per character."""
        self.val = self.val or self.val_loader()
        self.model.eval()
        losses = []
        for batch in self.val:
            with values_checked():  # checked by TokenBlocks, as in training
                logits = self.model(input_ids=batch["input_ids"]).logits
            per_token = torch.nn.functional.cross_entropy(
                logits.float().flatten(0, 1), batch["shift_labels"].flatten(), reduction="none"
            )
            losses.append(self.accelerator.gather_for_metrics(per_token.view(len(logits), -1).mean(1)))
        self.model.train()
        scores = torch.cat(losses)
        loss = scores.mean().item()
        return {
            "val_loss": loss,
            "val_perplexity": math.exp(min(loss, 700.0)),
            "val_nats_per_char": scores.sum().item() * self.block_size / self.val_characters,
        }

    def describe(self, scores: dict[str, float]) -> str:
        return (
            f"val loss {scores['val_loss']:.4f}, perplexity {scores['val_perplexity']:.2f}, "
            f"{scores['val_nats_per_char']:.4f} nats/char"
        )

    def card(self, evaluation: dict[str, float], interrupted: bool):
        args, accelerator = self.args, self.accelerator
        hardware = f"{accelerator.num_processes} x {device_name(accelerator.device)}"
        training = [
            ("Data", ", ".join(Path(p).name for p in args.data)),
            ("Tokens seen", f"{self.progress.step * self.tokens_per_step:,}"),
            ("Steps", f"{self.progress.step} of {args.max_steps}" + (" (interrupted)" if interrupted else "")),
            ("Batch", f"{args.batch_size} sequences x {self.block_size} tokens"),
            (
                "Optimizer",
                f"AdamW, lr {args.learning_rate:g}, warmup {args.warmup_steps}, cosine to "
                f"{args.final_lr_ratio:g}x, weight decay {args.weight_decay:g}",
            ),
            ("Precision", accelerator.mixed_precision),
            ("Hardware", hardware),
            ("Training time", f"{self.progress.train_seconds:.0f} s"),
        ]
        results = (
            [
                ("Validation loss", f"{evaluation['val_loss']:.4f} nats/token"),
                ("Validation perplexity", f"{evaluation['val_perplexity']:.2f}"),
                ("Validation nats per character", f"{evaluation['val_nats_per_char']:.4f}"),
            ]
            if evaluation
            else []
        )
        return render_card(
            self.config,
            self.num_parameters,
            model_name=Path(args.output_dir).name,
            summary="A GPT-style decoder trained from scratch with hf_gpt.",
            model_path=str(self.output / "model"),
            training=training,
            evaluation=results,
            small_data=self.progress.step * self.tokens_per_step < 100_000_000,
            scores=[(f"{self.data_dir.name} (validation split)", "perplexity", round(evaluation["val_perplexity"], 4))]
            if evaluation
            else [],
        )


def pretrain(args: PretrainArguments | None = None, **kwargs) -> Path:
    """Train a GPT from scratch; returns the folder of the trained model (`OUTPUT/model`)."""
    return Pretraining(args or PretrainArguments(**kwargs)).run()
