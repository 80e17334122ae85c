"""What only a CUDA GPU can check; every test here skips without one. `benchmarks/gpu_run.sh` runs this file first.

Kernels in bf16 (sdpa against eager), the StaticDecoder's step captured in CUDA graphs, fused AdamW, a compiled
pretraining run killed and resumed, and FSDP2 through `accelerate launch` with the project's fsdp.yaml: wrapping,
sharded checkpoints, resume and the gathered final model. Commands run as `python -m hf_gpt.cli`, so a checkout on
PYTHONPATH is enough (the GPU machine has no `hf-gpt` script).
"""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import check_killed_and_resumed_like_whole, free_port, seeded, step_losses, tiny_config
from safetensors.torch import load_file
from test_decoding import NEW, PAD, prompts, reference
from test_training import prepared  # noqa: F401 (a fixture)
from transformers import AutoModelForCausalLM

import hf_gpt
from hf_gpt import HfGptForCausalLM
from hf_gpt.generation.static_decoder import StaticDecoder
from hf_gpt.train.optimization import make_optimizer, parameter_groups

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def pretrain_command(data, tokenizer_dir, output, *extra) -> list[str]:
    return [
        sys.executable, "-m", "hf_gpt.cli", "pretrain", str(data), "--tokenizer", str(tokenizer_dir),
        "--output", str(output), "--model", "gpt2-tiny", "--block-size", "32", "--batch-size", "8",
        "--warmup-steps", "3", "--eval-every", "10", "--eval-blocks", "4", "--log-every", "1", "--log-with", "none",
        "--set", "embd_pdrop=0", "--set", "attn_pdrop=0", "--set", "resid_pdrop=0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("preset", ["gpt1-tiny", "gpt2-tiny", "gpt3-tiny"])
def test_bf16_sdpa_kernels_are_as_accurate_as_eager_attention(preset):
    """Both in bf16, against the same model in fp32: sdpa's fused kernels must not lose more than eager does."""
    config = tiny_config(preset, pad_token_id=PAD)
    ids = torch.randint(2, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0)).to(CUDA)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # a left-padded row
    runs = {"fp32": ("eager", torch.float32), "eager": ("eager", torch.bfloat16), "sdpa": ("sdpa", torch.bfloat16)}
    logits = {}
    with torch.no_grad():
        for name, (attention, dtype) in runs.items():
            model = seeded(HfGptForCausalLM, config, attn_implementation=attention, dtype=dtype).to(CUDA)
            logits[name] = model(ids, attention_mask=mask).logits.float()[mask.bool()]
    error = {name: (logits[name] - logits["fp32"]).abs().mean().item() for name in ("eager", "sdpa")}
    assert error["sdpa"] <= 1.5 * error["eager"] + 1e-3, error
    for name in ("eager", "sdpa"):
        agree = (logits[name].argmax(-1) == logits["fp32"].argmax(-1)).float().mean().item()
        assert agree >= 0.9, f"bf16 {name}'s greedy tokens agree with fp32's at only {agree:.0%} of positions"


def test_the_static_decoder_step_runs_in_cuda_graphs():
    from torch._dynamo.utils import counters

    model = seeded(HfGptForCausalLM, tiny_config("gpt3-tiny", pad_token_id=PAD)).to(CUDA)
    ids = prompts(model.config, 2).to(CUDA)
    torch._dynamo.reset()
    counters.clear()
    decoder = StaticDecoder(model, 2, max_length=6 + NEW, compile=True)
    first, second = decoder.generate(ids, NEW), decoder.generate(ids, NEW)  # the second replays the graphs
    assert counters["inductor"]["cudagraph_skips"] == 0, "inductor skipped CUDA graphs (see its perf hints)"
    assert torch.equal(first, second) and torch.equal(first, reference(model, ids))


def test_training_steps_with_fused_adamw_like_the_unfused_one():
    model = seeded(HfGptForCausalLM, tiny_config()).to(CUDA).train()
    twin = copy.deepcopy(model)
    fused = make_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, CUDA)
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW(parameter_groups(twin, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=False)
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0)).to(CUDA)
    losses = {id(fused): [], id(plain): []}
    for _ in range(5):
        for m, optimizer in ((model, fused), (twin, plain)):
            loss = m(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[id(optimizer)].append(loss.item())
    # The losses, not the weights: the key bias's gradient is zero but for rounding, and Adam moves each weight by
    # about lr whatever its gradient's size, so those weights take rounding-decided steps in either optimizer.
    assert losses[id(fused)] == pytest.approx(losses[id(plain)], rel=1e-5)
    assert losses[id(fused)][-1] < losses[id(fused)][0]  # it trains


def test_compiled_pretraining_killed_and_resumed_ends_like_an_uninterrupted_run(
    tmp_path,
    prepared,  # noqa: F811 (the fixture imported above)
    trained_tokenizer_dir,
):
    steps = ["--max-steps", "30", "--save-every", "10", "--compile", "--mixed-precision", "no"]
    # CUDA's atomic adds (the embedding's gradient) make two runs differ in the last bits: not to 1e-6.
    check_killed_and_resumed_like_whole(
        lambda output: pretrain_command(prepared, trained_tokenizer_dir, output, *steps), tmp_path, 30, atol=1e-4
    )


def test_fsdp_on_one_gpu_shards_checkpoints_resumes_and_saves_a_whole_model(
    tmp_path,
    prepared,  # noqa: F811 (the fixture imported above)
    trained_tokenizer_dir,
):
    config = Path(hf_gpt.__file__).parent / "accelerate_configs" / "fsdp.yaml"
    steps = ["--max-steps", "30", "--save-every", "10", "--mixed-precision", "bf16"]

    def fsdp_command(output):
        launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(config),
                  "--num_processes", "1", "--main_process_port", str(free_port())]  # fmt: skip
        return launch + pretrain_command(prepared, trained_tokenizer_dir, output, *steps)[1:]

    whole, cut = check_killed_and_resumed_like_whole(fsdp_command, tmp_path, 30, atol=1e-3)
    checkpoint = cut / "checkpoints" / "step-00000030"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file(), sorted(p.name for p in checkpoint.iterdir())
    # The same run without FSDP (one plain process, bf16 autocast): the same losses to bf16's precision, and a
    # final folder with the same weights' names and shapes that loads and generates alike.
    single = tmp_path / "single"
    subprocess.run(pretrain_command(prepared, trained_tokenizer_dir, single, *steps), check=True, capture_output=True)
    sharded, plain = step_losses(whole), step_losses(single)
    assert sharded.keys() == plain.keys()
    for step in plain:
        assert sharded[step][0] == pytest.approx(plain[step][0], rel=2e-2), step
    a, b = (load_file(run / "model" / "model.safetensors") for run in (whole, single))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    models = [AutoModelForCausalLM.from_pretrained(run / "model").to(CUDA).eval() for run in (whole, single)]
    ids = torch.tensor([[5, 17, 42, 99]], device=CUDA)
    outputs = [m.generate(ids, max_new_tokens=16, do_sample=False) for m in models]
    agree = (outputs[0] == outputs[1]).float().mean().item()
    assert agree >= 0.5, f"FSDP's model and the plain one generate different text: {outputs}"
