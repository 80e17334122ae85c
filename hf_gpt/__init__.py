"""hf_gpt: the GPT family (GPT-1, GPT-2, GPT-3 shapes) as first-class Hugging Face models.

Importing the package registers `HfGptConfig` and every head with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_hf_gpt import PRESETS, HfGptConfig
from .decoding import StaticDecoder
from .modeling_hf_gpt import (
    HfGptDoubleHeadsModel,
    HfGptForCausalLM,
    HfGptForQuestionAnswering,
    HfGptForSequenceClassification,
    HfGptForTokenClassification,
    HfGptModel,
    HfGptPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(HfGptConfig.model_type, HfGptConfig, exist_ok=True)
for _auto_class, _model_class in (
    (AutoModel, HfGptModel),
    (AutoModelForCausalLM, HfGptForCausalLM),
    (AutoModelForSequenceClassification, HfGptForSequenceClassification),
    (AutoModelForTokenClassification, HfGptForTokenClassification),
    (AutoModelForQuestionAnswering, HfGptForQuestionAnswering),
):
    _auto_class.register(HfGptConfig, _model_class, exist_ok=True)

__all__ = [
    "PRESETS",
    "HfGptConfig",
    "HfGptPreTrainedModel",
    "HfGptModel",
    "HfGptForCausalLM",
    "HfGptForSequenceClassification",
    "HfGptForTokenClassification",
    "HfGptForQuestionAnswering",
    "HfGptDoubleHeadsModel",
    "StaticDecoder",
]
