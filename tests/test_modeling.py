"""The model contract with transformers: heads, attention backends, caches, padding, training hooks."""

import copy
import json

import pytest
import torch
from conftest import seeded, tiny_config
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache
from transformers.utils import is_flash_attn_2_available

from hf_gpt import (
    HfGptConfig,
    HfGptDoubleHeadsModel,
    HfGptForCausalLM,
    HfGptForQuestionAnswering,
    HfGptForSequenceClassification,
    HfGptForTokenClassification,
    HfGptModel,
)
from hf_gpt import modeling_hf_gpt as modeling
from hf_gpt.modeling_hf_gpt import CACHE_FIELD

pytestmark = pytest.mark.model
PAD = 1


def random_ids(config, batch=2, length=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, config.vocab_size, (batch, length), generator=generator)


def cache_of(output):
    return getattr(output, CACHE_FIELD)


def test_every_head_runs_on_one_shared_body(preset):
    config = tiny_config(preset, num_labels=3, pad_token_id=PAD)
    ids = random_ids(config)
    body_keys = set(seeded(HfGptModel, config).state_dict())
    shapes = {
        HfGptModel: lambda out: out.last_hidden_state.shape == (2, 12, config.hidden_size),
        HfGptForCausalLM: lambda out: out.logits.shape == (2, 12, config.vocab_size),
        HfGptForSequenceClassification: lambda out: out.logits.shape == (2, 3),
        HfGptForTokenClassification: lambda out: out.logits.shape == (2, 12, 3),
        HfGptForQuestionAnswering: lambda out: out.start_logits.shape == out.end_logits.shape == (2, 12),
    }
    for model_class, shape_ok in shapes.items():
        model = seeded(model_class, config)
        assert shape_ok(model(ids)), model_class.__name__
        if model_class is not HfGptModel:
            assert {f"transformer.{key}" for key in body_keys} <= set(model.state_dict())


def assert_same_logits_as_eager(config, attn_implementation):
    ids = random_ids(config, length=40)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0  # left padding in one row
    eager = seeded(HfGptForCausalLM, config, attn_implementation="eager")
    fused = seeded(HfGptForCausalLM, config, attn_implementation=attn_implementation)
    assert fused.config._attn_implementation == attn_implementation
    with torch.no_grad():  # flex_attention has no backward on CPU
        expected = eager(ids, attention_mask=mask).logits
        actual = fused(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(actual[real], expected[real], atol=2e-4, rtol=1e-4)


def test_sdpa_matches_eager(preset):
    assert_same_logits_as_eager(tiny_config(preset, pad_token_id=PAD), "sdpa")


@pytest.mark.slow
def test_flex_attention_matches_eager():
    # flex_attention compiles per shape, so one preset: the one with both global and local layers.
    assert_same_logits_as_eager(tiny_config("gpt3-tiny", pad_token_id=PAD), "flex_attention")


@pytest.mark.skipif(not (torch.cuda.is_available() and is_flash_attn_2_available()), reason="needs CUDA and flash-attn")
def test_flash_attention_2_matches_sdpa():
    config = tiny_config("gpt3-tiny", pad_token_id=PAD)
    ids = random_ids(config, length=40).cuda()
    sdpa = seeded(HfGptForCausalLM, config, attn_implementation="sdpa", dtype=torch.bfloat16).cuda()
    flash = seeded(HfGptForCausalLM, config, attn_implementation="flash_attention_2", dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        torch.testing.assert_close(flash(ids).logits, sdpa(ids).logits, atol=2e-2, rtol=2e-2)


def test_decoding_token_by_token_with_a_cache_matches_one_full_forward(preset):
    config = tiny_config(preset)
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config, length=40)  # longer than gpt3-tiny's local window of 16
    full = model(ids).logits
    out = model(ids[:, :10], use_cache=True)
    cache, steps = cache_of(out), [out.logits]
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 10
    for position in range(10, 40):
        out = model(ids[:, position : position + 1], cache=cache)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-4, rtol=1e-4)


def test_past_key_values_is_accepted_as_the_cache_argument_name():
    """transformers <= 5.23 passes `past_key_values`, newer versions `cache`: both must be honoured."""
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config, length=8)
    full = model(ids).logits[:, -1]
    for name in ("cache", "past_key_values"):
        cache = DynamicCache(config=config)
        model(ids[:, :7], **{name: cache})
        assert cache.get_seq_length() == 7
        torch.testing.assert_close(model(ids[:, 7:], **{name: cache}).logits[:, -1], full, atol=2e-4, rtol=1e-4)
    both = {"cache": DynamicCache(config=config), "past_key_values": DynamicCache(config=config)}
    if CACHE_FIELD == "cache":  # as transformers' own models on 5.24+: the old name is dropped, with a warning
        with pytest.warns(FutureWarning, match="Both `past_key_values` and `cache` are set"):
            model(ids, **both)
        assert both["cache"].get_seq_length() == 8 and both["past_key_values"].get_seq_length() == 0
    else:
        with pytest.raises(ValueError, match="not both"):
            model(ids, **both)


def test_static_cache_matches_dynamic_cache(preset):
    config = tiny_config(preset)
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config, batch=1, length=24)
    dynamic, static = DynamicCache(config=config), StaticCache(config=config, max_cache_len=64)
    logits = {}
    for name, cache in (("dynamic", dynamic), ("static", static)):
        steps = [model(ids[:, :20], cache=cache).logits[:, -1]]
        for position in range(20, 24):
            steps.append(model(ids[:, position : position + 1], cache=cache).logits[:, -1])
        logits[name] = torch.stack(steps)
    torch.testing.assert_close(logits["static"], logits["dynamic"], atol=2e-4, rtol=1e-4)


def test_local_layers_attend_only_to_their_window():
    config = tiny_config("gpt2-tiny", attention_layers=["local", "local"], local_window=4)
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config, batch=1, length=20)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % config.vocab_size
    before, after = model(ids).logits, model(changed).logits
    # Two banded layers of width 4 reach 2 * 3 = 6 tokens back: position 7 and later never see token 0.
    assert not torch.allclose(before[0, 6], after[0, 6])
    torch.testing.assert_close(before[0, 7:], after[0, 7:])
    dense = seeded(HfGptForCausalLM, tiny_config("gpt2-tiny"))
    assert not torch.allclose(dense(ids).logits[0, -1], dense(changed).logits[0, -1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_gives_each_row_the_logits_it_gets_alone(preset, side):
    config = tiny_config(preset, pad_token_id=PAD)
    model = seeded(HfGptForCausalLM, config)
    rows = [random_ids(config, batch=1, length=n, seed=n)[0] for n in (30, 21, 9)]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = row, 1
    batched = model(ids, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        torch.testing.assert_close(batched[i][mask[i].bool()], alone, atol=2e-4, rtol=1e-4)


def test_a_left_padded_batch_decoded_with_a_cache_matches_each_row_alone(preset):
    """Positions come from the attention mask on every step, not only on the prompt (no generate())."""
    config = tiny_config(preset, pad_token_id=PAD)
    model = seeded(HfGptForCausalLM, config)
    rows = [random_ids(config, batch=1, length=n, seed=n)[0] for n in (20, 11)]
    ids = torch.full((2, 20), PAD)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, 20 - len(row) :], mask[i, 20 - len(row) :] = row, 1
    steps = random_ids(config, length=6, seed=99)
    cache = DynamicCache(config=config)
    model(ids, attention_mask=mask, cache=cache)
    batched = []
    for t in range(6):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        batched.append(model(steps[:, t : t + 1], attention_mask=mask, cache=cache).logits[:, -1])
    for i, row in enumerate(rows):
        alone = model(torch.cat([row, steps[i]])[None]).logits[0, -6:]
        torch.testing.assert_close(torch.stack([b[i] for b in batched]), alone, atol=2e-4, rtol=1e-4)


def test_residual_projections_start_scaled_down_by_depth():
    """GPT-2's init: N(0, 0.02), and the residual output projections 1/sqrt(2 * layers) of that."""
    config = HfGptConfig.from_preset("gpt2-tiny", hidden_size=256, num_hidden_layers=8)
    torch.manual_seed(0)
    model = HfGptForCausalLM(config)
    scaled = 0.02 / (2 * 8) ** 0.5
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.all(block.attn.c_proj.bias == 0) and torch.all(block.ln_1.weight == 1)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(preset):
    config = tiny_config(preset)
    ids = random_ids(config, length=16)
    grads = {}
    for checkpointing in (False, True):
        model = seeded(HfGptForCausalLM, config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(block.gradient_checkpointing for block in model.transformer.h)
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads[checkpointing] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads[True][0], grads[False][0])
    for name, grad in grads[False][1].items():
        torch.testing.assert_close(grads[True][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_input_and_output_embeddings_are_tied_and_stay_tied_after_loading(tmp_path):
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    assert model.lm_head.weight is model.transformer.wte.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight)

    untied = seeded(HfGptForCausalLM, tiny_config(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    extra = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters())
    assert extra == config.vocab_size * config.hidden_size


def test_resize_token_embeddings_keeps_old_rows_and_the_tie():
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    old = model.transformer.wte.weight.detach().clone()
    model.resize_token_embeddings(config.vocab_size + 8)
    assert model.config.vocab_size == config.vocab_size + 8
    assert model.transformer.wte.weight.shape[0] == model.lm_head.weight.shape[0] == config.vocab_size + 8
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(model.transformer.wte.weight[: config.vocab_size], old)
    new_token = torch.tensor([[config.vocab_size + 7]])
    assert model(new_token).logits.shape == (1, 1, config.vocab_size + 8)


def test_inputs_embeds_gives_the_same_output_as_input_ids(preset):
    config = tiny_config(preset)
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config)
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(ids).logits)


def test_sdpa_returns_the_eager_attention_weights_on_request(preset):
    """sdpa has no weights to return: such a call runs the eager way, masks included (left padding here)."""
    config = tiny_config(preset)
    eager = seeded(HfGptForCausalLM, config, attn_implementation="eager")
    sdpa = seeded(HfGptForCausalLM, config, attn_implementation="sdpa")
    ids = random_ids(config, length=20)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    expected = eager(ids, attention_mask=mask, output_attentions=True)
    got = sdpa(ids, attention_mask=mask, output_attentions=True)
    assert len(got.attentions) == config.num_hidden_layers
    for want, have in zip(expected.attentions, got.attentions, strict=True):
        torch.testing.assert_close(have, want)
    torch.testing.assert_close(got.logits, expected.logits)
    real = mask.bool()  # padded positions attend to nothing, which the kernels fill differently
    torch.testing.assert_close(sdpa(ids, attention_mask=mask).logits[real], expected.logits[real], rtol=1e-4, atol=1e-4)
    assert sdpa(ids, attention_mask=mask).attentions is None


def test_hidden_states_and_attention_weights_are_returned_on_request(preset):
    config = tiny_config(preset)
    model = seeded(HfGptModel, config, attn_implementation="eager")
    ids = random_ids(config, length=20)
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    assert len(out.attentions) == config.num_hidden_layers
    for kind, weights in zip(config.attention_layers, out.attentions, strict=True):
        assert weights.shape == (2, config.num_attention_heads, 20, 20)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, config.num_attention_heads, 20))
        assert torch.all(weights.triu(diagonal=1) == 0)  # causal
        if kind == "local":
            assert torch.all(weights.tril(diagonal=-config.local_window) == 0)  # banded
    plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None


def test_return_dict_false_gives_a_tuple():
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config)
    as_tuple = model(ids, labels=ids, return_dict=False)
    as_dict = model(ids, labels=ids)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_logits_to_keep_computes_only_the_last_positions():
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    ids = random_ids(config)
    full = model(ids).logits
    last = model(ids, logits_to_keep=1).logits
    assert last.shape == (2, 1, config.vocab_size)
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(model(ids, logits_to_keep=3).logits, full[:, -3:])


def test_device_map_auto_loads_and_never_splits_a_block(tmp_path):
    from accelerate import infer_auto_device_map

    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    ids = random_ids(config)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)

    block_bytes = sum(p.numel() * p.element_size() for p in model.transformer.h[0].parameters())
    device_map = infer_auto_device_map(
        model,
        max_memory={"cpu": int(2.5 * block_bytes), "disk": 10**12},
        no_split_module_classes=model._no_split_modules,
    )
    assert set(device_map.values()) == {"cpu", "disk"}  # the model really was split ...
    for name in device_map:  # ... but only between blocks, never inside one
        assert not name.startswith("transformer.h.") or name.count(".") == 2, name


def test_sequence_classification_pools_the_last_real_token_for_left_and_right_padding():
    config = tiny_config(num_labels=3, pad_token_id=PAD)
    model = seeded(HfGptForSequenceClassification, config)
    row = random_ids(config, batch=1, length=9)[0]
    alone = model(row[None]).logits
    pad = torch.full((4,), PAD)
    ones, zeros = torch.ones(9, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    left = model(torch.cat([pad, row])[None], attention_mask=torch.cat([zeros, ones])[None]).logits
    right = model(torch.cat([row, pad])[None], attention_mask=torch.cat([ones, zeros])[None]).logits
    right_no_mask = model(torch.cat([row, pad])[None]).logits  # falls back to pad_token_id
    for logits in (left, right, right_no_mask):
        torch.testing.assert_close(logits, alone, atol=2e-4, rtol=1e-4)
    labels = torch.tensor([2])
    expected = torch.nn.functional.cross_entropy(alone, labels)
    torch.testing.assert_close(model(row[None], labels=labels).loss, expected)


def test_token_classification_and_question_answering_losses():
    config = tiny_config(num_labels=5)
    ids = random_ids(config)
    tagger = seeded(HfGptForTokenClassification, config)
    tags = torch.randint(0, 5, ids.shape)
    out = tagger(ids, labels=tags)
    expected = torch.nn.functional.cross_entropy(out.logits.reshape(-1, 5), tags.reshape(-1))
    torch.testing.assert_close(out.loss, expected)

    reader = seeded(HfGptForQuestionAnswering, config)
    start, end = torch.tensor([2, 5]), torch.tensor([4, 9])
    out = reader(ids, start_positions=start, end_positions=end)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(out.loss, (ce(out.start_logits, start) + ce(out.end_logits, end)) / 2)
    out.loss.backward()
    assert reader.transformer.wte.weight.grad is not None


def test_double_heads_combine_the_choice_and_lm_losses_with_the_configured_weight():
    config = tiny_config("gpt1-tiny", pad_token_id=PAD, lm_loss_weight=0.25)
    model = seeded(HfGptDoubleHeadsModel, config)
    ids = random_ids(config, batch=6, length=10).view(2, 3, 10)  # 2 questions x 3 choices
    mc_token_ids = torch.tensor([[9, 7, 5], [9, 9, 3]])
    mc_labels = torch.tensor([1, 2])
    both = model(ids, mc_token_ids=mc_token_ids, labels=ids, mc_labels=mc_labels)
    assert both.logits.shape == (2, 3, 10, config.vocab_size) and both.mc_logits.shape == (2, 3)
    torch.testing.assert_close(both.loss, both.mc_loss + 0.25 * both.lm_loss)
    only_mc = model(ids, mc_token_ids=mc_token_ids, mc_labels=mc_labels)
    torch.testing.assert_close(only_mc.loss, torch.nn.functional.cross_entropy(only_mc.mc_logits, mc_labels))
    # The choice score reads the body at mc_token_ids: the same as a classifier over that one position.
    hidden = model.transformer(ids.view(6, 10)).last_hidden_state
    picked = hidden[torch.arange(6), mc_token_ids.view(-1)]
    torch.testing.assert_close(both.mc_logits, model.mc_head(picked).view(2, 3))
    assert HfGptDoubleHeadsModel(tiny_config("gpt1-tiny")).config.lm_loss_weight == 0.5  # GPT-1's λ
    with pytest.raises(ValueError, match=r"mc_token_ids has shape \(2,\), expected \(2, 3\)"):
        model(ids, mc_token_ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"mc_token_ids must lie in \[0, 10\)"):
        model(ids, mc_token_ids=torch.full((2, 3), 10))
    with pytest.raises(ValueError, match=r"expected inputs of shape \(batch, num_choices, length"):
        model(ids.view(6, 10))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bad_token_ids_on_cuda_are_a_python_error_not_a_device_assert():
    model = seeded(HfGptForCausalLM, tiny_config()).cuda()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[5, 1024]], device="cuda"))
    assert model(torch.tensor([[5, 1023]], device="cuda")).logits.isfinite().all()  # the device still works


class TestBadInputs:
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)

    def test_token_ids_outside_the_vocabulary(self):
        with pytest.raises(ValueError, match=r"token id 1024, outside the vocabulary \[0, 1024\)"):
            self.model(torch.tensor([[5, 1024]]))
        with pytest.raises(ValueError, match=r"token id -3, outside the vocabulary"):
            self.model(torch.tensor([[-3, 5]]))

    def test_sequences_longer_than_the_learned_positions(self):
        too_long = torch.zeros(1, self.config.max_position_embeddings + 1, dtype=torch.long)
        with pytest.raises(ValueError, match="sequence length 129 .* exceeds max_position_embeddings=128"):
            self.model(too_long)
        cache = DynamicCache(config=self.config)
        self.model(torch.zeros(1, 120, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match=r"sequence length 130 \(cached 120 \+ new 10\) exceeds"):
            self.model(torch.zeros(1, 10, dtype=torch.long), cache=cache)

    def test_generation_that_would_pass_the_learned_positions_fails_before_it_starts(self):
        with pytest.raises(ValueError, match="generation would reach 140 tokens .* max_position_embeddings=128"):
            self.model.generate(torch.zeros(1, 100, dtype=torch.long), max_new_tokens=40)

    def test_a_static_cache_larger_than_the_learned_positions(self):
        cache = StaticCache(config=copy.deepcopy(self.config), max_cache_len=200)
        self.model(torch.zeros(1, 100, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="the cache holds up to 200 tokens, more than max_position_embeddings=128"):
            self.model(torch.zeros(1, 40, dtype=torch.long), cache=cache)

    def test_explicit_position_ids_outside_the_learned_positions(self):
        with pytest.raises(ValueError, match=r"position_ids contains 128, outside \[0, 128\)"):
            self.model(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[127, 128]]))

    def test_a_config_changed_after_construction_is_checked_when_the_model_is_built(self, tmp_path):
        seeded(HfGptForCausalLM, tiny_config("gpt3-tiny")).save_pretrained(tmp_path)
        with pytest.raises(ValueError, match="attention_layers has 2 entries but num_hidden_layers is 1"):
            AutoModelForCausalLM.from_pretrained(tmp_path, num_hidden_layers=1)
        config = tiny_config()
        config.hidden_size = 65
        with pytest.raises(ValueError, match=r"hidden_size \(65\) must be divisible by num_attention_heads \(4\)"):
            HfGptForCausalLM(config)

    def test_an_attention_mask_of_the_wrong_shape(self):
        with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\), expected \(2, 6\)"):
            self.model(torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long))
        with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 6\), expected \(2, 6\)"):
            self.model(torch.zeros(2, 6, dtype=torch.long), attention_mask=torch.ones(3, 6, dtype=torch.long))

    def test_both_or_neither_of_input_ids_and_inputs_embeds(self):
        ids = torch.zeros(1, 4, dtype=torch.long)
        with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
            self.model(ids, inputs_embeds=self.model.get_input_embeddings()(ids))
        with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
            self.model()


def test_a_model_too_large_for_memory_is_refused_before_a_layer_is_built(tmp_path):
    """10**6 GPT-2 layers hold 7e12 parameters (28 TB in fp32): built anyway, they allocated until memory ran out."""
    config = HfGptConfig.from_preset("gpt2", num_hidden_layers=10**6)
    message = (
        r"num_hidden_layers=1,000,000, hidden_size=768, .* has 7,087,911,385,344 parameters: its torch.float32 "
        r"weights need 28,351,645,541,376 bytes .* more than all .* bytes .* of this machine's RAM"
    )
    with pytest.raises(ValueError, match=message):
        HfGptForCausalLM(config)
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_config(config)
    # from_pretrained builds on the meta device, then loads into RAM: a config.json saying 10**6 layers is refused too.
    seeded(HfGptForCausalLM, tiny_config()).save_pretrained(tmp_path)
    values = {key: value for key, value in config.to_dict().items() if key != "attention_layers"}
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(ValueError, match="num_hidden_layers=1,000,000"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_the_size_check_counts_the_dtype_and_skips_what_allocates_nothing_in_ram(monkeypatch, tmp_path):
    from accelerate import init_empty_weights

    config = tiny_config()
    seeded(HfGptForCausalLM, config).save_pretrained(tmp_path)
    fp32_bytes = 4 * config.parameter_count()
    monkeypatch.setattr(modeling, "device_memory", lambda device: fp32_bytes - 1)  # a machine a byte too small
    with pytest.raises(ValueError, match=rf"weights need {fp32_bytes:,} bytes .* more than all {fp32_bytes - 1:,}"):
        HfGptForCausalLM(config)
    with pytest.raises(ValueError, match="more than all"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert HfGptForCausalLM._from_config(config, dtype=torch.bfloat16).dtype == torch.bfloat16  # half the bytes
    with torch.device("meta"):  # counting, or transformers' own meta init
        HfGptForCausalLM(config)
    with init_empty_weights():  # accelerate's big-model recipe: parameters on meta, the default device still cpu
        HfGptForCausalLM(config)
    AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu")  # a device_map may offload to disk: no check


@pytest.mark.parametrize("mode", ["greedy", "beam", "assisted"])
def test_input_checks_read_the_device_per_generation_not_per_step(monkeypatch, mode):
    """Checking values syncs with the device: it must happen on the prompt only, not per new token."""
    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    extra = {
        "greedy": {},
        "beam": {"num_beams": 2},
        "assisted": {"assistant_model": seeded(HfGptForCausalLM, tiny_config(num_hidden_layers=1), seed=1)},
    }[mode]
    reads = []
    real_aminmax = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda *a, **k: reads.append(1) or real_aminmax(*a, **k))
    counts = []
    for new_tokens in (4, 16):
        reads.clear()
        ids = random_ids(config, batch=1, length=5)
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, **extra)
        counts.append(len(reads))
    assert counts[0] == counts[1] and 0 < counts[0] <= 4, counts  # prompt ids/positions, of each model


def test_training_forward_and_loss_compile_without_graph_breaks():
    # The training step's graph, loss included, must compile whole (fullgraph=True errors on any break).
    torch._dynamo.reset()
    model = seeded(HfGptForCausalLM, tiny_config()).train()
    ids = random_ids(model.config, batch=2, length=16)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    for targets in ({"labels": ids}, {"shift_labels": torch.roll(ids, -1, dims=1)}):
        loss = compiled(ids, **targets).loss
        loss.backward()
        compiled_grad = model.transformer.wte.weight.grad.clone()
        model.zero_grad()
        eager = model(ids, **targets).loss
        eager.backward()
        torch.testing.assert_close(loss, eager)
        torch.testing.assert_close(compiled_grad, model.transformer.wte.weight.grad)
        model.zero_grad()


@pytest.mark.slow
def test_forward_and_static_cache_decoding_compile_without_graph_breaks():
    # fullgraph=True turns any graph break into an error; the eager backend keeps it quick on CPU.
    torch._dynamo.reset()
    local = seeded(HfGptForCausalLM, tiny_config("gpt3-tiny"))
    ids = random_ids(local.config, batch=1, length=8)
    compiled = torch.compile(local, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids, use_cache=False).logits, local(ids, use_cache=False).logits)

    config = tiny_config()
    model = seeded(HfGptForCausalLM, config)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    cache = StaticCache(config=copy.deepcopy(config), max_cache_len=32)
    tokens = random_ids(config, batch=1, length=14)
    with torch.no_grad():
        model(tokens[:, :8], cache=cache)  # prefill eagerly, then decode compiled
        steps = []
        for position in range(8, 14):
            if position == 9:  # after the first compiled step, a recompile (per position) would be an error
                torch._dynamo.config.error_on_recompile = True
            step = compiled(tokens[:, position : position + 1], cache=cache, position_ids=torch.tensor([[position]]))
            steps.append(step.logits[:, -1])
        torch._dynamo.config.error_on_recompile = False
    reference = model(tokens).logits[:, 8:14]
    torch.testing.assert_close(torch.stack(steps, dim=1), reference, atol=2e-4, rtol=1e-4)


def future_warnings_for_the_old_cache_name(model, ids) -> list[str]:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(ids, past_key_values=DynamicCache(config=model.config))
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "past_key_values" in str(w)]


def test_the_old_cache_name_warns_exactly_when_transformers_own_gpt2_does():
    """5.24 renamed `past_key_values` to `cache`: there it warns; before, it is the current name and must not."""
    from transformers import GPT2Config, GPT2LMHeadModel

    ids = torch.randint(0, 100, (1, 6))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).eval()
    ours = seeded(HfGptForCausalLM, tiny_config())
    expected = future_warnings_for_the_old_cache_name(gpt2, ids)
    assert bool(expected) == (CACHE_FIELD == "cache")
    assert len(future_warnings_for_the_old_cache_name(ours, ids)) == len(expected)
    for head in (ours.transformer, seeded(HfGptForSequenceClassification, tiny_config(num_labels=2, pad_token_id=0))):
        assert len(future_warnings_for_the_old_cache_name(head, ids)) == len(expected)
    torch.testing.assert_close(ours(ids, past_key_values=DynamicCache(config=ours.config)).logits, ours(ids).logits)


@pytest.mark.parametrize(
    "head", [HfGptForSequenceClassification, HfGptForTokenClassification, HfGptForQuestionAnswering]
)
def test_every_head_names_the_inputs_transformers_looks_up_by_name(head):
    """Trainer's remove_unused_columns keeps only the columns forward's signature names."""
    import inspect

    names = set(inspect.signature(head.forward).parameters)
    assert {"input_ids", "attention_mask", "position_ids", "inputs_embeds"} <= names
    config = tiny_config(num_labels=3, pad_token_id=0)
    model = seeded(head, config)
    ids = torch.randint(1, 100, (2, 7))
    positions = torch.arange(7).expand(2, 7)
    by_ids = model(input_ids=ids, position_ids=positions)
    by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids), position_ids=positions)
    for name in ("logits", "start_logits", "end_logits"):
        if getattr(by_ids, name, None) is not None:
            torch.testing.assert_close(getattr(by_embeds, name), getattr(by_ids, name))
    if head is HfGptForSequenceClassification:  # it returns a cache, as GPT-2's does
        assert {"cache", "past_key_values", "use_cache"} <= names


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
def test_packed_padding_free_rows_give_each_sequence_its_own_logits(preset, implementation):
    """DataCollatorWithFlattening / TRL padding_free: one row, position ids restarting per sequence, no mask. The
    row may be longer than the context as long as every position id is in range."""
    config = tiny_config(preset)
    model = seeded(HfGptForCausalLM, config, attn_implementation=implementation)
    limit = config.max_position_embeddings
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, config.vocab_size, (1, n), generator=generator) for n in (limit - 3, limit // 2, 7)]
    ids = torch.cat(sequences, 1)
    assert ids.shape[1] > limit
    positions = torch.cat([torch.arange(s.shape[1]) for s in sequences]).unsqueeze(0)
    with torch.no_grad():  # flex attention has no backward on CPU
        packed = model(ids, position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(s, use_cache=False).logits for s in sequences], 1)
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=rf"position_ids contains {ids.shape[1] - 1}, outside \[0, {limit}\)"):
        model(ids, position_ids=torch.arange(ids.shape[1]).unsqueeze(0), use_cache=False)


def test_resize_position_embeddings_lengthens_the_context_keeping_learned_positions():
    model = seeded(HfGptForCausalLM, tiny_config(max_position_embeddings=16))
    learned = model.get_position_embeddings().weight.detach().clone()
    prompt = torch.randint(0, model.config.vocab_size, (2, 16))
    before = model(prompt).logits
    model.resize_position_embeddings(24)
    assert model.config.max_position_embeddings == 24 and model.get_position_embeddings().num_embeddings == 24
    torch.testing.assert_close(model.get_position_embeddings().weight[:16], learned, rtol=0, atol=0)
    torch.testing.assert_close(model(prompt).logits, before)  # the first 16 positions mean what they did
    longer = torch.randint(0, model.config.vocab_size, (2, 24))
    assert model(longer).logits.shape == (2, 24, model.config.vocab_size)  # refused before the resize
    model.resize_position_embeddings(8)
    torch.testing.assert_close(model.get_position_embeddings().weight, learned[:8], rtol=0, atol=0)
    with pytest.raises(ValueError, match="new_num_position_embeddings must be a positive integer"):
        model.resize_position_embeddings(0)


def test_sequence_classification_adds_gpt1s_auxiliary_lm_loss_weighted_by_the_config():
    config = tiny_config("gpt1-tiny", num_labels=3, lm_loss_weight=0.25)
    model = seeded(HfGptForSequenceClassification, config)
    ids = torch.randint(0, config.vocab_size, (4, 2, 9))  # 4 examples of 2 sequences (GPT-1's similarity input)
    mask = torch.ones_like(ids).index_fill_(2, torch.tensor([7, 8]), 0)
    labels, lm_labels = torch.tensor([0, 2, 1, 2]), ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, lm_labels=lm_labels)
    task_loss = torch.nn.functional.cross_entropy(out.logits, labels)
    # The LM term as GPT-1 computes it: every sequence's next tokens, through the tied input embedding.
    flat_ids, flat_mask = ids.flatten(0, 1), mask.flatten(0, 1)
    hidden = model.transformer(flat_ids, attention_mask=flat_mask).last_hidden_state
    lm_logits = hidden[:, :-1] @ model.transformer.wte.weight.T
    lm_loss = torch.nn.functional.cross_entropy(lm_logits.flatten(0, 1), lm_labels.flatten(0, 1)[:, 1:].flatten())
    torch.testing.assert_close(out.loss, task_loss + 0.25 * lm_loss)
    assert lm_loss > 1.0  # a real term at these weights, not a vanishing one
    alone = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(alone, task_loss)
