"""StaticDecoder: the same tokens as model.generate(), from a fixed-shape cache and a step that compiles whole.

The tiny models' wide init makes every position, mask and cache slot matter: a wrong one changes tokens.
"""

from types import SimpleNamespace

import pytest
import torch
from conftest import seeded, tiny_config

from hf_gpt import HfGptForCausalLM, HfGptForSequenceClassification
from hf_gpt.generation.static_decoder import StaticDecoder

pytestmark = pytest.mark.model
PAD = 1
NEW = 24  # with the 6-token prompts, longer than gpt3-tiny's local window (16), so its band shows


def prompts(config, batch, length=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, config.vocab_size, (batch, length), generator=generator)


def reference(model, ids, **kwargs):
    """transformers' generate(), greedy, no EOS unless asked."""
    mask = kwargs.pop("attention_mask", torch.ones_like(ids))
    options = {"max_new_tokens": NEW, "do_sample": False, "pad_token_id": PAD, "eos_token_id": None, **kwargs}
    return model.generate(ids, attention_mask=mask, **options)


@pytest.fixture
def model(preset):
    return seeded(HfGptForCausalLM, tiny_config(preset, pad_token_id=PAD))


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_tokens_equal_generate(model, batch):
    ids = prompts(model.config, batch)
    ours = StaticDecoder(model, batch, max_length=6 + NEW + 5).generate(ids, NEW)
    assert ours.shape == (batch, 6 + NEW)
    assert torch.equal(ours, reference(model, ids))
    assert all(len(set(row.tolist())) >= 8 for row in ours[:, 6:])  # the models do not just repeat a token


def test_eager_attention_decodes_alike(preset):
    model = seeded(HfGptForCausalLM, tiny_config(preset, pad_token_id=PAD), attn_implementation="eager")
    ids = prompts(model.config, 2)
    assert torch.equal(StaticDecoder(model, 2, max_length=6 + NEW).generate(ids, NEW), reference(model, ids))


def test_one_decoder_serves_prompts_of_any_length(model):
    decoder = StaticDecoder(model, 2, max_length=64)
    for length in (9, 3, 6):  # a shorter prompt after a longer one: stale cache slots must stay hidden
        ids = prompts(model.config, 2, length, seed=length)
        assert torch.equal(decoder.generate(ids, 20), reference(model, ids, max_new_tokens=20))


def test_a_left_padded_batch_generates_what_generate_does(model):
    rows = [prompts(model.config, 1, n, seed=n)[0] for n in (9, 4, 6)]
    ids, mask = torch.full((3, 9), PAD), torch.zeros(3, 9, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 9 - len(row) :], mask[i, 9 - len(row) :] = row, 1
    ours = StaticDecoder(model, 3, max_length=9 + NEW).generate(ids, NEW, attention_mask=mask)
    assert torch.equal(ours, reference(model, ids, attention_mask=mask))


def test_eos_rows_then_emit_padding_and_generation_stops_when_all_have_finished(model):
    ids = prompts(model.config, 3)
    free = reference(model, ids)[:, 6:]
    decoder = StaticDecoder(model, 3, max_length=6 + NEW)
    # EOS ids the rows reach at different steps (2, 5 and 9 new tokens), so each row stops somewhere else.
    eos = [free[0, 2].item(), free[1, 5].item(), free[2, 9].item()]
    ours = decoder.generate(ids, NEW, eos_token_id=eos, pad_token_id=PAD)
    expected = reference(model, ids, eos_token_id=eos)
    assert ours.shape[1] < 6 + NEW  # stopped early, at the step generate() stops at
    assert torch.equal(ours, expected)
    assert (ours[:, 6:] == PAD).any()
    # EOS only partly reached (one id): unfinished rows run to the end, finished ones emit padding.
    ours = decoder.generate(ids, NEW, eos_token_id=eos[1], pad_token_id=PAD)
    assert torch.equal(ours, reference(model, ids, eos_token_id=eos[1]))
    # min_new_tokens suppresses EOS until then, as generate() does.
    ours = decoder.generate(ids, NEW, eos_token_id=eos, pad_token_id=PAD, min_new_tokens=12)
    assert torch.equal(ours, reference(model, ids, eos_token_id=eos, min_new_tokens=12))


def test_sampling_is_reproducible_random_and_stays_in_the_top_k(model):
    ids = prompts(model.config, 3)
    decoder = StaticDecoder(model, 3, max_length=6 + NEW)

    def sample(seed, **kwargs):
        return decoder.generate(ids, NEW, do_sample=True, generator=torch.Generator().manual_seed(seed), **kwargs)

    first = sample(0, top_k=5, temperature=1.5)
    assert torch.equal(first, sample(0, top_k=5, temperature=1.5))
    assert not torch.equal(first, sample(1, top_k=5, temperature=1.5))
    with torch.no_grad():
        logits = model(first).logits[:, 5:-1]  # the logits each new token was drawn from
    assert torch.isin(first[:, 6:, None], logits.topk(5, dim=-1).indices).any(-1).all()
    assert not torch.isin(first[:, 6:, None], logits.topk(1, dim=-1).indices).any(-1).all()  # not greedy
    assert torch.equal(sample(2, top_k=1), reference(model, ids))


def test_sampling_draws_from_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(20000, 1)
    tokens = StaticDecoder.choose(logits, True, 1.0, None, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(tokens[:, 0], minlength=5) / len(tokens)
    assert torch.allclose(frequencies, logits[0].softmax(-1), atol=0.01), frequencies
    hot = StaticDecoder.choose(logits, True, 0.5, 2, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(hot[:, 0], minlength=5) / len(hot)
    assert torch.allclose(frequencies, torch.tensor([0.8808, 0.1192, 0, 0, 0]), atol=0.01), frequencies


@pytest.mark.slow
def test_the_compiled_step_is_one_graph_with_the_cache_as_static_buffers(preset):
    model = seeded(HfGptForCausalLM, tiny_config(preset, pad_token_id=PAD))
    ids = prompts(model.config, 2)
    torch._dynamo.reset()  # other decoders compiled the same method: start its count afresh
    decoder = StaticDecoder(model, 2, max_length=6 + NEW, compile=True)
    eager = StaticDecoder(model, 2, max_length=6 + NEW)
    with torch._dynamo.config.patch(error_on_recompile=True):  # every step, any prompt length: one graph
        assert torch.equal(decoder.generate(ids, NEW), eager.generate(ids, NEW))
        assert torch.equal(decoder.generate(ids[:, :3], 20), eager.generate(ids[:, :3], 20))
    # Static inputs are what lets CUDA graphs capture a step that writes the cache in place (a mutated
    # ordinary input makes inductor skip them); torch marks a module's buffers static when it traces them.
    caches = [tensor for cache in decoder.caches for tensor in (cache.keys, cache.values)]
    assert all(getattr(tensor, "_dynamo_static_input_type", None) for tensor in caches)


def test_refuses_what_it_cannot_decode():
    config = tiny_config("gpt3-tiny", pad_token_id=PAD)
    model = seeded(HfGptForCausalLM, config)
    with pytest.raises(ValueError, match="needs an HfGptForCausalLM"):
        StaticDecoder(seeded(HfGptForSequenceClassification, config), 1, 16)
    flex = seeded(HfGptForCausalLM, config, attn_implementation="flex_attention")
    with pytest.raises(ValueError, match="this model uses 'flex_attention'"):
        StaticDecoder(flex, 1, 16)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        StaticDecoder(model, 0, 16)
    with pytest.raises(ValueError, match="max_length=129 exceeds the model's max_position_embeddings=128"):
        StaticDecoder(model, 1, 129)
    decoder = StaticDecoder(model, 2, 16)
    ids = prompts(config, 2)
    for call, message in [
        (lambda: decoder.generate(ids[:1], 4), "batch size 1, but this decoder was built for 2"),
        (lambda: decoder.generate(ids, 11), "prompt length 6 \\+ max_new_tokens 11 = 17 exceeds max_length=16"),
        (lambda: decoder.generate(ids, 0), "max_new_tokens must be a positive integer, got 0"),
        (lambda: decoder.generate(ids[:, :0], 4), "at least one token"),
        (lambda: decoder.generate(ids.float(), 4), "2D \\(batch, length\\) LongTensor"),
        (lambda: decoder.generate(ids.clone().fill_(1024), 4), "token id 1024, outside the vocabulary"),
        (lambda: decoder.generate(ids, 4, attention_mask=torch.tensor([[1] * 5 + [0]] * 2)), "left"),
        (lambda: decoder.generate(ids, 4, attention_mask=torch.ones(2, 5)), "shape \\(2, 5\\), expected \\(2, 6\\)"),
        (lambda: decoder.generate(ids, 4, attention_mask=torch.full((2, 6), 0.5)), "attention_mask holds 0.5"),
        (lambda: decoder.generate(ids, 4, do_sample=True, temperature=0.0), "temperature must be > 0"),
        (lambda: decoder.generate(ids, 4, do_sample=True, top_k=0), "top_k must be a positive integer"),
        (lambda: decoder.generate(ids, 4, generator=SimpleNamespace(device=torch.device("cuda"))), "generator is on"),
        (lambda: decoder.generate(ids, 4, eos_token_id=[3, 1024]), "eos_token_id=1024 is outside"),
        (lambda: decoder.generate(ids, 4, pad_token_id=-1), "pad_token_id=-1 is outside"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()
