"""`hf-gpt generate`: sample from any causal LM folder (or Hub name), printing tokens as they come."""

from __future__ import annotations

import os

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer

from .loading import load_causal_lm


def sample(
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = 50,
    top_p: float | None = None,
    num_return_sequences: int = 1,
    greedy: bool = False,
    seed: int | None = None,
    stream: bool = True,
) -> list[str]:
    """Continue `prompt`, streaming each sample to stdout as it is generated; returns the continuations."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be at least 1, got {num_return_sequences}")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be > 0 (use --greedy for argmax decoding), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(lm.device)
    if input_ids.shape[1] == 0:  # an empty prompt starts a new document
        input_ids = torch.tensor([[tokenizer.eos_token_id]], device=lm.device)
    options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": top_k or 0}
    if top_p is not None and not greedy:
        options["top_p"] = top_p
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if seed is not None:
        torch.manual_seed(seed)
    continuations = []
    for index in range(num_return_sequences):  # one at a time: a streamer prints a single sequence
        if stream and num_return_sequences > 1:
            print(f"--- sample {index + 1} of {num_return_sequences} ---", flush=True)
        streamer = TextStreamer(tokenizer, skip_special_tokens=True) if stream else None
        output = lm.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            pad_token_id=pad,
            **options,
        )
        continuations.append(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))
    return continuations


def generate(model: str | os.PathLike, prompt: str, *, trust_remote_code: bool = False, **options) -> list[str]:
    """Load `model` and `sample` from it (see `sample` for the options)."""
    lm, tokenizer = load_causal_lm(model, trust_remote_code)
    return sample(lm, tokenizer, prompt, **options)
