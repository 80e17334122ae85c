"""PEFT on hf_gpt: LoRA on the attention and MLP projections trains only the adapters and merges back exactly, and
after `import hf_gpt` PEFT's default target modules know hf_gpt as they know GPT-2."""

import pytest
import torch
from conftest import seeded, tiny_config

from hf_gpt import HfGptConfig, HfGptForCausalLM, HfGptForSequenceClassification

peft = pytest.importorskip("peft", reason="needs peft (installed with the dev extra)")
constants = pytest.importorskip("peft.utils.constants")

TARGETS = ["c_attn", "c_proj", "c_fc"]


def adapted_modules(peft_model) -> set[str]:
    """The names of the modules PEFT wrapped, with the block index and the model prefix stripped (`attn.c_attn`)."""
    names = {n for n, _ in peft_model.named_modules() if n.endswith(".base_layer")}
    return {".".join(n.removesuffix(".base_layer").split(".")[-2:]) for n in names}


def train_a_few_steps(peft_model, steps: int = 10) -> list[float]:
    batch = torch.randint(0, 1024, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_trains_only_adapters_and_merges_exactly():
    model = seeded(HfGptForCausalLM, tiny_config(initializer_range=0.02)).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == set(TARGETS)  # attention (fused qkv, output) and MLP (in, out) projections

    losses = train_a_few_steps(lora)
    assert losses[-1] < losses[0] - 0.1

    batch = torch.randint(0, 1024, (4, 16), generator=torch.Generator().manual_seed(0))

    base = lora.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" not in name:
            original = name.replace(".base_layer", "")
            torch.testing.assert_close(p, frozen[original], rtol=0, atol=0, msg=name)
    lora.eval()
    with torch.no_grad():
        adapted_logits = lora(input_ids=batch).logits
        merged = lora.merge_and_unload()
        assert isinstance(merged, HfGptForCausalLM)
        torch.testing.assert_close(merged(input_ids=batch).logits, adapted_logits, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(adapted_logits, seeded(HfGptForCausalLM, tiny_config(initializer_range=0.02))(
            input_ids=batch).logits)  # fmt: skip


def test_lora_for_sequence_classification_keeps_the_head_trainable():
    model = seeded(HfGptForSequenceClassification, tiny_config(num_labels=3, pad_token_id=0))
    config = peft.LoraConfig(r=4, target_modules=TARGETS, task_type="SEQ_CLS", modules_to_save=["score"])
    lora = peft.get_peft_model(model, config)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    out = lora(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([2]))
    out.loss.backward()
    assert out.logits.shape == (1, 3)


def test_every_default_mapping_with_gpt2_has_hf_gpt_with_gpt2s_modules():
    mappings = {
        n: m for n, m in vars(constants).items() if n.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(m, dict)
    }
    with_gpt2 = {n: m for n, m in mappings.items() if "gpt2" in m}
    assert "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING" in with_gpt2 and len(with_gpt2) > 10
    for name, mapping in with_gpt2.items():
        expected = ["ln_1", "ln_2"] if "LNTUNING" in name else mapping["gpt2"]  # GPT-1's ln_f is an nn.Identity
        assert mapping.get(HfGptConfig.model_type) == expected, name


@pytest.mark.parametrize("preset", ["gpt1-tiny", "gpt2-tiny"])
def test_default_ln_tuning_works_for_pre_and_post_norm(preset):
    ln = peft.get_peft_model(seeded(HfGptForCausalLM, tiny_config(preset)), peft.LNTuningConfig(task_type="CAUSAL_LM"))
    assert {
        n.split(".ln_tuning_layers")[0].rsplit(".", 1)[-1] for n, p in ln.named_parameters() if p.requires_grad
    } == {"ln_1", "ln_2"}
    ln(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()


def test_default_lora_targets_c_attn_trains_and_saves_and_loads(tmp_path):
    model = seeded(HfGptForCausalLM, tiny_config(initializer_range=0.02)).train()
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM"))  # no target_modules: the default
    assert lora.peft_config["default"].target_modules == {"c_attn"}  # as for GPT-2
    assert adapted_modules(lora) == {"attn.c_attn"}
    losses = train_a_few_steps(lora)
    assert losses[-1] < losses[0] - 0.1

    lora.eval()
    batch = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        expected = lora(input_ids=batch).logits
    lora.save_pretrained(tmp_path)
    base = seeded(HfGptForCausalLM, tiny_config(initializer_range=0.02))
    loaded = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    assert adapted_modules(loaded) == {"attn.c_attn"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=batch).logits, expected, rtol=0, atol=0)


def test_default_ia3_targets_gpt2s_modules():
    model = seeded(HfGptForCausalLM, tiny_config())
    ia3 = peft.get_peft_model(model, peft.IA3Config(task_type="CAUSAL_LM"))
    assert adapted_modules(ia3) == {"attn.c_attn", "mlp.c_proj"}  # GPT-2's: fused qkv, and MLP out as feedforward
    assert ia3.peft_config["default"].feedforward_modules == {"mlp.c_proj"}
    ia3(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()


def test_without_the_registration_all_linear_still_works(monkeypatch):
    """What a remote-code user without the package sees: no default, but `target_modules="all-linear"` works."""
    monkeypatch.delitem(
        constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, HfGptConfig.model_type, raising=False
    )
    with pytest.raises(ValueError, match="target_modules"):
        peft.get_peft_model(seeded(HfGptForCausalLM, tiny_config()), peft.LoraConfig(task_type="CAUSAL_LM"))
    model = seeded(HfGptForCausalLM, tiny_config())
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear"))
    assert adapted_modules(lora) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}  # not the lm_head
    lora(input_ids=torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
