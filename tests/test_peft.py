"""PEFT's LoRA on the attention and MLP projections: only the adapters train, and they merge back exactly."""

import pytest
import torch
from conftest import seeded, tiny_config

from hf_gpt import HfGptForCausalLM, HfGptForSequenceClassification

peft = pytest.importorskip("peft", reason="needs peft (installed with the dev extra)")

TARGETS = ["c_attn", "c_proj", "c_fc"]


def test_lora_trains_only_adapters_and_merges_exactly():
    model = seeded(HfGptForCausalLM, tiny_config(initializer_range=0.02)).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM"))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == set(TARGETS)  # attention (fused qkv, output) and MLP (in, out) projections

    batch = torch.randint(0, 1024, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(10):
        loss = lora(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1

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
