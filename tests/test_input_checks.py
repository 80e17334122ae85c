"""Forward inputs: what transformers' own GPT-2 accepts we accept; the rest is a ValueError naming the input,
raised before any embedding or position lookup (on CUDA a bad lookup is a device-side assert, not an error)."""

import pytest
import torch
from conftest import seeded, tiny_config
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel

from hf_gpt import HfGptForCausalLM
from hf_gpt import modeling_hf_gpt as modeling

pytestmark = pytest.mark.model
CONFIG = tiny_config(pad_token_id=1)
MODEL = seeded(HfGptForCausalLM, CONFIG)


def gpt2_like(config) -> GPT2LMHeadModel:
    """transformers' own GPT-2 of the same shape: the reference for what a forward accepts."""
    torch.manual_seed(0)
    shape = dict(n_embd=config.hidden_size, n_layer=config.num_hidden_layers, n_head=config.num_attention_heads)
    ids = dict(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, **shape, **ids)
    )


GPT2 = gpt2_like(CONFIG).eval()


def padded_batch(length=80, pad=30):
    """Two rows, the first left-padded by `pad` tokens: as a tokenizer pads them."""
    ids = torch.randint(2, CONFIG.vocab_size, (2, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, length, dtype=torch.long)
    ids[0, :pad], mask[0, :pad] = 1, 0
    return ids, mask


@pytest.fixture
def lookups(monkeypatch):
    """Every embedding lookup (token or position) the model makes: a refused input must make none."""
    calls = []
    for table in (MODEL.transformer.wte, MODEL.transformer.wpe):
        monkeypatch.setattr(table, "forward", lambda ids, real=table.forward: calls.append(ids) or real(ids))
    return calls


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32, torch.int64, torch.float16, torch.float32])
def test_a_0_1_padding_mask_of_any_dtype_gpt2_accepts_gives_the_same_logits(dtype):
    ids, mask = padded_batch()
    GPT2(ids, attention_mask=mask.to(dtype))  # the reference takes it ...
    with torch.no_grad():  # ... and so do we, reading it as the same mask
        expected = MODEL(ids, attention_mask=mask).logits
        torch.testing.assert_close(MODEL(ids, attention_mask=mask.to(dtype)).logits, expected)


def test_prepared_4d_masks_gpt2_passes_through_are_used_as_given():
    ids = padded_batch(length=12, pad=0)[0]
    causal = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 1, 12, 12)
    additive = torch.zeros(causal.shape).masked_fill(~causal, torch.finfo(torch.float32).min)
    with torch.no_grad():
        expected = MODEL(ids).logits
        for mask in (causal, additive):
            GPT2(ids, attention_mask=mask)
            torch.testing.assert_close(MODEL(ids, attention_mask=mask).logits, expected)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [(torch.float32, 0.5), (torch.float32, 2.0), (torch.float32, -1.0), (torch.float32, float("nan")),
     (torch.int64, 2), (torch.int64, -1)],
)  # fmt: skip
def test_a_padding_mask_holding_more_than_0_and_1_is_refused_before_any_lookup(lookups, dtype, value):
    ids, mask = padded_batch()
    mask = mask.to(dtype)
    mask[1] = mask[1] * value  # e.g. two masks added together (2), or one scaled
    with pytest.raises(ValueError, match=r"attention_mask holds .*only 0 \(padding\) and 1 \(a token\)"):
        MODEL(ids, attention_mask=mask)
    assert not lookups


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (torch.tensor([0, 0, 1, 1, 1, 1]), r"shape \(6,\).*attention_mask\[None\]"),
        (torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), r"shape \(6,\).*attention_mask\[None\]"),
        (torch.tensor([False, False, True, True, True, True]), r"shape \(6,\).*attention_mask\[None\]"),
        (torch.zeros(1, 6, 6), r"shape \(1, 6, 6\): expected a \(batch, length\) padding mask"),
        (torch.ones(1, 6, 6, dtype=torch.long), r"shape \(1, 6, 6\): expected a \(batch, length\) padding mask"),
        (torch.ones(1, 1, 6, 6, dtype=torch.long), r"4D attention_mask must be bool or float"),
        (torch.zeros(1, 1, 5, 5), r"4D attention_mask must broadcast to \(batch 1, heads 4, new tokens 6, keys 6\)"),
    ],
)
def test_a_mask_of_another_shape_or_kind_is_refused_naming_it(lookups, mask, message):
    """GPT-2 reads a 1D or 3D mask with .view(batch, -1), which scrambles it whenever its size is not batch x
    length (and Llama refuses it outright); an integer 4D mask fails inside the attention kernel."""
    ids = torch.tensor([[1, 1, 5, 6, 7, 8]])
    with pytest.raises(ValueError, match=message):
        MODEL(ids, attention_mask=mask)
    assert not lookups


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, r"input_ids has shape \(1, 0\): .*at least one token"),
        ({"input_ids": torch.zeros(0, 5, dtype=torch.long)}, r"input_ids has shape \(0, 5\): .*at least one"),
        ({"inputs_embeds": torch.zeros(1, 0, 64)}, r"inputs_embeds has shape \(1, 0, 64\): .*at least one"),
        ({"input_ids": torch.tensor([5, 6, 7])}, r"got a torch.int64 tensor of shape \(3,\).*input_ids\[None\]"),
        ({"input_ids": torch.tensor([[5.0, 6.0]])}, r"int64 or int32 tensor of token ids, got a torch.float32"),
        ({"inputs_embeds": torch.zeros(3, 64)}, r"inputs_embeds must have shape \(batch, length, hidden_size=64\)"),
    ],
)
def test_empty_and_misshapen_inputs_are_a_value_error_naming_the_shape(lookups, inputs, message):
    """GPT-2 fails on these too, but deep inside ("cannot reshape tensor of 0 elements", IndexError)."""
    with pytest.raises(ValueError, match=message):
        MODEL(**inputs)
    assert not lookups


def test_mask_values_are_read_once_per_prompt_not_per_decoding_step(monkeypatch):
    """Reading the mask's values syncs with the device: generate() pays it on the prompt only."""
    reads = []
    real = modeling.check_mask_values
    monkeypatch.setattr(modeling, "check_mask_values", lambda mask: reads.append(1) or real(mask))
    ids, mask = padded_batch(length=8, pad=3)
    counts = []
    for new_tokens in (2, 12):
        reads.clear()
        MODEL.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=1)
        counts.append(len(reads))
    assert counts == [1, 1]


def test_decoding_steps_read_any_nonzero_mask_entry_as_a_token():
    """Decoding steps skip the value check (a device read per token); positions must stay real regardless, as
    transformers' mask builders read the same mask: nonzero attends."""
    ids, mask = padded_batch(length=70)
    twos = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1) * 2  # a cumsum of 2s passes position 127
    step = torch.tensor([[5], [6]])
    logits = []
    with torch.no_grad():
        for step_mask in (twos, twos.clamp(max=1)):
            cache = DynamicCache(config=CONFIG)
            MODEL(ids, attention_mask=mask, cache=cache)
            logits.append(MODEL(step, attention_mask=step_mask, cache=cache).logits)
    torch.testing.assert_close(*logits)


def test_a_padded_training_forward_compiles_without_graph_breaks():
    """The mask checks are shape checks under torch.compile (the value read is skipped there): no graph break."""
    torch._dynamo.reset()
    model = seeded(HfGptForCausalLM, CONFIG).train()
    ids, mask = padded_batch(length=16, pad=5)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(ids, attention_mask=mask, labels=ids).loss, model(ids, mask, labels=ids).loss)
