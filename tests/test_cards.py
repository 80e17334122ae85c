"""Model cards: rendered from the packaged Jinja template, parsed back by huggingface_hub."""

import importlib.util
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from hf_gpt import HfGptConfig
from hf_gpt.hub.cards import render_card, template_path, write_card


def test_template_ships_with_the_package():
    # The install carries model_cards/ as the subpackage hf_gpt.model_cards, and the card comes from there.
    spec = importlib.util.find_spec("hf_gpt.model_cards")
    assert spec is not None and template_path("model").parent == Path(spec.origin).parent


def test_rendered_card_parses_back(tmp_path):
    config = HfGptConfig.from_preset("gpt3-tiny")
    card = render_card(
        config,
        123_456,
        model_name="tiny-gpt3",
        summary="A test model.",
        training=[("Tokens seen", "1,000"), ("Hardware", "1 x cpu")],
        evaluation=[("Validation perplexity", "12.34")],
        datasets=["org/corpus"],
        base_model="org/base",
        language="en",
        license="apache-2.0",
        scores=[("corpus (validation split)", "perplexity", 12.34)],
        model_path="org/tiny-gpt3",
    )
    path = write_card(card, tmp_path)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert (data.library_name, data.pipeline_tag, data.license, data.language) == (
        "transformers", "text-generation", "apache-2.0", "en"
    )  # fmt: skip
    assert data.base_model == "org/base" and data.datasets == ["org/corpus"]
    assert {"hf_gpt", "custom_code"} <= set(data.tags)
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_name) == (
        "perplexity", 12.34, "corpus (validation split)"
    )  # fmt: skip
    assert result.dataset_type == "corpus-validation-split"  # an id, as the Hub's model-index wants there
    metadata = yaml.safe_load(path.read_text().split("---")[1])
    assert ModelCardData(**metadata).model_name == "tiny-gpt3"
    text = loaded.text
    rows = ["| Parameters | 123,456 |", "| Layers | 2 |", "| Width | 64 |", "| Heads | 4 |", "| Context | 128 tokens |",
            "| Vocabulary | 1024 tokens |", "| Norm position | pre-LayerNorm |", "| Tokens seen | 1,000 |",
            "| Attention | global / local alternating (local window 16) |"]  # fmt: skip
    for row in rows:
        assert row in text, row
    assert 'AutoModelForCausalLM.from_pretrained("org/tiny-gpt3", trust_remote_code=True)' in text
    assert 'pipeline("text-generation", model="org/tiny-gpt3", trust_remote_code=True)' in text
    assert "multi-digit arithmetic" in text and "biases" in text


def test_plain_gpt2_cards_need_no_remote_code(tmp_path):
    card = render_card(HfGptConfig.from_preset("gpt2-tiny"), 1, model_name="m", summary="s", custom_code=False)
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text
