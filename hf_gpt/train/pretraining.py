"""Pretraining with Accelerate: the same code on one CPU and under `accelerate launch` (DDP, FSDP, DeepSpeed).

A run folder holds everything one run makes:
    run.json        the arguments (checked on --resume)
    tokenizer/      trained here when no tokenizer was given
    data/           prepared here when raw text was given
    checkpoints/    step-00000100/ ... (Accelerate state and training_state.json; the last K kept)
    logs/           metrics.jsonl, and TensorBoard events when it is installed
    model/          the result: save_pretrained folder with tokenizer, generation config and model card

The batch size is global (sequences per optimizer step, all processes together) so the same command
gives the same training on 1 or N processes: gradient accumulation makes up what the processes' micro
batches do not cover. The data order is a seeded permutation per epoch, indexed by sample position,
so resuming (or changing the number of processes) replays exactly the batches a run would have seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..counting import count_parameters, flops_per_token
from ..hub.cards import render_card
from ..hub.model_folder import write_model_folder
from ..machine import device_name, measured_peak_flops
from ..modeling_hf_gpt import HfGptForCausalLM, values_checked
from .checkpoints import latest_checkpoint, load_checkpoint, remove_unfinished, save_checkpoint
from .interrupts import StopRequest
from .metrics import MetricsLog, tracker_names
from .optimization import make_optimizer, make_scheduler
from .pretraining_setup import (
    PretrainArguments,
    batch_shape,
    block_size_for,
    build_config,
    load_blocks,
    prepare_inputs,
    run_folder,
)


@dataclass
class Progress:
    """The data position and counters, saved in every checkpoint."""

    step: int = 0
    train_seconds: float = 0.0


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class SamplePositions(torch.utils.data.Sampler):
    """Block indices for global sample positions [start, stop): epoch e is a permutation seeded by seed + e.

    Position p always maps to the same block, whatever the number of processes or where a run resumed.
    """

    def __init__(self, num_blocks: int, seed: int, start: int, stop: int):
        self.num_blocks, self.seed, self.start, self.stop = num_blocks, seed, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        epoch, order = None, None
        for position in range(self.start, self.stop):
            if position // self.num_blocks != epoch:
                epoch = position // self.num_blocks
                order = torch.randperm(self.num_blocks, generator=torch.Generator().manual_seed(self.seed + epoch))
            yield int(order[position % self.num_blocks])


# ----------------------------------------------------------------------------------------------------------------
# Training.


class Trainer:
    """One pretraining run; `pretrain()` is the entry point."""

    def __init__(self, args: PretrainArguments):
        args.check()
        self.args = args
        logs = Path(args.output_dir) / "logs"
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision, log_with=tracker_names(args.log_with), project_dir=str(logs)
        )
        # Known only now: how many processes share the batch.
        self.micro_batch, accumulation = batch_shape(args, self.accelerator.num_processes)
        self.accelerator.gradient_accumulation_steps = accumulation
        with run_folder(args, self.accelerator) as self.output:  # checks that fail remove a new run folder
            self.tokenizer, self.data_dir = prepare_inputs(args, self.output, self.accelerator)
            self.config = build_config(args.model, args.model_overrides, self.tokenizer)
            self.block_size = block_size_for(args, self.config)
            self.tokens_per_step = args.batch_size * self.block_size
            self.train_blocks, self.val_blocks = load_blocks(
                self.data_dir, self.tokenizer, self.block_size, args.batch_size
            )
        self.metrics = MetricsLog(logs / "metrics.jsonl", enabled=self.accelerator.is_main_process)

    def build_model(self) -> None:
        set_seed(self.args.seed)  # the same initial weights on every process and every run
        model = HfGptForCausalLM(self.config)
        if self.args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.args.compile:
            model.compile()  # in place: no wrapper module, so parameter names stay the model's own
        self.num_parameters = count_parameters(model)
        self.flops_per_token = flops_per_token(
            self.config, count_parameters(model, non_embedding=True), self.block_size
        )
        args = self.args
        optimizer = make_optimizer(
            model, args.learning_rate, args.weight_decay, args.adam_betas, args.adam_eps, self.accelerator.device
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Not prepared: Accelerate would step it once per process (see make_scheduler).
        self.scheduler = make_scheduler(self.optimizer, args.warmup_steps, args.max_steps, args.final_lr_ratio)
        self.progress = Progress()

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint holds besides Accelerate's state: plain JSON values, nothing to unpickle."""
        return {"progress": dataclasses.asdict(self.progress), "scheduler": self.scheduler.state_dict()}

    def resume(self) -> None:
        checkpoints = self.output / "checkpoints"
        if self.accelerator.is_main_process:
            remove_unfinished(checkpoints)
        latest = latest_checkpoint(checkpoints) if self.args.resume else None
        if latest is not None:
            state = load_checkpoint(self.accelerator, latest)
            try:
                self.progress = Progress(**state["progress"])
                self.scheduler.load_state_dict(state["scheduler"])
            except (KeyError, TypeError) as e:
                raise ValueError(f"{latest} holds a training state this version cannot read ({e!r})") from None
            self.accelerator.print(f"resumed from {latest} (step {self.progress.step})")

    def train_loader(self) -> torch.utils.data.DataLoader:
        """The batches still to come, from the current step on, sharded over processes by Accelerate."""
        start, stop = self.progress.step * self.args.batch_size, self.args.max_steps * self.args.batch_size
        sampler = SamplePositions(len(self.train_blocks), self.args.seed, start, stop)
        loader = torch.utils.data.DataLoader(
            self.train_blocks,
            batch_size=self.micro_batch,
            sampler=sampler,
            pin_memory=self.accelerator.device.type == "cuda",
            generator=private_generator(),
        )
        return self.accelerator.prepare(loader)

    def val_loader(self) -> torch.utils.data.DataLoader | None:
        if self.val_blocks is None:
            return None
        count = (
            len(self.val_blocks) if self.args.eval_blocks is None else min(self.args.eval_blocks, len(self.val_blocks))
        )
        self.val_characters = sum(len(self.tokenizer.decode(self.val_blocks[i]["shift_labels"])) for i in range(count))
        subset = torch.utils.data.Subset(self.val_blocks, range(count))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.micro_batch, generator=private_generator())
        return self.accelerator.prepare(loader)

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Mean token loss over the validation blocks, perplexity, and nats per character."""
        self.model.eval()
        losses = []
        for batch in loader:
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

    def train_step(self, batches: Iterator[dict], stop: StopRequest) -> tuple[float, float | None, bool]:
        """One optimizer step over the accumulated micro batches.

        Returns the mean loss over all processes, the gradient norm, and whether any process was asked
        to stop (Ctrl-C), so that all of them stop after the same step.
        """
        accelerator, total, grad_norm = self.accelerator, torch.zeros((), device=self.accelerator.device), None
        accumulation = accelerator.gradient_accumulation_steps
        for _ in range(accumulation):
            batch = next(batches)
            with accelerator.accumulate(self.model):
                with values_checked():  # TokenBlocks checked the token ids on the CPU: no device read here
                    loss = self.model(input_ids=batch["input_ids"], shift_labels=batch["shift_labels"]).loss
                accelerator.backward(loss)
                total += loss.detach() / accumulation
                if accelerator.sync_gradients:
                    stopping = torch.tensor(float(stop.requested), device=total.device)
                    mean_loss, stopping = accelerator.reduce(torch.stack([total, stopping]), "mean")
                    norm = accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
                    # The step's one read from the device, before the update, so a NaN never reaches the weights
                    # or a checkpoint (clipping only scaled the gradients).
                    values = [mean_loss, stopping] if norm is None else [mean_loss, stopping, norm.float()]
                    mean_loss, stopping, *grad_norm = torch.stack(values).tolist()
                    grad_norm = grad_norm[0] if grad_norm else None
                    if not math.isfinite(mean_loss):
                        raise TrainingDiverged(f"the loss is {mean_loss} at step {self.progress.step + 1}")
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return mean_loss, grad_norm, stopping > 0

    def run(self) -> Path:
        args, accelerator = self.args, self.accelerator
        self.build_model()
        self.resume()
        if self.progress.step >= args.max_steps:  # resumed after the last step: nothing left to train
            model_dir = self.finish_completed_run()
            accelerator.end_training()
            return model_dir
        accelerator.init_trackers("hf_gpt", config={k: str(v) for k, v in args.to_json().items()})
        self.val = self.val_loader()
        precision = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision, torch.float32)
        self.peak = args.peak_tflops * 1e12 if args.peak_tflops else measured_peak_flops(accelerator.device, precision)
        accelerator.print(
            f"{self.num_parameters:,} parameters, {len(self.train_blocks)} training blocks of "
            f"{self.block_size} tokens; "
            f"batch {args.batch_size} = {self.micro_batch} x {accelerator.num_processes} processes x "
            f"{accelerator.gradient_accumulation_steps} accumulation; {args.max_steps} steps"
        )
        self.bar = tqdm(
            total=args.max_steps,
            initial=self.progress.step,
            desc="pretraining",
            disable=not accelerator.is_local_main_process,
        )
        batches = iter(self.train_loader())
        self.model.train()
        self.last_eval: dict[str, float] = {}
        with StopRequest() as stop:
            try:
                while self.progress.step < args.max_steps:
                    started = time.perf_counter()
                    lr = self.scheduler.get_last_lr()[0]
                    loss, grad_norm, stopping = self.train_step(batches, stop)
                    self.after_step(loss, lr, grad_norm, time.perf_counter() - started, stopping)
                    if stopping:
                        break
            except TrainingDiverged as e:
                latest = latest_checkpoint(self.output / "checkpoints")
                kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was saved before it"
                raise TrainingDiverged(f"{e}; training stopped, {kept}") from None
            finally:
                self.bar.close()  # before any message: an error (a checkpoint not saved) gets a line of its own
            if stopping:
                accelerator.print(f"interrupted at step {self.progress.step}: saved a checkpoint and the model")
            model_dir = self.save_model(self.last_eval, interrupted=stopping)
        accelerator.end_training()  # closes the trackers, and the process group: last
        if stopping:
            raise KeyboardInterrupt
        return model_dir

    def after_step(self, loss: float, lr: float, grad_norm: float | None, seconds: float, stopping: bool) -> None:
        """Count, show, log, evaluate and checkpoint, each on its own schedule (and a checkpoint on Ctrl-C)."""
        args, accelerator, progress = self.args, self.accelerator, self.progress
        progress.step += 1
        progress.train_seconds += seconds
        step, tokens_per_second = progress.step, self.tokens_per_step / seconds
        mfu = self.flops_per_token * tokens_per_second / (self.peak * accelerator.num_processes)
        self.bar.update(1)
        shown = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_second:,.0f}", "mfu": f"{mfu:.1%}"}
        self.bar.set_postfix(shown, refresh=False)
        if step % args.log_every == 0 or step == 1:
            values = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": step * self.tokens_per_step}
            self.log(step, {**values, "tokens_per_second": tokens_per_second, "mfu": mfu})
        last = step == args.max_steps
        if self.val is not None and (step % args.eval_every == 0 or last):
            self.last_eval = self.evaluate(self.val)
            self.log(step, self.last_eval)
            if accelerator.is_local_main_process:
                self.bar.write(
                    f"step {step}: val loss {self.last_eval['val_loss']:.4f}, "
                    f"perplexity {self.last_eval['val_perplexity']:.2f}, "
                    f"{self.last_eval['val_nats_per_char']:.4f} nats/char"
                )
        if step % args.save_every == 0 or last or stopping:
            save_checkpoint(
                accelerator, self.output / "checkpoints", step, args.keep_checkpoints, self.training_state()
            )

    def log(self, step: int, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        self.accelerator.log(values, step=step)
        self.metrics.write(step, values)

    def finish_completed_run(self) -> Path:
        """A run killed after its last checkpoint but before writing its model, or resumed once more when done:
        write the model from the final weights (evaluating once, for the card) unless it is already there."""
        accelerator, target = self.accelerator, self.output / "model"
        state_dict = accelerator.get_state_dict(self.model)  # gathered whole under FSDP / DeepSpeed
        # A model saved on an earlier Ctrl-C is there too, but holds older weights.
        written = [accelerator.is_main_process and holds_weights(target, state_dict)]
        broadcast_object_list(written)  # the main process decides, so that all evaluate or none
        if written[0]:
            accelerator.print(f"{self.output} is complete ({self.progress.step} steps): the model is in {target}")
            return target
        accelerator.print(
            f"{self.output} finished training, but its final model was not written: writing it from the last checkpoint"
        )
        val = self.val_loader()
        return self.save_model({} if val is None else self.evaluate(val))

    def save_model(self, evaluation: dict[str, float], interrupted: bool = False) -> Path:
        """The usable result: a save_pretrained folder with tokenizer, generation config and card."""
        accelerator = self.accelerator
        state_dict = accelerator.get_state_dict(self.model)  # gathered whole under FSDP / DeepSpeed
        target = self.output / "model"
        if accelerator.is_main_process:
            model = accelerator.unwrap_model(self.model)
            card = self.card(evaluation, interrupted)
            write_model_folder(
                model, target, kind=self.args.command, overwrite=True, tokenizer=self.tokenizer, card=card,
                state_dict=state_dict,
            )  # fmt: skip
            scores = f" (validation perplexity {evaluation['val_perplexity']:.2f})" if evaluation else ""
            accelerator.print(f"model saved to {target}{scores}")
        accelerator.wait_for_everyone()
        return target

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


def holds_weights(model_dir: Path, state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the saved model in `model_dir` has exactly these weights (tied copies are saved once)."""
    index = model_dir / "model.safetensors.index.json"
    try:
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        saved = {name: tensor for file in files for name, tensor in load_file(model_dir / file).items()}
    except (OSError, ValueError, KeyError, SafetensorError):  # missing, partly deleted or unreadable
        return False
    return bool(saved) and all(
        name in state_dict and torch.equal(tensor, state_dict[name].cpu()) for name, tensor in saved.items()
    )


def private_generator() -> torch.Generator:
    """For DataLoaders, which draw a seed at every iteration: from the global generator, that would shift
    the dropout masks of every later step, and a resumed run would no longer match an uninterrupted one."""
    return torch.Generator().manual_seed(0)


def pretrain(args: PretrainArguments | None = None, **kwargs) -> Path:
    """Train a GPT from scratch; returns the folder of the trained model (`OUTPUT/model`)."""
    return Trainer(args or PretrainArguments(**kwargs)).run()
