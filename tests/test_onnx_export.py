"""ONNX export: onnxruntime runs our shapes (GPT-1, GPT-2, GPT-3 local layers) with a KV cache, and the shipped
runner, without torch or hf_gpt, generates generate()'s greedy tokens."""

import json
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import WITHOUT_HF_GPT, seeded, tiny_config
from hf_gpt.conversion.onnx_file import export_onnx

from hf_gpt import HfGptForCausalLM

SHAPES = {
    "gpt2": ("gpt2-tiny", {}),
    "gpt1": ("gpt1-tiny", {}),  # post-norm
    "gpt3": ("gpt3-tiny", {"local_window": 4}),  # a local layer whose band is shorter than the inputs
}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def exported(request, tmp_path_factory, trained_tokenizer):
    preset, overrides = SHAPES[request.param]
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    config = tiny_config(preset, vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, **overrides)
    model = seeded(HfGptForCausalLM, config)  # wide weights (std 0.5): logits in the tens
    model.save_pretrained(folder / "ours")
    trained_tokenizer.save_pretrained(folder / "ours")
    export_onnx(str(folder / "ours"), str(folder / "onnx"))
    return model, folder / "onnx"


def run_step(session, ids, mask, past):
    names = [i.name for i in session.get_inputs()][2:]
    outputs = session.run(None, {"input_ids": ids, "attention_mask": mask, **dict(zip(names, past, strict=True))})
    return outputs[0], outputs[1:]


def test_onnxruntime_gives_our_logits_with_and_without_a_cache(exported):
    model, folder = exported
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    settings = json.loads((folder / "onnx_config.json").read_text())
    ids = torch.randint(1, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits.numpy()
    real = mask.bool().numpy()
    empty = [np.zeros((3, settings["num_heads"], 0, settings["head_size"]), np.float32)] * (2 * settings["num_layers"])
    # The whole sequence at once, then the same split in a prefill of 7 and steps of 3, 1 and 1 tokens.
    logits, _ = run_step(session, ids.numpy(), mask.numpy(), empty)
    np.testing.assert_allclose(logits[real], expected[real], rtol=1e-4, atol=1e-4)
    past, start, pieces = empty, 0, []
    for new in (7, 3, 1, 1):
        piece, past = run_step(session, ids[:, start : start + new].numpy(), mask[:, : start + new].numpy(), past)
        pieces.append(piece)
        start += new
    np.testing.assert_allclose(np.concatenate(pieces, axis=1)[real], expected[real], rtol=1e-4, atol=1e-4)
    assert past[0].shape == (3, settings["num_heads"], 12, settings["head_size"])


def test_the_runner_generates_our_greedy_tokens_without_torch_or_hf_gpt(exported):
    model, folder = exported
    prompts = [[5, 17, 42, 8, 99], [7, 3]]  # a left-padded batch
    script = f"""
import json, sys
sys.modules["torch"] = None  # the runner must not need it
sys.path.insert(0, {str(folder)!r})
from generate_onnx import OnnxGenerator
print(json.dumps(OnnxGenerator({str(folder)!r}).generate({prompts}, max_new_tokens=12).tolist()))
"""
    done = subprocess.run([sys.executable, "-c", WITHOUT_HF_GPT + script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    produced = json.loads(done.stdout.strip().splitlines()[-1])
    ids = torch.tensor([prompts[0], [0] * 3 + prompts[1]])
    mask = torch.tensor([[1] * 5, [0] * 3 + [1] * 2])
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert produced == expected.tolist()
    assert len(set(expected[0, 5:].tolist())) > 2  # wide weights: greedy decoding does not repeat one token


def test_the_commands_export_onnx(tmp_path, trained_tokenizer):
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0)
    seeded(HfGptForCausalLM, config).save_pretrained(tmp_path / "ours")
    trained_tokenizer.save_pretrained(tmp_path / "ours")
    done = subprocess.run([sys.executable, "-m", "hf_gpt.cli", "convert", "onnx", "export", str(tmp_path / "ours"),
                           str(tmp_path / "onnx")], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"converted {tmp_path / 'ours'} -> {tmp_path / 'onnx'}" in done.stdout
    run = subprocess.run([sys.executable, str(tmp_path / "onnx" / "generate_onnx.py"), str(tmp_path / "onnx"),
                          "the quick", "--max-new-tokens", "5"], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("the quick")
