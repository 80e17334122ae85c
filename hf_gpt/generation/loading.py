"""Loading a trained causal LM for use: the model on the best device, in eval mode, with its tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..files import looks_local, weights_as_value_errors


def load_causal_lm(
    model: str | os.PathLike, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Any causal LM folder or Hub name: the model (on the GPU when there is one, in eval mode) and its tokenizer,
    for generation and evaluation alike."""
    if looks_local(model) and not Path(model).is_dir():  # at once, rather than after the Hub's retries
        raise FileNotFoundError(f"model folder {model} does not exist")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    with weights_as_value_errors(model):
        lm = AutoModelForCausalLM.from_pretrained(str(model), trust_remote_code=trust_remote_code)
    return lm.to(device).eval(), tokenizer
