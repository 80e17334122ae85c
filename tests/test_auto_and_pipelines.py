"""Importing hf_gpt registers every head with the Auto classes, and the pipelines accept them."""

import logging
from contextlib import contextmanager

import pytest
import torch
from conftest import seeded, tiny_config
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)

from hf_gpt import (
    HfGptConfig,
    HfGptForCausalLM,
    HfGptForQuestionAnswering,
    HfGptForSequenceClassification,
    HfGptForTokenClassification,
    HfGptModel,
)

pytestmark = pytest.mark.model
NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}
AUTO_CLASSES = {
    AutoModel: HfGptModel,
    AutoModelForCausalLM: HfGptForCausalLM,
    AutoModelForSequenceClassification: HfGptForSequenceClassification,
    AutoModelForTokenClassification: HfGptForTokenClassification,
    AutoModelForQuestionAnswering: HfGptForQuestionAnswering,
}


@contextmanager
def transformers_log():
    """Collect what transformers logs (its loggers do not propagate to pytest's caplog)."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, library_logger = Collect(level=logging.WARNING), logging.getLogger("transformers")
    library_logger.addHandler(handler)
    try:
        yield messages
    finally:
        library_logger.removeHandler(handler)


@pytest.fixture
def saved(tmp_path, tokenizer):
    """save(model_class, **config) -> a folder with that model and the tiny tokenizer."""

    def save(model_class, **overrides):
        config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **overrides)
        folder = tmp_path / model_class.__name__
        seeded(model_class, config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    return save


def test_every_auto_class_loads_its_head(saved):
    assert isinstance(AutoConfig.for_model("hf_gpt"), HfGptConfig)
    for auto_class, model_class in AUTO_CLASSES.items():
        folder = saved(model_class)
        assert type(auto_class.from_pretrained(folder)) is model_class
        assert type(auto_class.from_config(AutoConfig.from_pretrained(folder))) is model_class


def test_a_causal_lm_checkpoint_starts_a_classifier_with_its_body(saved):
    folder = saved(HfGptForCausalLM)
    lm = AutoModelForCausalLM.from_pretrained(folder)
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    torch.testing.assert_close(classifier.transformer.wte.weight, lm.transformer.wte.weight)


def test_text_generation_pipeline(saved):
    folder = saved(HfGptForCausalLM)
    with transformers_log() as log:
        generator = pipeline("text-generation", model=folder)
        text = generator("The quick brown", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("The quick brown") and len(text) > len("The quick brown")
    assert not [m for m in log if "not supported" in m], log
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("The quick brown", return_tensors="pt")
    expected = model.generate(**ids, max_new_tokens=8, do_sample=False)[0]
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


def test_the_not_supported_check_would_be_seen(tokenizer):
    """Positive control for the log capture the pipeline tests rely on."""
    config = tiny_config(vocab_size=len(tokenizer))
    with transformers_log() as log:
        pipeline("token-classification", model=seeded(HfGptForCausalLM, config), tokenizer=tokenizer)
    assert any("not supported" in message for message in log)


def test_text_and_zero_shot_classification_pipelines(saved):
    folder = saved(HfGptForSequenceClassification, id2label=NLI_LABELS)
    with transformers_log() as log:
        scores = pipeline("text-classification", model=folder, top_k=None)(["It was the best of times."])[0]
        zero_shot = pipeline("zero-shot-classification", model=folder)
        result = zero_shot("The fox jumps over the dog", candidate_labels=["animals", "politics", "sports"])
    assert {s["label"] for s in scores} == set(NLI_LABELS.values())
    assert pytest.approx(sum(s["score"] for s in scores)) == 1.0
    assert zero_shot.entailment_id == 2
    assert sorted(result["labels"]) == ["animals", "politics", "sports"]
    assert pytest.approx(sum(result["scores"])) == 1.0
    assert not [m for m in log if "not supported" in m], log


def test_token_classification_pipeline(saved, tokenizer):
    folder = saved(HfGptForTokenClassification, id2label={0: "COLOUR", 1: "ANIMAL"})  # "O" would be dropped
    with transformers_log() as log:
        entities = pipeline("token-classification", model=folder)("The quick brown fox")
    assert entities and all(e["entity"] in {"COLOUR", "ANIMAL"} for e in entities)
    assert [e["word"] for e in entities] == tokenizer.tokenize("The quick brown fox")
    assert not [m for m in log if "not supported" in m], log


def test_feature_extraction_pipeline_returns_the_bodys_hidden_states(saved, tokenizer):
    folder = saved(HfGptModel)
    with transformers_log() as log:
        features = pipeline("feature-extraction", model=folder, return_tensors=True)("The quick brown fox")
    ids = tokenizer("The quick brown fox", return_tensors="pt")
    expected = AutoModel.from_pretrained(folder)(**ids).last_hidden_state
    torch.testing.assert_close(features, expected)
    assert not [m for m in log if "not supported" in m], log


def test_question_answering_head_is_used_directly(saved, tokenizer):
    # transformers 5.x has no question-answering pipeline: span logits and loss from the head itself.
    model = AutoModelForQuestionAnswering.from_pretrained(saved(HfGptForQuestionAnswering))
    inputs = tokenizer("Who jumps? The quick brown fox jumps.", return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    out = model(**inputs, start_positions=torch.tensor([4]), end_positions=torch.tensor([6]))
    assert out.start_logits.shape == out.end_logits.shape == (1, length)
    assert torch.isfinite(out.loss)
    start, end = int(out.start_logits.argmax()), int(out.end_logits.argmax())
    assert 0 <= start < length and 0 <= end < length
