"""hf_gpt: the GPT family (GPT-1, GPT-2, GPT-3 shapes) as first-class Hugging Face models.

Importing the package registers `HfGptConfig` and every head with the transformers Auto classes, and, when peft
is installed, hf_gpt's default target modules with PEFT (as GPT-2 has them).
"""

import copy
import importlib.util

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_hf_gpt import PRESETS, HfGptConfig
from .generation.static_decoder import StaticDecoder
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


# Post-norm models (GPT-1) have an `nn.Identity` as `ln_f`, which LN tuning cannot wrap (it has no parameters).
_PEFT_DEFAULTS_UNLIKE_GPT2 = {"TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING": ["ln_1", "ln_2"]}


def _register_peft_defaults() -> None:
    """Give hf_gpt GPT-2's entry in every PEFT default target-module mapping.

    PEFT picks default `target_modules` (LoRA, IA3, AdaLoRA, LoHa, ...) by `model_type`; our module paths are
    GPT-2's (`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`, `ln_1`, `ln_2`, `ln_f`), so GPT-2's
    defaults hold for us, but for the exception above. Scanning the mappings instead of naming them covers the
    methods a newer peft adds. Not covered: adaption prompt, which checks `model_type == "gpt2"` in code.
    """
    if importlib.util.find_spec("peft") is None:  # optional dependency
        return
    try:
        # About 0.2 s on top of the ~5 s transformers already costs here: cheaper than the surprise of defaults
        # that depend on whether peft happened to be imported before hf_gpt.
        from peft.utils import constants
    except ImportError:  # a peft that cannot import raises again when the user imports it; hf_gpt still works
        return
    for name, mapping in vars(constants).items():
        if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(mapping, dict) and "gpt2" in mapping:
            mapping.setdefault(HfGptConfig.model_type, copy.copy(_PEFT_DEFAULTS_UNLIKE_GPT2.get(name, mapping["gpt2"])))


_register_peft_defaults()

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
