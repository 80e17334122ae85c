"""Shared fixtures: tiny models and a tiny byte-level BPE tokenizer, built here (no downloads)."""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_gpt import HfGptConfig

TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "It was the best of times, it was the worst of times.",
    "Entailment, contradiction and neutral are the three labels of natural language inference.",
    "GPT models are decoders with learned absolute position embeddings.",
] * 4


# Prepended to a script run in a fresh interpreter: `import hf_gpt` then fails, as on a machine without it.
WITHOUT_HF_GPT = """
import importlib.abc, sys

class NoHfGpt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hf_gpt":
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NoHfGpt())
try:
    import hf_gpt
    raise SystemExit("hf_gpt is importable: the test would prove nothing")
except ModuleNotFoundError:
    pass
"""


def tiny_config(preset: str = "gpt2-tiny", **overrides) -> HfGptConfig:
    """A tiny preset without dropout, so two forwards of the same input agree exactly.

    Its weights start wide (std 0.5): with GPT-2's 0.02 a tiny random model repeats one token whatever
    came before, and such output would hide a cache or position bug.
    """
    no_dropout = {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "classifier_dropout": 0.0}
    return HfGptConfig.from_preset(preset, **{**no_dropout, "initializer_range": 0.5, **overrides})


def free_port() -> int:
    """A TCP port nothing listens on, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_two_cpu_processes(cli_arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`hf-gpt ARGUMENTS` under `accelerate launch` on two CPU processes (gloo), from `cwd` (so the installed
    hf_gpt runs, not a source folder)."""
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    launch = [
        accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "hf_gpt.cli",
    ]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "true"}
    # A time limit, so that a process group that hangs fails the test instead of holding up the whole suite.
    return subprocess.run(launch + cli_arguments, env=environment, capture_output=True, text=True, cwd=cwd, timeout=600)


def check_two_processes_train_like_one(command_for, tmp_path: Path, steps: int) -> tuple[Path, Path]:
    """Run `command_for(output)` (an `hf-gpt` command line) as one process and on two CPU processes, with the same
    global batch of 8: the same per-step losses and learning rates (the schedule not sped up), and nearly the same
    final weights. Returns the two run folders."""
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run(command_for(single), check=True, capture_output=True)
    done = run_on_two_cpu_processes(command_for(double)[1:], tmp_path)
    assert done.returncode == 0, done.stderr[-8000:]
    assert "batch 8 = 4 x 2 processes x 1 accumulation" in done.stdout  # really two processes
    one, two = step_losses(single), step_losses(double)
    assert one.keys() == two.keys() == set(range(1, steps + 1))
    for step in one:
        assert two[step][0] == pytest.approx(one[step][0], rel=1e-4)
        assert two[step][1] == pytest.approx(one[step][1], rel=1e-9)
    a, b = (load_file(run / "model" / "model.safetensors") for run in (single, double))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-3, atol=1e-4, msg=name)
    return single, double


def check_killed_and_resumed_like_whole(
    command_for, tmp_path: Path, steps: int, atol: float = 1e-6
) -> tuple[Path, Path]:
    """Run `command_for(output)` (an `hf-gpt` command line that checkpoints every 10 steps) whole, and again killed
    with SIGKILL once its step-20 checkpoint exists and then resumed: the same weights (within `atol`) and the same
    logged losses and learning rates. Returns the two run folders."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(command_for(whole), check=True, capture_output=True)
    # In a session of its own, so that a launcher (accelerate launch) is killed with the processes it started.
    process = subprocess.Popen(
        command_for(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_for(cut / "checkpoints" / "step-00000020", process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (cut / "model").exists()  # it was stopped mid-way
    assert max(m["step"] for m in run_metrics(cut)) < steps

    resumed = subprocess.run([*command_for(cut), "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "step-000000" in resumed.stdout
    a, b = (load_file(run / "model" / "model.safetensors") for run in (whole, cut))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=atol, msg=name)
    # The resumed run logged the same losses for the steps it replayed and the ones after.
    expected = step_losses(whole)
    for step, (loss, lr) in step_losses(cut).items():
        assert loss == pytest.approx(expected[step][0], abs=atol) and lr == pytest.approx(expected[step][1])
    return whole, cut


def device_reads_of_a_step(loop) -> tuple[list[str], tuple[float, float, bool]]:
    """Run one training step of a `TrainingLoop` (hf_gpt.train.loop) and list every read of a tensor's values back
    to Python (a host sync on a GPU) but the CPU's own (the data order, torch's CPU optimizer step counter);
    returns the reads and the step's (loss, grad norm, stopping)."""
    from hf_gpt.train.interrupts import StopRequest

    loop.build_model()
    loader = iter(loop.train_loader())
    # Read ahead: the data loader's own CPU bookkeeping aside.
    batches = iter([next(loader) for _ in range(loop.accelerator.gradient_accumulation_steps)])
    reads = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            code = sys._getframe(1).f_code
            caller = f"{code.co_filename.replace(os.sep, '/')}:{code.co_name}"
            if not any(place in caller for place in CPU_BOOKKEEPING):
                reads.append(name)
            return original(self, *args, **kwargs)

        return read

    with StopRequest() as stop, pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
            patch.setattr(torch.Tensor, name, counted(name))
        result = loop.train_step(batches, stop)
    return reads, result


# Code that reads CPU tensors even when training on a GPU: torch's optimizers (their step counter) and the data
# order (a permutation made on the CPU, read once an epoch).
CPU_BOOKKEEPING = ("torch/optim/", "hf_gpt/train/loop.py:sample")


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until `path` exists (a run's checkpoint, say), failing if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.01)


def run_metrics(run: Path) -> list[dict]:
    """A training run folder's logs/metrics.jsonl."""
    return [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]


def step_losses(run: Path) -> dict[int, tuple[float, float]]:
    """{step: (loss, learning rate)} of a training run."""
    return {m["step"]: (m["loss"], m["lr"]) for m in run_metrics(run) if "loss" in m}


def seeded(model_class, config, seed: int = 0, **kwargs):
    """A model in eval mode whose weights depend only on the seed (the config is copied, not shared)."""
    torch.manual_seed(seed)
    return model_class._from_config(copy.deepcopy(config), **kwargs).eval()


@pytest.fixture
def fresh_accelerate_state():
    """After the test, forget Accelerate's process-wide state: the next Accelerator starts as in a new process."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(TEXT, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<pad>"
    )


@pytest.fixture(params=["gpt2-tiny", "gpt1-tiny", "gpt3-tiny"])
def preset(request) -> str:
    """Every family: pre-norm, post-norm (GPT-1) and alternating global/local attention (GPT-3)."""
    return request.param


# Pieces of many kinds, so trained merges cross letters, digits, punctuation, scripts and whitespace.
VARIED = (
    "the",
    "The",
    "don't",
    "we'll",
    "they're",
    "I've",
    "she'd",
    "it's",
    "'s",
    "café",
    "cafe\u0301",
    "naïve",
    "日本語",
    "中文",
    "한국어",
    "Ελληνικά",
    "русский",
    "עברית",
    "العربية",
    "😀",
    "👩‍💻",
    "🇫🇷",
    "1234",
    "3.14",
    "٣٤",
    "Ⅻ",
    "x=y+1;",
    "def f(a):",
    "<|endoftext|>",
    "\u00a0",
    "\u3000",
    "\t",
    "\r\n",
    "\n\n",
    "   ",
    "  ",
    "...",
    "!?",
    "«»",
    "—",
    "\x00",
    "\x1b[0m",
    "\u200b",
    "e.g.",
    "http://example.com/a?b=c",
)


def varied_text(seed: int, words: int) -> str:
    """Deterministic text mixing English words with every kind of piece in VARIED."""
    import random

    rng = random.Random(seed)
    english = TEXT[0].split() + TEXT[1].split() + TEXT[2].split()
    parts = [rng.choice(VARIED) if rng.random() < 0.3 else rng.choice(english) for _ in range(words)]
    return "".join(p + rng.choice([" ", " ", " ", "", "\n", ", "]) for p in parts)


@pytest.fixture(scope="session")
def trained_tokenizer_dir(tmp_path_factory):
    """A tokenizer trained with our own trainer on varied text, saved as a folder."""
    from hf_gpt.data.tokenizer import train_bpe_tokenizer

    corpus = tmp_path_factory.mktemp("corpus") / "varied.txt"
    corpus.write_text("\n".join(varied_text(seed, 400) for seed in range(20)), encoding="utf-8")
    output = tmp_path_factory.mktemp("tokenizers") / "varied"
    train_bpe_tokenizer([corpus], 700, output, special_tokens=["<|sep|>"], show_progress=False)
    return output


@pytest.fixture(scope="session")
def trained_tokenizer(trained_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(trained_tokenizer_dir)


def pytest_configure(config):
    # Marks that transformers' own tests (test_transformers_conformance.py) put on theirs.
    for mark in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "is_training_test",
                 "torch_compile_test"):  # fmt: skip
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' own tests")
