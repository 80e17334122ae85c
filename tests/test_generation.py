"""generate(): every decoding strategy, and the equivalences a correct cache implies.

A forward that silently ignored the cache (e.g. under the other transformers version's argument name)
would still run; these tests catch it by comparing against cache-free or differently cached runs.
"""

import pytest
import torch
from conftest import seeded, tiny_config

from hf_gpt import HfGptForCausalLM

pytestmark = pytest.mark.model
PAD = 1


def prompts(config, batch=2, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, config.vocab_size, (batch, length), generator=generator)


def greedy(model, ids, **kwargs):
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": PAD, **kwargs}
    return model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)


@pytest.fixture
def model(preset):
    return seeded(HfGptForCausalLM, tiny_config(preset, pad_token_id=PAD))


def test_the_test_models_continue_their_context_rather_than_repeat_a_token(model):
    # Equalities between decoding paths prove nothing if every path just repeats the last token.
    for row in greedy(model, prompts(model.config))[:, 6:]:
        assert len(set(row.tolist())) >= 8, row


def test_greedy_with_cache_equals_greedy_without(model):
    ids = prompts(model.config)
    with_cache = greedy(model, ids)
    assert with_cache.shape == (2, 6 + 24)
    assert torch.equal(with_cache, greedy(model, ids, use_cache=False))


def test_static_cache_equals_dynamic_cache(model):
    ids = prompts(model.config)
    assert torch.equal(greedy(model, ids, cache_implementation="static"), greedy(model, ids))


def test_eager_and_sdpa_generate_the_same_tokens(preset):
    config = tiny_config(preset, pad_token_id=PAD)
    ids = prompts(config)
    eager = seeded(HfGptForCausalLM, config, attn_implementation="eager")
    sdpa = seeded(HfGptForCausalLM, config, attn_implementation="sdpa")
    assert torch.equal(greedy(eager, ids), greedy(sdpa, ids))


def test_a_left_padded_batch_generates_what_each_row_generates_alone(model):
    rows = [prompts(model.config, batch=1, length=n, seed=n)[0] for n in (9, 4, 6)]
    ids = torch.full((3, 9), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 9 - len(row) :], mask[i, 9 - len(row) :] = row, 1
    for cache_implementation in (None, "static"):
        batch = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=20,
            do_sample=False,
            pad_token_id=PAD,
            cache_implementation=cache_implementation,
        )
        for i, row in enumerate(rows):
            assert torch.equal(batch[i, 9:], greedy(model, row[None], max_new_tokens=20)[0, len(row) :])


def test_sampling_honours_seed_temperature_top_k_and_top_p(model):
    ids = prompts(model.config)

    def sample(seed, **kwargs):
        torch.manual_seed(seed)
        return model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=24, pad_token_id=PAD, **kwargs
        )

    first = sample(0, temperature=1.3, top_k=50, top_p=0.9)
    assert torch.equal(first, sample(0, temperature=1.3, top_k=50, top_p=0.9))  # reproducible
    assert not torch.equal(first, sample(1, temperature=1.3, top_k=50, top_p=0.9))  # random
    assert int(first.max()) < model.config.vocab_size
    # Keeping only the single most likely token (top_k=1, or a tiny top_p) is greedy decoding.
    assert torch.equal(sample(2, top_k=1), greedy(model, ids))
    assert torch.equal(sample(3, top_p=1e-6, top_k=0), greedy(model, ids))


def test_beam_search_with_cache_equals_beam_search_without(model):
    ids = prompts(model.config)
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=12, do_sample=False, pad_token_id=PAD)
    with_cache = model.generate(ids, attention_mask=torch.ones_like(ids), **beams)
    assert with_cache.shape == (4, 6 + 12)
    assert torch.equal(with_cache, model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **beams))


def test_assisted_decoding_returns_the_target_models_greedy_tokens(model, preset):
    # A smaller draft model proposes tokens; the target model must accept only its own greedy choices.
    draft = seeded(HfGptForCausalLM, tiny_config(preset, num_hidden_layers=1, pad_token_id=PAD), seed=1)
    ids = prompts(model.config, batch=1)
    assisted = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        assistant_model=draft,
        max_new_tokens=24,
        do_sample=False,
        pad_token_id=PAD,
    )
    assert torch.equal(assisted, greedy(model, ids, use_cache=False))


def test_an_empty_prompt_or_a_mask_holding_more_than_0_and_1_is_refused_naming_it():
    """Both failed inside the forward: "cannot reshape tensor of 0 elements", and position ids from a mask of 0.5s."""
    model = seeded(HfGptForCausalLM, tiny_config(pad_token_id=PAD))
    with pytest.raises(ValueError, match=r"input_ids has shape \(1, 0\): .*a prompt of at least one token"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    ids = prompts(model.config)
    with pytest.raises(ValueError, match=r"attention_mask holds 0.5: .*only 0 \(padding\) and 1 \(a token\)"):
        model.generate(ids, attention_mask=torch.full(ids.shape, 0.5), max_new_tokens=4, pad_token_id=PAD)
