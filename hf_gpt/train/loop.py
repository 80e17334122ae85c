"""The one training loop, with Accelerate: pretraining and GPT-1 fine-tuning are its two drivers.

The same code runs on one CPU and under `accelerate launch` (DDP, FSDP, DeepSpeed). A run folder holds
everything one run makes:
    run.json        the arguments (checked on --resume)
    checkpoints/    step-00000100/ ... (Accelerate state and training_state.json; the last K kept)
    logs/           metrics.jsonl, and TensorBoard events when it is installed
    model/          the result: save_pretrained folder with tokenizer, generation config and model card
and whatever the driver makes on the way (pretraining's tokenizer/ and data/).

The batch size is global (examples per optimizer step, all processes together) so the same command gives the
same training on 1 or N processes: gradient accumulation makes up what the processes' micro batches do not
cover. The data order is a seeded permutation per epoch, indexed by sample position, so resuming (or changing
the number of processes) replays exactly the batches a run would have seen.

A driver subclasses `TrainingLoop` and says what is trained on what: `setup` (the data, tokenizer and anything
that can be refused, before any training), `make_model`, `loss`, `evaluate` and the model card. The loop does
the rest: accumulation, clipping, the schedule, the NaN guard, Ctrl-C, metrics, checkpoints, resume, and the
model folder.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..configuration_hf_gpt import PRESETS
from ..counting import count_parameters
from ..files import check_output_dir, read_json_object, write_record, write_text_atomic
from ..hub.model_folder import write_model_folder
from ..modeling_hf_gpt import values_checked
from ..options import option
from ..ranges import POSITIVE, POSITIVE_INT
from .checkpoints import latest_checkpoint, load_checkpoint, remove_unfinished, save_checkpoint
from .interrupts import StopRequest
from .metrics import MetricsLog, tracker_names
from .optimization import make_optimizer, make_scheduler

RUN_FILE = "run.json"
MIXED_PRECISION = ("no", "fp16", "bf16")
# Arguments that may differ when a run is resumed: they change what is logged or kept, not the training.
RESUMABLE_CHANGES = {"resume", "overwrite", "eval_every", "save_every", "keep_checkpoints", "log_every", "log_with"}


@dataclass(kw_only=True)
class TrainingOptions:
    """How a run trains and what it keeps, for `pretrain` and `finetune` alike (each field is also its flag, see
    `options`). A driver's arguments add what it trains on, and name in PATH_FIELDS the fields that are paths."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()

    output_dir: str = option(flag="--output", help="run folder")
    batch_size: int = option(32, range=POSITIVE_INT, help="examples (pretraining: sequences) per optimizer step, "
                             "all processes")  # fmt: skip
    micro_batch_size: int | None = option(
        None, range=POSITIVE_INT, help="examples per process and forward pass (accumulates the rest; default: "
        "batch_size / processes)",
    )  # fmt: skip
    max_grad_norm: float = option(1.0, range=POSITIVE, help="gradients are clipped to this global norm")
    mixed_precision: str | None = option(None, choices=MIXED_PRECISION, help="default: as `accelerate config` says")
    compile: bool = option(False, help="torch.compile the model")
    gradient_checkpointing: bool = option(False, help="recompute activations to save memory")
    save_every: int = option(500, range=POSITIVE_INT, help="steps between checkpoints (one is also saved at the end)")
    keep_checkpoints: int = option(2, range=POSITIVE_INT, help="newest checkpoints kept")
    log_every: int = option(10, range=POSITIVE_INT, help="steps between metrics lines")
    log_with: str = option("auto", help="auto (TensorBoard if installed), none, or an Accelerate tracker")
    resume: bool = option(False, help="continue from the newest checkpoint in OUTPUT")

    def to_json(self) -> dict:
        """As run.json records it: tuples as lists, and the paths made absolute, so that a resume from another
        working directory, or naming the folder another way, is still the same run."""
        values = json.loads(json.dumps(dataclasses.asdict(self)))
        values["output_dir"] = str(Path(self.output_dir).resolve())
        for name in self.PATH_FIELDS:
            value = values[name]
            values[name] = [absolute(p) for p in value] if isinstance(value, list) else absolute(value)
        return values

    def input_paths(self) -> list[str]:
        """The paths the run reads (which its output must not touch): files and folders, not preset names."""
        paths = []
        for name in self.PATH_FIELDS:
            value = getattr(self, name)
            paths += value if isinstance(value, list) else [value]
        return [p for p in paths if p is not None and p not in PRESETS]


def absolute(path: str | None) -> str | None:
    """An existing path as one absolute spelling; anything else (a preset name) as it is."""
    if path is None or path in PRESETS or not Path(path).exists():
        return path
    return str(Path(path).resolve())


def batch_shape(batch_size: int, micro_batch_size: int | None, num_processes: int) -> tuple[int, int]:
    """(micro batch per process, gradient accumulation steps) that make up the global batch exactly."""
    micro = micro_batch_size or max(1, batch_size // num_processes)
    per_pass = micro * num_processes
    if batch_size % per_pass:
        raise ValueError(
            f"batch_size {batch_size} is not a multiple of micro_batch_size {micro} x {num_processes} "
            f"processes = {per_pass}; choose sizes that divide it"
        )
    return micro, batch_size // per_pass


# ----------------------------------------------------------------------------------------------------------------
# The run folder.


def prepare_run_folder(args: TrainingOptions, accelerator: Accelerator) -> tuple[Path, bool]:
    """Create or reopen the run folder; refuse one that is not ours or whose arguments changed.
    Returns the folder and whether this run created it (rather than resuming in it)."""
    output = Path(args.output_dir)
    run_file = output / RUN_FILE
    resuming = args.resume and run_file.is_file()
    if accelerator.is_main_process:
        if resuming:
            earlier = read_json_object(run_file, "the run's arguments")
            changed = sorted(
                name
                for name, value in args.to_json().items()
                if name not in RESUMABLE_CHANGES and earlier.get(name) != value
            )
            if changed:
                raise ValueError(
                    f"cannot resume {output}: {', '.join(changed)} differ from the arguments it was started with "
                    f"(see {run_file}); start a new run folder instead"
                )
        else:
            check_output_dir(output, args.overwrite, kind=args.command, inputs=args.input_paths())
            if output.exists() and any(output.iterdir()):  # an earlier run of ours, replaced (--overwrite)
                shutil.rmtree(output)
            output.mkdir(parents=True, exist_ok=True)
            write_text_atomic(run_file, json.dumps(args.to_json(), indent=2) + "\n")
            # tokenizer/, data/ and model/ carry records of their own; checkpoints and logs grow as the run goes
            write_record(output, args.command, owned_folders=("checkpoints", "logs"))
    accelerator.wait_for_everyone()
    return output, not resuming


@contextlib.contextmanager
def run_folder(args: TrainingOptions, accelerator: Accelerator) -> Iterator[Path]:
    """The run folder, removed again if the setup inside the block fails: a refused run leaves nothing
    behind (a resumed run's folder is never removed)."""
    output, created = prepare_run_folder(args, accelerator)
    try:
        yield output
    except BaseException:
        if created and accelerator.is_main_process:
            shutil.rmtree(output, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------------------------
# The data order.


class SamplePositions(torch.utils.data.Sampler):
    """Dataset indices for global sample positions [start, stop): epoch e is a permutation seeded by seed + e.

    Position p always maps to the same example, whatever the number of processes or where a run resumed.
    """

    def __init__(self, num_samples: int, seed: int, start: int, stop: int):
        self.num_samples, self.seed, self.start, self.stop = num_samples, seed, start, stop
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return (self.sample(position) for position in range(self.start, self.stop))

    def sample(self, position: int) -> int:
        epoch = position // self.num_samples
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.num_samples, generator=generator).tolist()}  # one at a time
        return self._orders[epoch][position % self.num_samples]


def private_generator() -> torch.Generator:
    """For DataLoaders, which draw a seed at every iteration: from the global generator, that would shift
    the dropout masks of every later step, and a resumed run would no longer match an uninterrupted one."""
    return torch.Generator().manual_seed(0)


# ----------------------------------------------------------------------------------------------------------------
# The loop.


@dataclass
class Progress:
    """The data position, counters and validation history, saved in every checkpoint."""

    step: int = 0
    train_seconds: float = 0.0
    evaluations: list[dict[str, float]] = dataclasses.field(default_factory=list)  # {"step": N, ...scores}


class TrainingDiverged(RuntimeError):
    """The loss, or the weights, became NaN or infinite."""


class TrainingLoop(abc.ABC):
    """One run: the driver's `setup` inside the run folder's guard, then `run()`.

    A driver sets, in `setup`: `tokenizer`, `train_data` (a map-style dataset whose batches it has checked on the
    CPU: the loop runs them under `values_checked`), `max_steps`, `warmup_steps`, and optionally `collate`,
    `decay` and `final_lr_ratio` (the schedule's shape)."""

    description = "training"  # the progress bar's label
    collate: Callable | None = None
    decay, final_lr_ratio = "cosine", 0.1

    def __init__(self, args: TrainingOptions):
        args.check()
        self.args = args
        logs = Path(args.output_dir) / "logs"
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision, log_with=tracker_names(args.log_with), project_dir=str(logs)
        )
        # Known only now: how many processes share the batch.
        self.micro_batch, accumulation = batch_shape(
            args.batch_size, args.micro_batch_size, self.accelerator.num_processes
        )
        self.accelerator.gradient_accumulation_steps = accumulation
        with run_folder(args, self.accelerator) as self.output:  # checks that fail remove a new run folder
            self.setup()
        self.metrics = MetricsLog(logs / "metrics.jsonl", enabled=self.accelerator.is_main_process)

    # What a driver provides ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def setup(self) -> None:
        """Read and check the inputs; set the attributes the class docstring lists."""

    @abc.abstractmethod
    def make_model(self) -> torch.nn.Module:
        """The model to train, under the run's seed."""

    @abc.abstractmethod
    def loss(self, batch: dict[str, torch.Tensor], step_inputs: dict[str, Any]) -> torch.Tensor:
        """The loss of one micro batch (`step_inputs`: what `step_inputs()` said for the whole step)."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """Validation scores (called only where `eval_due` says)."""

    @abc.abstractmethod
    def eval_due(self, step: int) -> bool:
        """Whether to evaluate after `step` (the last step included, when there is validation data)."""

    @abc.abstractmethod
    def card(self, evaluation: dict[str, float], interrupted: bool):
        """The model card of the result."""

    def step_inputs(self) -> dict[str, Any]:
        """Model inputs the same for every micro batch of the coming step (e.g. its loss normaliser)."""
        return {}

    def throughput(self, seconds: float) -> tuple[dict[str, float], dict[str, str]]:
        """The step's speed: (values to log, the same as the progress bar shows them)."""
        per_second = self.args.batch_size / seconds
        return {"examples_per_second": per_second}, {"ex/s": f"{per_second:,.1f}"}

    def describe(self, scores: dict[str, float]) -> str:
        """Validation scores in words."""
        return ", ".join(f"{name} {value:.4f}" for name, value in scores.items())

    def model_files(self, evaluation: dict[str, float]) -> dict[str, str]:
        """Extra files for the model folder, by name."""
        return {}

    def summary(self) -> str:
        """The line printed before training."""
        return ""

    # The loop --------------------------------------------------------------------------------------------------

    def build_model(self) -> None:
        args = self.args
        set_seed(args.seed)  # the same initial weights on every process and every run
        model = self.make_model()
        if args.gradient_checkpointing:
            enable_activation_checkpointing(model)
        if args.compile:
            model.compile()  # in place: no wrapper module, so parameter names stay the model's own
        self.num_parameters = count_parameters(model)
        optimizer = make_optimizer(
            model, args.learning_rate, args.weight_decay, args.adam_betas, args.adam_eps, self.accelerator.device
        )
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        # Not prepared: Accelerate would step it once per process (see make_scheduler).
        self.scheduler = make_scheduler(
            self.optimizer, self.warmup_steps, self.max_steps, self.final_lr_ratio, decay=self.decay
        )
        self.progress = Progress()
        self.order = self.positions(0, self.max_steps)  # the whole run's data order, for `step_samples`

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

    def positions(self, start_step: int, stop_step: int) -> SamplePositions:
        batch = self.args.batch_size
        return SamplePositions(len(self.train_data), self.args.seed, start_step * batch, stop_step * batch)

    def step_samples(self) -> list[int]:
        """The dataset indices of the coming step, all processes together."""
        start = self.progress.step * self.args.batch_size
        return [self.order.sample(position) for position in range(start, start + self.args.batch_size)]

    def train_loader(self) -> torch.utils.data.DataLoader:
        """The batches still to come, from the current step on, sharded over processes by Accelerate."""
        loader = torch.utils.data.DataLoader(
            self.train_data,
            batch_size=self.micro_batch,
            sampler=self.positions(self.progress.step, self.max_steps),
            collate_fn=self.collate,
            pin_memory=self.accelerator.device.type == "cuda",
            generator=private_generator(),
        )
        return self.accelerator.prepare(loader)

    def train_step(self, batches: Iterator[dict], stop: StopRequest) -> tuple[float, float | None, bool]:
        """One optimizer step over the accumulated micro batches.

        Returns the mean loss over all processes, the gradient norm, and whether any process was asked
        to stop (Ctrl-C), so that all of them stop after the same step.
        """
        accelerator, total, grad_norm = self.accelerator, torch.zeros((), device=self.accelerator.device), None
        accumulation = accelerator.gradient_accumulation_steps
        step_inputs = self.step_inputs()
        for _ in range(accumulation):
            batch = next(batches)
            with accelerator.accumulate(self.model):
                with values_checked():  # the driver checked its batches on the CPU: no device read here
                    loss = self.loss(batch, step_inputs)
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
                        raise TrainingDiverged(
                            f"the loss is {mean_loss} at step {self.progress.step + 1} of {self.max_steps}"
                        )
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return mean_loss, grad_norm, stopping > 0

    def run(self) -> Path:
        """Train (or finish a resumed run); returns the model folder, OUTPUT/model."""
        args, accelerator = self.args, self.accelerator
        self.build_model()
        self.resume()
        if self.progress.step >= self.max_steps:  # resumed after the last step: nothing left to train
            model_dir = self.finish_completed_run()
            self.close()
            return model_dir
        accelerator.init_trackers("hf_gpt", config={k: str(v) for k, v in args.to_json().items()})
        accelerator.print(
            f"{self.num_parameters:,} parameters; {self.summary()}batch {args.batch_size} = {self.micro_batch} x "
            f"{accelerator.num_processes} processes x {accelerator.gradient_accumulation_steps} accumulation; "
            f"{self.max_steps} steps"
        )
        self.bar = tqdm(
            total=self.max_steps,
            initial=self.progress.step,
            desc=self.description,
            disable=not accelerator.is_local_main_process,
        )
        batches = iter(self.train_loader())
        self.model.train()
        with StopRequest() as stop:
            try:
                while self.progress.step < self.max_steps:
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
            model_dir = self.save_model(self.last_evaluation(), interrupted=stopping)
        self.close()
        if stopping:
            raise KeyboardInterrupt
        return model_dir

    def close(self) -> None:
        """Release the prepared model, optimizer and loaders, then close the trackers and the process group. In that
        order: a DDP model freed after its gloo process group was destroyed can wait forever in the group's
        destructor (seen with two CPU processes, once the run was over)."""
        self.model = self.optimizer = self.scheduler = self.val = None
        self.accelerator.free_memory()
        self.accelerator.end_training()

    def after_step(self, loss: float, lr: float, grad_norm: float | None, seconds: float, stopping: bool) -> None:
        """Count, show, log, evaluate and checkpoint, each on its own schedule (and a checkpoint on Ctrl-C)."""
        args, progress = self.args, self.progress
        progress.step += 1
        progress.train_seconds += seconds
        step, (speed, shown) = progress.step, self.throughput(seconds)
        self.bar.update(1)
        self.bar.set_postfix({"loss": f"{loss:.4f}", "lr": f"{lr:.2e}", **shown}, refresh=False)
        if step % args.log_every == 0 or step == 1:
            self.log(step, {"loss": loss, "lr": lr, "grad_norm": grad_norm, **speed})
        if self.eval_due(step):
            self.record_evaluation()
        if step % args.save_every == 0 or step == self.max_steps or stopping:
            save_checkpoint(
                self.accelerator, self.output / "checkpoints", step, args.keep_checkpoints, self.training_state()
            )

    def record_evaluation(self) -> None:
        """Evaluate, keep the scores in the run's history (and its checkpoints), log and show them."""
        step, scores = self.progress.step, self.evaluate()
        self.progress.evaluations.append({"step": step, **scores})
        self.log(step, scores)
        if self.accelerator.is_local_main_process:
            tqdm.write(f"step {step}: {self.describe(scores)}")  # above the progress bar, when there is one

    def last_evaluation(self) -> dict[str, float]:
        """The newest validation scores (without their step), or {}."""
        if not self.progress.evaluations:
            return {}
        return {k: v for k, v in self.progress.evaluations[-1].items() if k != "step"}

    def log(self, step: int, values: dict[str, Any]) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        self.accelerator.log(values, step=step)
        self.metrics.write(step, values)

    def finish_completed_run(self) -> Path:
        """A run killed after its last checkpoint but before writing its model, or resumed once more when done:
        write the model from the final weights unless it is already there."""
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
        evaluated = self.progress.evaluations and self.progress.evaluations[-1]["step"] == self.progress.step
        if not evaluated and self.eval_due(self.progress.step):  # a checkpoint from before they were kept in it
            self.record_evaluation()
        return self.save_model(self.last_evaluation())

    def save_model(self, evaluation: dict[str, float], interrupted: bool = False) -> Path:
        """The usable result: a save_pretrained folder with tokenizer, generation config and card."""
        accelerator = self.accelerator
        state_dict = accelerator.get_state_dict(self.model)  # gathered whole under FSDP / DeepSpeed
        target = self.output / "model"
        check_finite(accelerator, state_dict, target)
        if accelerator.is_main_process:
            write_model_folder(
                accelerator.unwrap_model(self.model), target, kind=self.args.command, overwrite=True,
                tokenizer=self.tokenizer, card=self.card(evaluation, interrupted), state_dict=state_dict,
                files=self.model_files(evaluation),
            )  # fmt: skip
            scores = f" ({self.describe(evaluation)})" if evaluation else ""
            accelerator.print(f"model saved to {target}{scores}")
        accelerator.wait_for_everyone()
        return target


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """transformers 5.24 renamed gradient checkpointing (the old name warns); 5.17 has only the old name."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_finite(accelerator: Accelerator, state_dict: dict[str, torch.Tensor], target: Path) -> None:
    """Refuse to save non-finite weights: a finite loss can still step them to inf (a huge learning rate)."""
    names = [n for n, t in state_dict.items() if not torch.isfinite(t).all()] if accelerator.is_main_process else []
    (names,) = broadcast_object_list([names])  # the main process holds the whole state dict; all raise together
    if names:
        raise TrainingDiverged(
            f"{len(names)} weight tensors are not finite after training (first: {names[0]}); nothing was written to "
            f"{target} (a learning rate too high, or non-finite weights to start from?)"
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
