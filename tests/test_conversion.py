"""conversion/: transformers GPT-2 and GPT-1 and nanoGPT checkpoints in, plain GPT-2 out, same logits both ways."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import seeded, tiny_config
from hf_gpt.conversion.gpt2 import export_gpt2, import_gpt2
from hf_gpt.conversion.nanogpt import import_nanogpt
from hf_gpt.conversion.openai_gpt import import_openai_gpt
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel
from transformers.models.openai.modeling_openai import ACT_FNS

from hf_gpt import HfGptForCausalLM

SHAPE = dict(vocab_size=700, n_positions=64, n_embd=48, n_layer=2, n_head=4)
IDS = torch.randint(0, 700, (2, 40), generator=torch.Generator().manual_seed(1))
# Weights at a trained model's scale: at the 0.02 init activations stay near 0, where e.g. the exact and the tanh
# GELU agree to 1e-6, so a converter that picked the wrong variant would still pass.
STD = 0.2


def at_realistic_scale(model):
    """Every parameter drawn from N(0, STD), LayerNorm weights from N(1, STD); tied weights stay tied."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            for name, parameter in module.named_parameters(recurse=False):
                centre = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0
                parameter.copy_(centre + STD * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def random_gpt2(tied: bool = True) -> GPT2LMHeadModel:
    config = GPT2Config(**SHAPE, bos_token_id=0, eos_token_id=0, tie_word_embeddings=tied)
    model = at_realistic_scale(GPT2LMHeadModel(config))
    assert tied or not torch.equal(model.lm_head.weight, model.transformer.wte.weight)  # untied really differs
    return model


def save_gpt2(model, folder, layout: str, tokenizer=None) -> str:
    if layout == "bin":
        folder.mkdir(parents=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        model.save_pretrained(folder, max_shard_size="100KB" if layout == "sharded" else "5GB")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(("tied", "layout"), [(True, "single"), (False, "single"), (True, "sharded"), (False, "bin")])
def test_gpt2_import_gives_the_same_logits_and_greedy_tokens(tmp_path, trained_tokenizer, tied, layout):
    reference = random_gpt2(tied)
    source = save_gpt2(reference, tmp_path / "gpt2", layout, trained_tokenizer)
    if layout == "sharded":
        assert (tmp_path / "gpt2" / "model.safetensors.index.json").is_file()
    import_gpt2(source, str(tmp_path / "ours"))
    ours = HfGptForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.tie_word_embeddings is tied
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)
        prompt = IDS[:1, :5]
        expected = reference.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0), expected)
    assert (tmp_path / "ours" / "tokenizer.json").is_file()  # carried over
    card = ModelCard.load(tmp_path / "ours" / "README.md")
    # A local source is named in the text, not as base_model: the Hub takes only repo ids there.
    assert card.data.base_model is None and source in card.text and "hf_gpt" in card.data.tags


def test_gpt2_import_refuses_a_checkpoint_with_missing_weights(tmp_path):
    """transformers would fill a missing tensor in at random; the converter must not pass that on."""
    weights = {
        k: v.contiguous() for k, v in random_gpt2().state_dict().items() if k != "transformer.h.0.mlp.c_fc.weight"
    }
    folder = tmp_path / "gpt2"
    random_gpt2().config.save_pretrained(folder)
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"lacks weights the model needs: \['transformer.h.0.mlp.c_fc.weight'\]"):
        import_gpt2(str(folder), str(tmp_path / "ours"))
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize(
    ("changed", "message"),
    [({"n_layer": 1}, r"has weights its config.json has no place for: \['transformer.h.1."),
     ({"vocab_size": 800}, r"transformer.wte.weight has shape \(700, 48\), its config.json expects \(800, 48\)")],
)  # fmt: skip
def test_gpt2_import_refuses_weights_its_config_does_not_describe(tmp_path, changed, message):
    """transformers would drop the extra layers (a shallower model, converted "exactly") or fail with a traceback."""
    folder = tmp_path / "gpt2"
    random_gpt2().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changed}))
    with pytest.raises(ValueError, match=message):
        import_gpt2(str(folder), str(tmp_path / "ours"))
    assert not (tmp_path / "ours").exists()


def test_gpt2_export_loads_without_custom_code(tmp_path, trained_tokenizer):
    model = at_realistic_scale(seeded(HfGptForCausalLM, tiny_config(vocab_size=700, bos_token_id=0, eos_token_id=0)))
    model.save_pretrained(tmp_path / "ours")
    trained_tokenizer.save_pretrained(tmp_path / "ours")
    export_gpt2(str(tmp_path / "ours"), str(tmp_path / "gpt2"))
    folder = tmp_path / "gpt2"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert config["n_ctx"] == config["n_positions"] == 128  # as released GPT-2 configs (llama.cpp reads it)
    assert not list(folder.glob("*.py"))
    script = f"""
import json, torch
from transformers import AutoModelForCausalLM, pipeline
model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
ids = torch.tensor({IDS.tolist()})
print(json.dumps({{"class": type(model).__name__, "logits": model(ids).logits[:, -1, :8].tolist()}}))
generate = pipeline("text-generation", model={str(folder)!r})
print(generate("The quick", max_new_tokens=3, do_sample=False)[0]["generated_text"])
"""
    from conftest import WITHOUT_HF_GPT

    done = subprocess.run([sys.executable, "-c", WITHOUT_HF_GPT + script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-2])
    assert result["class"] == "GPT2LMHeadModel" and lines[-1].startswith("The quick")
    with torch.no_grad():
        expected = model(IDS).logits[:, -1, :8]
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-5)


TRANSFORMERS_4 = "transformers==4.57.1"  # what optimum's ONNX exporter, and many serving stacks, still pin
TOKENIZE = """
import json, sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = [tokenizer(text)["input_ids"] for text in json.loads(sys.argv[2])]
print(json.dumps({"class": type(tokenizer).__name__, "ids": ids, "decoded": [tokenizer.decode(i) for i in ids],
                  "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}))
"""
TEXTS = ["The quick brown fox", "  two spaces,\ttabs\nand lines ", "naïve café — 東京 🙂", "a<|endoftext|>b", ""]


def transformers_4_python() -> Path:
    """A virtual environment with transformers 4.x and no torch (its tokenizers need none), built once with pip
    from the package registry into ~/.cache/hf_gpt (HF_GPT_TRANSFORMERS_4 moves it)."""
    default = Path.home() / ".cache" / "hf_gpt" / TRANSFORMERS_4.replace("==", "-")
    root = Path(os.environ.get("HF_GPT_TRANSFORMERS_4", default))
    if not (root / "bin" / "python").exists():
        staging = root.with_name(f".{root.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True)
        pip = [str(staging / "bin" / "python"), "-m", "pip", "install", "-q", TRANSFORMERS_4]
        subprocess.run(pip, check=True, capture_output=True)
        os.replace(staging, root)  # complete, or not there: a killed build is redone
    return root / "bin" / "python"


@pytest.mark.slow
def test_gpt2_export_tokenizer_loads_in_transformers_4_and_5_alike(tmp_path, trained_tokenizer):
    model = seeded(HfGptForCausalLM, tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0))
    model.save_pretrained(tmp_path / "ours")
    trained_tokenizer.save_pretrained(tmp_path / "ours")
    export_gpt2(str(tmp_path / "ours"), str(tmp_path / "gpt2"))
    settings = json.loads((tmp_path / "gpt2" / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "GPT2Tokenizer" and settings.get("extra_special_tokens") != []

    def tokenize(python, folder) -> dict:
        command = [str(python), "-c", TOKENIZE, str(folder), json.dumps(TEXTS)]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    trained_tokenizer.save_pretrained(tmp_path / "tokenizer")  # alone: beside hf_gpt's config it asks for custom code
    source = tokenize(sys.executable, tmp_path / "tokenizer")
    five = tokenize(sys.executable, tmp_path / "gpt2")
    four = tokenize(transformers_4_python(), tmp_path / "gpt2")
    assert four["class"] == "GPT2TokenizerFast" and five["class"] == "GPT2Tokenizer"
    assert four["ids"] == five["ids"] == source["ids"]
    assert four["decoded"] == five["decoded"] == source["decoded"] == TEXTS  # exact round trips
    assert four["eos"] == five["eos"] == source["eos"] and four["pad"] == five["pad"] == source["pad"]


@pytest.mark.parametrize(
    ("preset", "overrides", "message"),
    [
        ("gpt1-tiny", {}, r"norm_position='post'"),
        ("gpt3-tiny", {}, r"attention_layers has 'local'"),
        ("gpt2-tiny", {"activation_function": "silu"}, r"activation_function='silu'"),
    ],
)
def test_gpt2_export_refuses_what_gpt2_cannot_compute(tmp_path, preset, overrides, message):
    seeded(HfGptForCausalLM, tiny_config(preset, **overrides)).save_pretrained(tmp_path / "ours")
    with pytest.raises(ValueError, match=message):
        export_gpt2(str(tmp_path / "ours"), str(tmp_path / "gpt2"))
    assert not (tmp_path / "gpt2").exists()


def random_gpt1(afn: str) -> OpenAIGPTLMHeadModel:
    return at_realistic_scale(OpenAIGPTLMHeadModel(OpenAIGPTConfig(**{**SHAPE, "vocab_size": 500}, afn=afn)))


# Every afn transformers' GPT-1 has; its "gelu" is the tanh approximation (before, converted as the exact GELU: the
# logits differed by ~1e-3 and the converter refused its own output).
@pytest.mark.parametrize("afn", sorted(ACT_FNS))
def test_openai_gpt_import_gives_the_same_logits(tmp_path, afn):
    reference = random_gpt1(afn)
    reference.save_pretrained(tmp_path / "gpt1")
    import_openai_gpt(str(tmp_path / "gpt1"), str(tmp_path / "ours"))
    ours = HfGptForCausalLM.from_pretrained(tmp_path / "ours").eval()
    expected = {"gelu": "gelu_new", "swish": "silu"}.get(afn, afn)
    assert ours.config.norm_position == "post" and ours.config.activation_function == expected
    ids = IDS % 500
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_openai_gpt_import_refuses_an_afn_transformers_does_not_have(tmp_path):
    random_gpt1("gelu").save_pretrained(tmp_path / "gpt1")
    config = json.loads((tmp_path / "gpt1" / "config.json").read_text())
    (tmp_path / "gpt1" / "config.json").write_text(json.dumps({**config, "afn": "gelu_fast"}))
    with pytest.raises(
        ValueError, match=r"afn='gelu_fast' is not one transformers' GPT-1 has \(relu, silu, swish, gelu"
    ):
        import_openai_gpt(str(tmp_path / "gpt1"), str(tmp_path / "ours"))
    assert not (tmp_path / "ours").exists()


def test_the_realistic_scale_tells_the_gelu_variants_apart():
    """The point of STD: were the scale too small, the tests above would pass a converter with the wrong GELU."""
    exact, tanh = (random_gpt1("gelu") for _ in range(2))
    for block in exact.transformer.h:
        block.mlp.act = torch.nn.GELU()
    with torch.no_grad():
        assert (exact(IDS % 500).logits - tanh(IDS % 500).logits).abs().max() > 1e-4


# nanoGPT: checkpoints built here in its documented layout, and its forward written out from its model.py's
# documented architecture (exact GELU, LayerNorm with optional bias, causal attention, tied lm_head).


def nanogpt_state_dict(layers: int, width: int, vocab: int, context: int, bias: bool) -> dict:
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator) * STD

    state = {"transformer.wte.weight": tensor(vocab, width), "transformer.wpe.weight": tensor(context, width)}
    linear = {"attn.c_attn": (3 * width, width), "attn.c_proj": (width, width), "mlp.c_fc": (4 * width, width),
              "mlp.c_proj": (width, 4 * width)}  # fmt: skip
    for i in range(layers):
        for norm in ("ln_1", "ln_2"):
            state[f"transformer.h.{i}.{norm}.weight"] = 1 + tensor(width)
            if bias:
                state[f"transformer.h.{i}.{norm}.bias"] = tensor(width)
        for name, shape in linear.items():
            state[f"transformer.h.{i}.{name}.weight"] = tensor(*shape)
            if bias:
                state[f"transformer.h.{i}.{name}.bias"] = tensor(shape[0])
    state["transformer.ln_f.weight"] = 1 + tensor(width)
    if bias:
        state["transformer.ln_f.bias"] = tensor(width)
    state["lm_head.weight"] = state["transformer.wte.weight"]  # tied, as nanoGPT saves it
    return state


def nanogpt_logits(state: dict, ids: torch.Tensor, heads: int) -> torch.Tensor:
    def norm(x, name):
        return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state.get(f"{name}.bias"), 1e-5)

    def linear(x, name):
        return F.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))

    x = state["transformer.wte.weight"][ids] + state["transformer.wpe.weight"][: ids.shape[1]]
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.h.")})
    for i in range(layers):
        h = f"transformer.h.{i}"
        q, k, v = linear(norm(x, f"{h}.ln_1"), f"{h}.attn.c_attn").split(x.shape[-1], dim=2)
        q, k, v = (t.view(*ids.shape, heads, -1).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        x = x + linear(y, f"{h}.attn.c_proj")
        x = x + linear(F.gelu(linear(norm(x, f"{h}.ln_2"), f"{h}.mlp.c_fc")), f"{h}.mlp.c_proj")
    return norm(x, "transformer.ln_f") @ state["lm_head.weight"].T


@pytest.mark.parametrize(("bias", "compiled"), [(True, False), (False, True)])
def test_nanogpt_import_computes_nanogpts_logits(tmp_path, trained_tokenizer_dir, bias, compiled):
    state = nanogpt_state_dict(layers=2, width=48, vocab=704, context=64, bias=bias)
    saved = {("_orig_mod." + k if compiled else k): v for k, v in state.items()}
    model_args = dict(n_layer=2, n_head=4, n_embd=48, block_size=64, bias=bias, vocab_size=704, dropout=0.0)
    checkpoint = {"model": saved, "model_args": model_args, "iter_num": 100, "best_val_loss": torch.tensor(1.5),
                  "config": {"dataset": "shakespeare", "learning_rate": 6e-4}}  # fmt: skip
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    import_nanogpt(str(tmp_path / "ckpt.pt"), str(tmp_path / "ours"), tokenizer=str(trained_tokenizer_dir))
    ours = HfGptForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.vocab_size == 704 and ours.config.activation_function == "gelu"
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS).logits, nanogpt_logits(state, IDS, heads=4), rtol=0, atol=1e-5)
    assert (tmp_path / "ours" / "tokenizer.json").is_file()
    # Written as every model folder is: sampling defaults, and a tokenizer that truncates to the context.
    assert ours.generation_config.do_sample and ours.generation_config.top_k == 50
    assert AutoTokenizer.from_pretrained(tmp_path / "ours").model_max_length == 64


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"n_layer": 10**6}, r"n_layer=1000000 \(the tensors hold 2\)"),  # allocated until MemoryError
        ({"vocab_size": 10**12}, r"vocab_size=1000000000000 \(the tensors hold 704\)"),
        ({"vocab_size": 1e12}, r"vocab_size=1000000000000.0 \(the tensors hold 704\)"),
        ({"n_embd": 64, "block_size": 128}, r"n_embd=64 \(the tensors hold 48\), block_size=128 \(the tensors hold"),
    ],
)
def test_nanogpt_import_refuses_model_args_the_weights_do_not_match(tmp_path, changed, message):
    model_args = dict(n_layer=2, n_head=4, n_embd=48, block_size=64, bias=True, vocab_size=704, dropout=0.0)
    state = nanogpt_state_dict(layers=2, width=48, vocab=704, context=64, bias=True)
    torch.save({"model": state, "model_args": {**model_args, **changed}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt.pt: model_args do not match the saved weights: " + message):
        import_nanogpt(str(tmp_path / "ckpt.pt"), str(tmp_path / "ours"))
    assert not (tmp_path / "ours").exists()


def test_a_vocabulary_of_1e12_is_one_clear_error_from_every_converter(tmp_path):
    """Before, the converters allocated the 1e12-row embedding table: a RuntimeError from the allocator, a traceback."""
    torch.manual_seed(0)
    OpenAIGPTLMHeadModel(OpenAIGPTConfig(**{**SHAPE, "vocab_size": 500})).save_pretrained(tmp_path / "gpt1")
    config = json.loads((tmp_path / "gpt1" / "config.json").read_text())
    (tmp_path / "gpt1" / "config.json").write_text(json.dumps({**config, "vocab_size": 10**12}))
    with pytest.raises(ValueError, match=r"vocab_size=1,000,000,000,000, .* more than all .* bytes"):
        import_openai_gpt(str(tmp_path / "gpt1"), str(tmp_path / "ours"))
    state = nanogpt_state_dict(layers=2, width=48, vocab=704, context=64, bias=True)
    model_args = dict(n_layer=2, n_head=4, n_embd=48, block_size=64, vocab_size=10**12)
    torch.save({"model": state, "model_args": model_args}, tmp_path / "ckpt.pt")
    done = subprocess.run(
        [sys.executable, "-m", "hf_gpt.conversion.nanogpt", "import", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: " in done.stderr and "vocab_size=1000000000000 (the tensors hold 704)" in done.stderr


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"model": Payload(), "model_args": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        import_nanogpt(str(tmp_path / "ckpt.pt"), str(tmp_path / "ours"))
    assert not (tmp_path / "ours").exists()


def test_cli_reports_errors_and_converts(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hf_gpt.conversion.gpt2", "import", str(tmp_path / "missing"), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "error: no config.json in" in done.stderr and "Traceback" not in done.stderr
    save_gpt2(random_gpt2(), tmp_path / "gpt2", "single")
    done = subprocess.run(
        [sys.executable, "-m", "hf_gpt.conversion.gpt2", "import", str(tmp_path / "gpt2"), str(tmp_path / "out")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "largest logit difference" in done.stdout and f"-> {tmp_path / 'out'}" in done.stdout
    # The same converters from the hf-gpt command.
    hf_gpt = [sys.executable, "-m", "hf_gpt.cli", "convert"]
    done = subprocess.run([*hf_gpt, "gpt2", "export", str(tmp_path / "out"), str(tmp_path / "back")],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "gpt2"
    done = subprocess.run([*hf_gpt, "nanogpt", "export", str(tmp_path / "out"), str(tmp_path / "other")],
                          capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "hf-gpt convert: error: nanogpt converts only by import, not export"
    ]
    assert not (tmp_path / "other").exists()
