"""GGUF export: the file llama.cpp runs, read back by transformers' own GGUF loader (not by our code)."""

import copy
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
import torch
from conftest import seeded, tiny_config
from hf_gpt.conversion.gguf_file import export_gguf
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_gpt import HfGptForCausalLM

TEXT = "naïve café — 東京 🙂 <|endoftext|> the quick  brown\tfox"
REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ours(tmp_path_factory, trained_tokenizer):
    """A small GPT-2-shaped hf_gpt folder with wide weights (std 0.5: rounding shows in the logits) and a tokenizer."""
    folder = tmp_path_factory.mktemp("gguf") / "ours"
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, pad_token_id=0)
    seeded(HfGptForCausalLM, config).save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


def load_back(path: Path, context: int):
    # transformers' GGUF loader reads gpt2's context_length into n_ctx but not n_positions (its default is 1024).
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, n_positions=context)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def stored(model: HfGptForCausalLM, outtype: str) -> HfGptForCausalLM:
    """`model` with its matrices rounded as the file stores them (vectors and the position table stay f32)."""
    kinds = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}  # fmt: skip
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if parameter.ndim == 2 and "wpe" not in name:
                data = parameter.numpy()
                again = gguf.quants.dequantize(gguf.quants.quantize(data, kinds[outtype]), kinds[outtype])
                parameter.copy_(torch.from_numpy(again.reshape(data.shape)))
    return rounded


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_transformers_reads_the_gguf_file_back_with_our_logits_and_tokens(ours, tmp_path, outtype):
    path = export_gguf(str(ours), str(tmp_path / "gguf"), outtype=outtype)
    assert path == tmp_path / "gguf" / f"model-{outtype}.gguf"
    model = HfGptForCausalLM.from_pretrained(ours).eval()
    theirs, tokenizer = load_back(path, model.config.max_position_embeddings)
    assert type(theirs).__name__ == "GPT2LMHeadModel"
    expected = model if outtype == "f32" else stored(model, outtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, expected(ids).logits, rtol=0, atol=1e-4)
        if outtype != "f32":  # the rounding is real: the test would see a file that kept f32
            assert (theirs(ids).logits - model(ids).logits).abs().max() > 1e-3
    source = AutoTokenizer.from_pretrained(ours)
    assert tokenizer(TEXT)["input_ids"] == source(TEXT)["input_ids"]
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT
    assert tokenizer.eos_token_id == source.eos_token_id == 0


def test_the_file_declares_gpt2_to_llama_cpp(ours, tmp_path):
    path = export_gguf(str(ours), str(tmp_path / "gguf"), outtype="f16")
    reader = gguf.GGUFReader(path)

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "gpt2"
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert (value("gpt2.context_length"), value("gpt2.embedding_length"), value("gpt2.block_count")) == (128, 64, 2)
    tensors = {t.name: t.tensor_type for t in reader.tensors}
    assert tensors["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_qkv.bias"] == tensors["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert "output.weight" in tensors  # the tied output layer, written as llama.cpp's converter writes GPT-2's
    card = ModelCard.load(tmp_path / "gguf" / "README.md")
    assert card.data.library_name == "gguf" and card.data.base_model is None  # a local source is no Hub id
    assert 'gguf_file="model-f16.gguf", n_positions=128)' in card.text and "llama-cli -m model-f16.gguf" in card.text


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("gpt1-tiny", {}, r"norm_position='post'"),
        ("gpt3-tiny", {}, r"attention_layers has 'local'"),
        ("gpt2-tiny", {"activation_function": "gelu"}, r"activation_function='gelu'.*tanh-approximated"),
    ],
)
def test_what_the_gpt2_architecture_cannot_compute_is_refused(tmp_path, trained_tokenizer, preset, overrides, message):
    config = tiny_config(preset, vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, **overrides)
    seeded(HfGptForCausalLM, config).save_pretrained(tmp_path / "ours")
    trained_tokenizer.save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match=message):
        export_gguf(str(tmp_path / "ours"), str(tmp_path / "gguf"))
    assert not (tmp_path / "gguf").exists()


def test_the_commands_export_gguf_and_the_script_does_not_hide_the_gguf_package(ours, tmp_path):
    script = [sys.executable, str(REPOSITORY / "conversion" / "gguf_file.py"), "export", str(ours)]
    done = subprocess.run([*script, str(tmp_path / "a"), "--outtype", "q8_0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "a" / "model-q8_0.gguf").is_file()
    hf_gpt = [sys.executable, "-m", "hf_gpt.cli", "convert"]
    done = subprocess.run([*hf_gpt, "gguf", "export", str(ours), str(tmp_path / "b")], capture_output=True, text=True,
                          cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"-> {tmp_path / 'b' / 'model-f16.gguf'}" in done.stdout
    done = subprocess.run([*hf_gpt, "gpt2", "export", str(ours), str(tmp_path / "c"), "--outtype", "f16"],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert (
        done.returncode == 2 and done.stderr.strip() == "hf-gpt convert: error: --outtype applies to gguf export only"
    )
    assert not (tmp_path / "c").exists()
