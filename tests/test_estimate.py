"""Scale estimates: exact parameter counts for every preset, GPT-3's published compute, memory measured."""

import json

import pytest
import torch

from hf_gpt import PRESETS, HfGptConfig, HfGptForCausalLM
from hf_gpt.cli import main
from hf_gpt.counting import META_COUNT_MAX_LAYERS, count_parameters, parameter_counts
from hf_gpt.estimate import estimate, parse_count
from hf_gpt.train.pretraining_setup import load_config

SMALL_PRESETS = [name for name in PRESETS if name.endswith("-tiny") or name in ("gpt1", "gpt2", "gpt3-small")]


def closed_form_parameters(config: HfGptConfig) -> int:
    """Per layer: QKV d·3d+3d, output d·d+d, MLP d·i+i and i·d+d, two LayerNorms 2d each; then the token
    and position tables, and the final LayerNorm in pre-norm models. The output layer is the token table."""
    d, i = config.hidden_size, config.intermediate_size
    layer = 4 * d * d + 2 * d * i + 9 * d + i
    final_norm = 2 * d if config.norm_position == "pre" else 0
    return config.num_hidden_layers * layer + (config.vocab_size + config.max_position_embeddings) * d + final_norm


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameters_match_the_closed_form_for_every_preset(name):
    config = HfGptConfig.from_preset(name)
    total, non_embedding = parameter_counts(config)
    assert total == closed_form_parameters(config)
    assert non_embedding == total - config.max_position_embeddings * config.hidden_size


def test_deep_models_are_counted_in_closed_form_as_the_meta_device_counts_them():
    depth = META_COUNT_MAX_LAYERS + 1
    config = HfGptConfig.from_preset("gpt2-tiny", num_hidden_layers=depth, tie_word_embeddings=False)
    with torch.device("meta"):
        model = HfGptForCausalLM(config)
    assert parameter_counts(config) == (count_parameters(model), count_parameters(model, non_embedding=True))


def test_any_depth_is_estimated_at_once(capsys):
    """10**9 layers printed nothing in 300 s: building the config and counting on the meta device took that long."""
    config = HfGptConfig.from_preset("gpt2", num_hidden_layers=10**9)
    est = estimate(config)
    assert est.parameters == closed_form_parameters(config) == config.parameter_count()
    assert est.non_embedding_parameters == est.parameters - 1024 * 768
    assert main(["estimate", "gpt2", "--set", "n_layer=1000000000"]) == 0
    out = capsys.readouterr().out
    assert f"{est.parameters:,}  (7.088e+15; closed form, tied once)" in out
    assert "1.532e+12 years" in out  # powers of ten where commas would overflow the columns


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_parameters_match_an_instantiated_model(name):
    config = HfGptConfig.from_preset(name)
    model = HfGptForCausalLM(config)
    assert parameter_counts(config) == (count_parameters(model), count_parameters(model, non_embedding=True))


def test_gpt3_175b_reproduces_the_published_compute():
    """Brown et al. 2020: 3.14e23 training FLOPs; at 28 TFLOP/s achieved that is 355 GPU-years."""
    est = estimate(HfGptConfig.from_preset("gpt3-175b"), tokens=300 * 10**9, gpu_tflops=28, mfu=1)
    assert 174e9 < est.parameters < 175e9
    assert est.training_flops(attention=False) == pytest.approx(3.14e23, rel=0.01)
    assert est.gpu_years(attention=False) == pytest.approx(3.14e23 / (28e12 * 3600 * 24 * 365), rel=0.01)
    assert est.gpu_years(attention=False) == pytest.approx(355, rel=0.01)
    attention = 12 * 96 * 12288 * 2048 * 300 * 10**9
    assert est.training_flops() == est.training_flops(attention=False) + attention


def test_time_and_cost_scale_with_gpus_mfu_and_price():
    config = HfGptConfig.from_preset("gpt2")
    one = estimate(config, tokens=10**9, gpu_tflops=100, mfu=0.5, price_per_hour=2.0)
    two = estimate(config, tokens=10**9, gpu_tflops=100, mfu=0.5, gpus=2, price_per_hour=2.0)
    assert two.wall_seconds() == pytest.approx(one.wall_seconds() / 2)
    assert two.gpu_hours() == pytest.approx(one.gpu_hours())
    assert one.gpu_hours() == pytest.approx(one.training_flops() / (100e12 * 0.5) / 3600)
    assert one.cost() == pytest.approx(2.0 * one.gpu_hours())
    assert estimate(config, tokens=10**9, mfu=0.25).gpu_hours() == pytest.approx(
        2 * estimate(config, tokens=10**9, mfu=0.5).gpu_hours()
    )
    assert estimate(config).tokens == 20 * one.parameters  # Chinchilla's default budget


def test_model_states_equal_the_tensors_after_one_adamw_step():
    """fp32 weights, gradients and AdamW's exp_avg / exp_avg_sq, summed from the real tensors."""
    config = HfGptConfig.from_preset("gpt2-tiny")
    torch.manual_seed(0)
    model = HfGptForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters())
    ids = torch.randint(0, config.vocab_size, (2, 16))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    parameters = list(model.parameters())
    states = [v for state in optimizer.state.values() for k, v in state.items() if k != "step"]
    memory = estimate(config, precision="fp32").memory
    assert memory.weights == sum(p.numel() * p.element_size() for p in parameters)
    assert memory.gradients == sum(p.grad.numel() * p.grad.element_size() for p in parameters)
    assert memory.optimizer == sum(t.numel() * t.element_size() for t in states)


def test_memory_follows_precision_attention_and_checkpointing():
    config = HfGptConfig.from_preset("gpt2")
    s, b, h, a, layers = 1024, 4, 768, 12, 12
    mixed = estimate(config, batch_size=b).memory
    assert mixed.activations == layers * s * b * h * 34  # Korthikanti et al., fused attention
    eager = estimate(config, batch_size=b, attention="eager").memory
    assert eager.activations == layers * s * b * h * (34 + 5 * a * s / h)
    fp32 = estimate(config, batch_size=b, precision="fp32").memory
    assert fp32.weights == fp32.gradients == 4 * mixed.gradients // 4
    assert mixed.weights > fp32.weights  # the 16-bit copy autocast keeps
    checkpointed = estimate(config, batch_size=b, gradient_checkpointing=True).memory
    assert checkpointed.activations == layers * 2 * s * b * h + s * b * h * 34
    assert mixed.logits == 4 * b * s * config.vocab_size
    assert mixed.sharded_total(8) < mixed.total


COUNTS = {"300e9": 300 * 10**9, "300B": 300 * 10**9, "1.5T": 15 * 10**11, "2.5M": 2_500_000, "10k": 10**4, "42": 42}


@pytest.mark.parametrize("text", list(COUNTS))
def test_parse_count(text):
    assert parse_count(text) == COUNTS[text]


@pytest.mark.parametrize("text", ["", "-5", "0", "1.5", "12x", "nan", "inf", "B", "1e400", "2e18"])
def test_parse_count_rejects_bad_counts(text):
    with pytest.raises(ValueError, match="positive whole number"):
        parse_count(text, "--tokens")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mfu": 0}, "mfu must be in"),
        ({"mfu": 1.5}, "mfu must be in"),
        ({"tokens": -1}, "tokens must be a positive integer"),
        ({"gpus": 0}, "gpus must be"),
        ({"seq_len": 5000}, "seq_len must be in"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"gpu_tflops": 0}, "gpu_tflops must be a finite number > 0"),
        ({"gpu_tflops": float("inf")}, "gpu_tflops must be a finite number > 0"),
    ],
)
def test_estimate_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        estimate(HfGptConfig.from_preset("gpt2-tiny"), **options)


def test_load_config_reads_presets_and_config_files(tmp_path):
    HfGptConfig.from_preset("gpt2-tiny", hidden_size=96).save_pretrained(tmp_path)
    assert load_config(str(tmp_path)).hidden_size == 96
    assert load_config(str(tmp_path / "config.json"), {"vocab_size": 2048}).vocab_size == 2048
    assert load_config("gpt2", {"hidden_size": 512, "num_attention_heads": 8}).hidden_size == 512
    with pytest.raises(ValueError, match="neither a preset"):
        load_config(str(tmp_path / "missing"))


def test_a_saved_config_at_a_new_depth_keeps_its_attention_period(tmp_path):
    HfGptConfig.from_preset("gpt3-tiny").save_pretrained(tmp_path)  # global, local
    assert load_config(str(tmp_path), {"num_hidden_layers": 5}).attention_layers == ["global", "local"] * 2 + ["global"]


def test_cli_reproduces_gpt3(capsys):
    args = ["estimate", "gpt3-175b", "--tokens", "300B", "--gpu-tflops", "28", "--mfu", "1", "--price-per-hour", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "174,604,259,328" in out
    assert "3.142e+23" in out and "355.9" in out
    assert "6·N·D" in out and "12·L·d·T·D" in out
    assert "cost at 1/GPU-hour" in out


def test_cli_overrides_and_config_file(tmp_path, capsys):
    assert main(["estimate", "gpt2-tiny", "--set", "num_hidden_layers=3", "--gpus", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt2-tiny: 3 layers") and "sharded over 4 GPUs" in out
    (tmp_path / "config.json").write_text(json.dumps(PRESETS["gpt2-tiny"]))
    assert main(["estimate", str(tmp_path), "--tokens", "1e6", "--gradient-checkpointing"]) == 0
    assert "1,000,000 tokens" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tokens=-300B"], "--tokens must be a positive whole number"),
        (["--set", "hidden_size=0"], "hidden_size must be a positive integer"),
    ],
)
def test_cli_bad_input_exits_2_with_the_message(args, message, capsys):
    assert main(["estimate", "gpt2-tiny", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_numbers_exit_2_naming_the_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", "gpt2-tiny", "--mfu", "1.5"])
    assert exit_.value.code == 2 and "argument --mfu: must be a finite number in (0, 1]" in capsys.readouterr().err


def test_cli_unknown_model(capsys):
    assert main(["estimate", "gpt9"]) == 2
    assert "neither a preset" in capsys.readouterr().err
