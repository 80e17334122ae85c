"""transformers' own common model tests (`ModelTesterMixin`, `TrainingTesterMixin`, `ConfigTester`), run on
all six hf_gpt classes in GPT-1 (post-norm), GPT-2 (pre-norm) and GPT-3 (global and local layers) shapes.

The upstream files come from the sdist of the installed transformers (see `upstream_transformers.py`).
Those mixins find "the base model" and "which heads take which labels" in transformers' static name
tables, which a registered third-party model is never in: `registered_in_name_tables` adds ours for the
duration of these tests. Every upstream test that does not apply is skipped below with its reason (the
same list is in README's tests section).
"""

import contextlib
import unittest
from unittest import mock

import pytest
import upstream_transformers

try:
    modeling_common = upstream_transformers.load("test_modeling_common")
    configuration_common = upstream_transformers.load("test_configuration_common")
    training_mixin = upstream_transformers.load("test_training_mixin")
except upstream_transformers.Unavailable as missing:
    pytest.skip(f"needs transformers' own tests: {missing}", allow_module_level=True)

import torch  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

from hf_gpt import (  # noqa: E402
    HfGptConfig,
    HfGptDoubleHeadsModel,
    HfGptForCausalLM,
    HfGptForQuestionAnswering,
    HfGptForSequenceClassification,
    HfGptForTokenClassification,
    HfGptModel,
)

# transformers warns of a renamed argument with a FutureWarning that test_bc_cache_name_forward must see.
pytestmark = [pytest.mark.model, pytest.mark.filterwarnings("always::FutureWarning")]

ids_tensor = modeling_common.ids_tensor
random_attention_mask = modeling_common.random_attention_mask

# Where transformers' mixins look our classes up by name (MODEL_MAPPING_NAMES and friends).
NAME_TABLES = {
    "MODEL_MAPPING_NAMES": HfGptModel,
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": HfGptForCausalLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": HfGptForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": HfGptForTokenClassification,
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": HfGptForQuestionAnswering,
}

FAMILIES = {
    "gpt1": {"norm_position": "post", "activation_function": "gelu_new"},
    "gpt2": {"norm_position": "pre", "activation_function": "gelu_new"},
    # A window shorter than the test inputs (7 tokens), so the local layer's band really cuts.
    "gpt3": {"norm_position": "pre", "attention_layers": ["global", "local"], "local_window": 4},
}


@pytest.fixture(autouse=True, scope="module")
def registered_in_name_tables():
    """Put hf_gpt in transformers' static name tables while these tests run, as an in-tree model is."""
    with contextlib.ExitStack() as patches:
        for table, model_class in NAME_TABLES.items():
            patches.enter_context(mock.patch.dict(getattr(modeling_auto, table), {"hf_gpt": model_class.__name__}))
        yield


class HfGptModelTester:
    """Tiny configs and inputs, in the style of transformers' `GPT2ModelTester`."""

    def __init__(self, parent, family: str, batch_size=13, seq_length=7, vocab_size=99, hidden_size=32):
        self.parent = parent
        self.family = family
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 37
        self.max_position_embeddings = 512
        self.num_labels = 3
        self.num_choices = 4
        self.type_sequence_label_size = 2
        self.is_training = True
        self.base_model_class = HfGptModel
        self.causal_lm_class = HfGptForCausalLM
        self.sequence_classification_class = HfGptForSequenceClassification

    def get_config(self) -> HfGptConfig:
        special = self.vocab_size - 1
        return HfGptConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=0.02,
            num_labels=self.num_labels,
            bos_token_id=special,
            eos_token_id=special,
            pad_token_id=special,
            **FAMILIES[self.family],
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 1)  # no pad id inside
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


# Upstream tests that do not apply to hf_gpt, each with the reason (README's tests section lists them).
NOT_APPLICABLE = {
    "test_generation_tester_mixin_inheritance": "GenerationTesterMixin is not in the transformers sdist "
    "(tests/generation/test_utils.py ships only in its repository), so its generate() tests cannot run here",
}
# Those that do not apply to the GPT-3 shape only (its local layer's window is shorter than the inputs).
NOT_APPLICABLE_TO_LOCAL_LAYERS = {}


def skipping(reasons: dict[str, str]):
    """A class decorator: each named upstream test becomes a skip with its reason."""

    def decorate(cls):
        for name, reason in reasons.items():
            setattr(cls, name, unittest.skip(reason)(lambda self: None))
        return cls

    return decorate


class HfGptConformance(modeling_common.ModelTesterMixin, training_mixin.TrainingTesterMixin):
    family = "gpt2"
    all_model_classes = (
        HfGptModel,
        HfGptForCausalLM,
        HfGptForSequenceClassification,
        HfGptForTokenClassification,
        HfGptForQuestionAnswering,
        HfGptDoubleHeadsModel,
    )
    model_tester = None  # set per test in setUp
    test_resize_position_embeddings = True  # learned positions: resize_position_embeddings lengthens the context

    def setUp(self):
        self.model_tester = HfGptModelTester(self, self.family)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        """The double-heads model takes (batch, num_choices, length) and two kinds of labels, as GPT-2's does."""
        if model_class is not HfGptDoubleHeadsModel:
            return super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        tester = self.model_tester
        inputs = {
            key: value.unsqueeze(1).expand(-1, tester.num_choices, -1).contiguous()
            if isinstance(value, torch.Tensor) and value.ndim > 1
            else value
            for key, value in inputs_dict.items()
        }
        if return_labels:
            choices = (tester.batch_size, tester.num_choices)
            inputs["labels"] = torch.zeros((*choices, tester.seq_length), dtype=torch.long)
            inputs["mc_token_ids"] = torch.zeros(choices, dtype=torch.long)
            inputs["mc_labels"] = torch.zeros(tester.batch_size, dtype=torch.long)
        return inputs


@skipping(NOT_APPLICABLE)
class TestGpt2Conformance(HfGptConformance, unittest.TestCase):
    family = "gpt2"


@skipping(NOT_APPLICABLE)
class TestGpt1Conformance(HfGptConformance, unittest.TestCase):
    family = "gpt1"


@skipping({**NOT_APPLICABLE, **NOT_APPLICABLE_TO_LOCAL_LAYERS})
class TestGpt3Conformance(HfGptConformance, unittest.TestCase):
    family = "gpt3"


class TestConfigConformance(unittest.TestCase):
    def setUp(self):
        self.config_tester = configuration_common.ConfigTester(self, config_class=HfGptConfig, hidden_size=37)

    def test_config(self):
        tester = self.config_tester
        # Its table of common kwargs is not in the sdist: test_config_arguments_init below says so.
        with mock.patch.object(tester, "check_config_arguments_init", lambda: None):
            tester.run_common_tests()

    @unittest.skip("its table of common kwargs, tests/utils/test_configuration_utils.py, is not in the sdist")
    def test_config_arguments_init(self):
        self.config_tester.check_config_arguments_init()
