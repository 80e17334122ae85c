"""Same weights, same logits as transformers' own GPT-2 and GPT-1 (openai-gpt) implementations.

This pins the architecture itself: pre-norm with a final LayerNorm for GPT-2, post-norm without one
for GPT-1, the fused QKV layout, the GELU variant and the attention scaling.
"""

import pytest
import torch
from conftest import seeded, tiny_config
from transformers import GPT2Config, GPT2LMHeadModel, OpenAIGPTConfig, OpenAIGPTLMHeadModel

from hf_gpt import HfGptForCausalLM

pytestmark = pytest.mark.model
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def reference_state_dict(reference: torch.nn.Module, renames: dict[str, str]) -> dict[str, torch.Tensor]:
    """The reference's weights under our names; its Conv1D layers store (in, out), nn.Linear (out, in)."""
    state = {}
    for name, tensor in reference.state_dict().items():
        for old, new in renames.items():
            name = name.replace(old, new)
        state[name] = tensor.t() if name.endswith(CONV1D_WEIGHTS) else tensor
    return state


def shared_shape(config) -> dict:
    return dict(
        vocab_size=config.vocab_size,
        n_positions=config.max_position_embeddings,
        n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers,
        n_head=config.num_attention_heads,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
    )


@pytest.mark.parametrize(
    ("preset", "reference_class", "reference_config", "renames"),
    [
        ("gpt2-tiny", GPT2LMHeadModel, GPT2Config, {}),
        (
            "gpt1-tiny",
            OpenAIGPTLMHeadModel,
            OpenAIGPTConfig,
            {"transformer.tokens_embed": "transformer.wte", "transformer.positions_embed": "transformer.wpe"},
        ),
    ],
)
def test_logits_match_the_transformers_reference(preset, reference_class, reference_config, renames):
    config = tiny_config(preset)
    torch.manual_seed(0)
    reference = reference_class(reference_config(**shared_shape(config), attn_implementation="eager")).eval()
    model = seeded(HfGptForCausalLM, config)
    missing, unexpected = model.load_state_dict(reference_state_dict(reference, renames), strict=False)
    assert not unexpected and not [key for key in missing if key != "lm_head.weight"]  # lm_head is tied
    ids = torch.randint(0, config.vocab_size, (2, 50), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)
