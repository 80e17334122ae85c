import pytest
import torch
from transformers import AutoConfig, GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

import hf_gpt
from hf_gpt import PRESETS, HfGptConfig, HfGptForCausalLM
from hf_gpt.configuration_hf_gpt import MAX_LISTED_LAYERS

pytestmark = pytest.mark.model

# GPT-3 paper, Table 2.1: parameter counts.
GPT3_PAPER_PARAMS = {
    "gpt3-small": 125e6,
    "gpt3-medium": 350e6,
    "gpt3-large": 760e6,
    "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9,
    "gpt3-13b": 13.0e9,
    "gpt3-175b": 175.0e9,
}


def count_on_meta(model_class, config) -> int:
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_gpt2_aliases_read_and_write_the_standard_names():
    config = HfGptConfig(n_embd=128, n_layer=3, n_head=4, n_positions=64, n_inner=200)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 3, 4)
    assert (config.max_position_embeddings, config.intermediate_size) == (64, 200)
    assert config.attention_layers == ["global"] * 3
    assert HfGptConfig(hidden_size=96).intermediate_size == 4 * 96
    config.n_embd = 256
    assert config.hidden_size == 256


def test_config_round_trips_through_save_and_auto_config(tmp_path):
    config = HfGptConfig.from_preset("gpt3-tiny", pad_token_id=3)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, HfGptConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    assert loaded.layer_types == ["full_attention", "sliding_attention"]
    assert loaded.sliding_window == 16
    loaded.sliding_window = 8  # transformers' name for the band writes ours
    assert loaded.local_window == 8
    assert HfGptConfig.from_preset("gpt2-tiny").sliding_window is None  # no local layers, no band


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(vocab_size=0), "vocab_size must be a positive integer (>= 1), got 0"),
        (dict(num_attention_heads=-2), "num_attention_heads must be a positive integer (>= 1), got -2"),
        (dict(max_position_embeddings=0), "max_position_embeddings must be a positive integer"),
        (dict(attention_layers=["global"]), "attention_layers has 1 entries but num_hidden_layers is 2"),
        (dict(attention_layers=["global", "sparse"]), "attention_layers entries must be in ['global', 'local']"),
        (dict(activation_function="gelu_fancy"), "activation_function 'gelu_fancy' is unknown"),
        (dict(norm_position="middle"), "norm_position must be one of ('pre', 'post'), got 'middle'"),
        (dict(attn_pdrop=1.5), "attn_pdrop must be a probability in [0, 1], got 1.5"),
        (dict(num_hidden_layers=1e6), "num_hidden_layers must be a positive integer (>= 1), got 1000000.0"),
    ],
)
def test_bad_config_values_raise_a_value_error_that_names_them(overrides, message):
    with pytest.raises(ValueError) as error:
        HfGptConfig.from_preset("gpt2-tiny", **overrides)
    assert message in str(error.value)


def test_heads_that_do_not_divide_the_width_are_refused_when_a_model_is_built():
    config = HfGptConfig.from_preset("gpt2-tiny", hidden_size=65)  # builds, as GPT2Config(n_embd=65) does
    with pytest.raises(ValueError, match=r"hidden_size \(65\) must be divisible by num_attention_heads \(4\)"):
        HfGptForCausalLM(config)
    with pytest.raises(ValueError, match=r"hidden_size \(65\) must be divisible by num_attention_heads \(4\)"):
        config.check()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown preset 'gpt4'") as error:
        HfGptConfig.from_preset("gpt4")
    for name in PRESETS:
        assert name in str(error.value)


def test_preset_overrides_win_and_depth_override_stretches_the_attention_pattern():
    config = HfGptConfig.from_preset("gpt3-small", num_hidden_layers=4, vocab_size=1000, bos_token_id=0, eos_token_id=0)
    assert config.vocab_size == 1000 and config.hidden_size == 768
    assert config.attention_layers == ["global", "local", "global", "local"]


def test_gpt1_preset_matches_the_original_gpt():
    config = HfGptConfig.from_preset("gpt1")
    assert config.norm_position == "post"
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 768, 12)
    assert (config.intermediate_size, config.max_position_embeddings, config.vocab_size) == (3072, 512, 40478)
    model_keys = {name for name, _ in HfGptForCausalLM(HfGptConfig.from_preset("gpt1-tiny")).named_modules()}
    assert "transformer.ln_f" in model_keys  # an Identity: post-norm has no final LayerNorm ...
    # ... and so no parameters for it: the count equals transformers' own GPT-1 implementation.
    assert count_on_meta(HfGptForCausalLM, config) == count_on_meta(OpenAIGPTLMHeadModel, OpenAIGPTConfig())


@pytest.mark.parametrize("name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_gpt2_presets_count_exactly_what_transformers_gpt2_counts(name):
    config = HfGptConfig.from_preset(name)
    reference = GPT2Config(
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        n_positions=config.max_position_embeddings,
        vocab_size=config.vocab_size,
    )
    assert count_on_meta(HfGptForCausalLM, config) == count_on_meta(GPT2LMHeadModel, reference)
    if name == "gpt2":
        assert count_on_meta(HfGptForCausalLM, config) == 124_439_808


@pytest.mark.parametrize("name", sorted(GPT3_PAPER_PARAMS))
def test_gpt3_presets_are_within_3_percent_of_the_paper(name):
    config = HfGptConfig.from_preset(name)
    assert config.max_position_embeddings == 2048
    assert config.attention_layers[:2] == ["global", "local"]
    assert config.hidden_size % config.num_attention_heads == 0
    count = count_on_meta(HfGptForCausalLM, config)
    assert abs(count / GPT3_PAPER_PARAMS[name] - 1) < 0.03, f"{name}: {count:,}"


def test_every_preset_instantiates_on_the_meta_device():
    for name in PRESETS:
        assert count_on_meta(HfGptForCausalLM, HfGptConfig.from_preset(name)) > 0
    assert hf_gpt.PRESETS is PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_parameter_count_in_closed_form_is_what_the_model_holds(name):
    for tied in (True, False):
        config = HfGptConfig.from_preset(name, tie_word_embeddings=tied)
        assert config.parameter_count() == count_on_meta(HfGptForCausalLM, config), (name, tied)


def test_a_config_deeper_than_any_model_is_made_at_once_for_estimates():
    """10**9 layers: listing attention_layers (and transformers' layer_types) per layer took minutes and gigabytes."""
    config = HfGptConfig.from_preset("gpt2", num_hidden_layers=10**9)
    assert config.attention_layers is None and config.layer_types is None
    assert config.parameter_count() == 10**9 * (12 * 768**2 + 13 * 768) + (50257 + 1024) * 768 + 2 * 768
    with torch.device("meta"), pytest.raises(ValueError, match="a model needs one entry for each of its 1,000,000,000"):
        HfGptForCausalLM(config)
    assert len(HfGptConfig.from_preset("gpt2-tiny", num_hidden_layers=MAX_LISTED_LAYERS).attention_layers) == 10**6
    with pytest.raises(ValueError, match=r"layers=2,000,000 is too deep to list a mix of \['global', 'local'\]"):
        HfGptConfig.from_preset("gpt3-small", num_hidden_layers=2 * 10**6)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [(dict(pad_token_id=1024), "pad_token_id=1024"), (dict(bos_token_id=-1), "bos_token_id=-1"),
     (dict(eos_token_id=[0, 5000]), "eos_token_id=5000"), (dict(vocab_size=99), "bos_token_id=50256")],
)  # fmt: skip
def test_special_token_ids_outside_the_vocabulary_build_and_generate_refuses_them(overrides, named):
    """As GPT2Config(vocab_size=99) builds, ours does; the error moves to where such an id would be fed in."""
    import torch

    from hf_gpt import HfGptForCausalLM

    defaults = {} if "vocab_size" in overrides else {"vocab_size": 1024, "bos_token_id": 0, "eos_token_id": 0}
    config = HfGptConfig(**{"n_layer": 1, "n_embd": 32, "n_head": 2, **defaults, **overrides})
    model = HfGptForCausalLM(config).eval()
    prompt = torch.tensor([[1, 2, 3]])
    assert model(prompt).logits.shape == (1, 3, config.vocab_size)
    with pytest.raises(ValueError, match=rf"generate\(\) cannot use .*{named}.*: outside the vocabulary"):
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=2)
    model.resize_token_embeddings(20)  # a shrunk vocabulary: the config follows
    assert model.config.vocab_size == 20
