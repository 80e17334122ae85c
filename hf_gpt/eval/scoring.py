"""Measuring a causal LM: strided perplexity, and zero/one/few-shot task scores (GPT-2 and GPT-3 papers).

Everything reduces to one primitive, `score`: run a token sequence through the model and sum the log
probabilities of its last few tokens (and note whether each was the model's top choice). Perplexity
windows and answer log-likelihoods are both such requests, batched longest first. Tokenization of
context + answer follows lm-evaluation-harness (encode the whole, split where the context ends; a
trailing space moves to the answer; documents start after the bos token, else eos), so the two tools
give the same numbers for the same prompts, with tokenizers that add no special tokens of their own
(GPT-2's and ours: texts are encoded without them here).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .fewshot import COMPLETION, MULTIPLE_CHOICE, FewShotTask, build_prompt, choose_shots, stop_strings


@dataclass(frozen=True)
class ScoreRequest:
    """Score the last `scored` tokens of `tokens`, each predicted from the tokens before it."""

    tokens: list[int]
    scored: int


@dataclass(frozen=True)
class Score:
    log_likelihood: float  # natural log
    greedy: bool  # every scored token was the model's argmax
    tokens: int


def context_length(model: PreTrainedModel) -> int:
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if length := getattr(model.config, name, None):
            return length
    raise ValueError("the model's config names no context length (max_position_embeddings, n_positions or n_ctx)")


def padded(sequences: Sequence[list[int]], pad: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of the sequences padded to one length, on the left (for generation) or right."""
    width = max(len(ids) for ids in sequences)
    inputs = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, ids in enumerate(sequences):
        where = slice(width - len(ids), None) if left else slice(0, len(ids))
        inputs[row, where] = torch.tensor(ids)
        mask[row, where] = 1
    return inputs, mask


def prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a document starts after (bos, else eos: GPT-2's <|endoftext|> is both), so that its first
    token is scored too; lm-evaluation-harness picks the same."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither an eos nor a bos token to start documents with")
    return token


@torch.inference_mode()
def score(
    model: PreTrainedModel, requests: Sequence[ScoreRequest], *, batch_size: int = 8, desc: str = "scoring"
) -> list[Score]:
    """Log-likelihoods of the requests, in their order; batched longest first (little padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for request in requests:
        if not 1 <= request.scored < len(request.tokens):
            raise ValueError(f"a request scores {request.scored} of {len(request.tokens)} tokens; needs 1..length-1")
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].tokens))
    results: list[Score | None] = [None] * len(requests)
    device = model.device
    for first in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        batch = [requests[i] for i in order[first : first + batch_size]]
        # Right padding: causal attention never lets a real token see it.
        inputs, mask = padded([r.tokens[:-1] for r in batch], 0, left=False)
        logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device), use_cache=False).logits
        sums, greedy = [], []
        for row, request in enumerate(batch):
            end = len(request.tokens) - 1
            log_probs = logits[row, end - request.scored : end].float().log_softmax(-1)
            targets = torch.tensor(request.tokens[-request.scored :], device=log_probs.device)
            sums.append(log_probs.gather(-1, targets[:, None]).sum())
            greedy.append((log_probs.argmax(-1) == targets).all())
        # One read back from the device per batch, not two per request.
        for row, (total, top) in enumerate(zip(torch.stack(sums).tolist(), torch.stack(greedy).tolist(), strict=True)):
            results[order[first + row]] = Score(total, top, batch[row].scored)
    return results


# --- perplexity -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Perplexity:
    nll: float  # summed negative log-likelihood, nats
    tokens: int
    bytes: int  # UTF-8 bytes of the texts
    chars: int
    block_size: int
    stride: int

    @property
    def loss(self) -> float:
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    @property
    def nats_per_char(self) -> float:
        return self.nll / self.chars

    def as_dict(self) -> dict[str, float]:
        fields = ("loss", "perplexity", "bits_per_byte", "nats_per_char", "tokens", "bytes", "chars", "nll",
                  "block_size", "stride")  # fmt: skip
        return {name: getattr(self, name) for name in fields}


def sliding_windows(ids: list[int], block_size: int, stride: int) -> list[ScoreRequest]:
    """Windows over `ids` (ids[0] is the document's prefix token) that predict every later token exactly once.

    Each window predicts at most `stride` new tokens from an input of at most `block_size` tokens ending
    just before them, so every token after the first window sees at least block_size - stride tokens of
    context. stride = block_size: disjoint windows (lm-evaluation-harness's loglikelihood_rolling);
    stride = 1: every token with a full window of context (exact, and block_size times slower).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    windows, done = [], 1  # ids[:done] are predicted (or the prefix)
    while done < len(ids):
        end = min(done + (block_size if done == 1 else stride), len(ids))  # the first window fills the block
        start = max(0, end - 1 - block_size)
        windows.append(ScoreRequest(ids[start:end], end - done))
        done = end
    return windows


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    block_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> Perplexity:
    """Perplexity of `texts` (each a document, started after the prefix token) by strided sliding windows.

    block_size defaults to the model's context, at most 1024 tokens (the cost of a window grows with its
    square); stride (new tokens per window) to half the block.
    """
    block_size = min(context_length(model), 1024) if block_size is None else block_size
    if block_size > context_length(model):
        raise ValueError(f"block_size {block_size} exceeds the model's context of {context_length(model)} tokens")
    stride = max(1, block_size // 2) if stride is None else stride
    start = prefix_token(tokenizer)
    requests = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long on purpose
        requests += sliding_windows([start, *ids], block_size, stride)
    if not requests:
        raise ValueError("nothing to score: the texts are empty")
    scores = score(model, requests, batch_size=batch_size, desc="perplexity")
    return Perplexity(
        nll=-sum(s.log_likelihood for s in scores),
        tokens=sum(s.tokens for s in scores),
        bytes=sum(len(text.encode("utf-8")) for text in texts),
        chars=sum(len(text) for text in texts),
        block_size=block_size,
        stride=stride,
    )


# --- zero / one / few-shot ------------------------------------------------------------------------------


def encode_pair(tokenizer: PreTrainedTokenizerBase, context: str, answer: str) -> tuple[list[int], list[int]]:
    """Context and answer tokens as lm-evaluation-harness splits them (whole text encoded, then cut)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, answer = context[:-spaces], context[-spaces:] + answer
    whole = tokenizer(context + answer, add_special_tokens=False)["input_ids"]
    if not context:
        return [prefix_token(tokenizer)], whole
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids) :]


def answer_requests(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]], block_size: int
) -> list[ScoreRequest]:
    """One request per (context, answer); contexts longer than the block lose their oldest tokens."""
    requests = []
    for context, answer in pairs:
        context_ids, answer_ids = encode_pair(tokenizer, context, answer)
        if not answer_ids:
            raise ValueError(
                f"the answer {answer!r} adds no token of its own after the context {context[-30:]!r}: its text "
                "merges into the context's last token; end the context on a word boundary"
            )
        if len(answer_ids) > block_size:
            raise ValueError(f"the answer {answer[:40]!r} is {len(answer_ids)} tokens, more than the block")
        requests.append(ScoreRequest((context_ids + answer_ids)[-(block_size + 1) :], len(answer_ids)))
    return requests


def log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    desc: str = "log-likelihoods",
) -> list[Score]:
    """log P(answer | context) for each pair, and whether greedy decoding would produce the answer."""
    return score(model, answer_requests(tokenizer, pairs, context_length(model)), batch_size=batch_size, desc=desc)


@torch.inference_mode()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    desc: str = "generating",
) -> list[str]:
    """Greedy continuations, cut at the first stop string; prompts are left-padded and left-truncated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    room = context_length(model) - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token(tokenizer)
    empty = [prefix_token(tokenizer)]  # an empty prompt starts a document
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"][-room:] or empty for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    for first in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        rows = order[first : first + batch_size]
        inputs, mask = padded([encoded[i] for i in rows], pad, left=True)
        width = inputs.shape[1]
        generated = model.generate(
            inputs.to(model.device),
            attention_mask=mask.to(model.device),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            stop_strings=list(stop) or None,
            tokenizer=tokenizer,
        )
        for row, index in enumerate(rows):
            text = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
            outputs[index] = cut_at_stop(text, stop)
    return outputs


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    for string in stop:
        text = text.split(string, 1)[0]
    return text


@dataclass
class ShotResult:
    shots: int
    examples: int
    metrics: dict[str, float]  # multiple choice: acc, acc_norm; completion: exact_match


def evaluate_task(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: FewShotTask,
    shots: int,
    *,
    seed: int = 0,
    batch_size: int = 8,
    limit: int | None = None,
    max_new_tokens: int | None = None,
) -> ShotResult:
    """Score `task`'s test examples with `shots` solved train examples in each prompt.

    Multiple choice: the choice with the highest log-likelihood (acc), or per character of the choice
    (acc_norm, lm-evaluation-harness's length normalisation), and per token (acc_token_norm, the GPT-3
    paper's). Completion: greedy generation up to a newline, compared with the target (exact_match).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for every test example), got {limit}")
    examples = task.test[:limit]
    prompts = [build_prompt(task, record, choose_shots(task, shots, seed, i)) for i, record in enumerate(examples)]
    desc = f"{task.name} {shots}-shot"
    if task.kind == MULTIPLE_CHOICE:
        pairs = [
            (prompt, task.target_delimiter + choice)
            for prompt, record in zip(prompts, examples, strict=True)
            for choice in record["choices"]
        ]
        scores = iter(log_likelihoods(model, tokenizer, pairs, batch_size=batch_size, desc=desc))
        hits = {"acc": 0, "acc_norm": 0, "acc_token_norm": 0}
        for record in examples:
            choice_scores = [next(scores) for _ in record["choices"]]
            raw = [s.log_likelihood for s in choice_scores]
            per_char = [s / len(c) for s, c in zip(raw, record["choices"], strict=True)]
            per_token = [s.log_likelihood / s.tokens for s in choice_scores]
            for metric, values in (("acc", raw), ("acc_norm", per_char), ("acc_token_norm", per_token)):
                hits[metric] += max(range(len(values)), key=values.__getitem__) == record["answer"]
        metrics = {name: count / len(examples) for name, count in hits.items()}
    elif task.kind == COMPLETION:
        longest = max(
            len(tokenizer(task.target_delimiter + r["target"], add_special_tokens=False)["input_ids"]) for r in examples
        )
        completions = greedy_completions(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens or longest + 4,
            stop=stop_strings(task),
            batch_size=batch_size,
            desc=desc,
        )
        right = sum(c.strip() == r["target"] for c, r in zip(completions, examples, strict=True))
        metrics = {"exact_match": right / len(examples)}
    else:
        raise ValueError(f"unknown task kind {task.kind!r}")
    return ShotResult(shots, len(examples), metrics)


def results_table(task: FewShotTask, results: Sequence[ShotResult]) -> str:
    """A Markdown table: one row per shot count, one column per metric."""
    names = list(results[0].metrics)
    lines = [f"| {task.name} | examples | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for result in results:
        values = " | ".join(f"{result.metrics[name]:.4f}" for name in names)
        lines.append(f"| {result.shots}-shot | {result.examples} | {values} |")
    return "\n".join(lines)


def results_record(task: FewShotTask, results: Sequence[ShotResult], **settings: Any) -> dict[str, Any]:
    return {
        "task": task.name,
        "kind": task.kind,
        **settings,
        "results": {f"{r.shots}-shot": {"examples": r.examples, **r.metrics} for r in results},
    }
