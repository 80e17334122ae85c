"""Trainer: gradient accumulation must give the update of the equivalent large batch, for every head."""

import copy

import pytest
import torch
from conftest import seeded, tiny_config
from transformers import Trainer, TrainingArguments

from hf_gpt import (
    HfGptDoubleHeadsModel,
    HfGptForCausalLM,
    HfGptForQuestionAnswering,
    HfGptForSequenceClassification,
    HfGptForTokenClassification,
)

pytestmark = pytest.mark.model


def example(kind: str, i: int) -> dict:
    generator = torch.Generator().manual_seed(i)
    ids = torch.randint(2, 1024, (16,), generator=generator)
    labels = {"lm": ids, "class": torch.tensor(i % 3), "tag": torch.randint(0, 3, (16,), generator=generator)}[kind]
    return {"input_ids": ids, "attention_mask": torch.ones(16, dtype=torch.long), "labels": labels}


def one_sgd_update(model_class, kind: str, batch_size: int, accumulation: int, tmp_path) -> torch.Tensor:
    model = seeded(model_class, tiny_config(num_labels=3, initializer_range=0.02)).train()
    before = copy.deepcopy(model.transformer.h[0].mlp.c_fc.weight.detach())
    args = TrainingArguments(
        output_dir=str(tmp_path / f"{kind}-{batch_size}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=[example(kind, i) for i in range(8)])
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    return model.transformer.h[0].mlp.c_fc.weight.detach() - before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_class", "kind"),
    [(HfGptForCausalLM, "lm"), (HfGptForSequenceClassification, "class"), (HfGptForTokenClassification, "tag")],
)
def test_gradient_accumulation_matches_one_big_batch(model_class, kind, tmp_path):
    big_batch = one_sgd_update(model_class, kind, batch_size=8, accumulation=1, tmp_path=tmp_path)
    accumulated = one_sgd_update(model_class, kind, batch_size=4, accumulation=2, tmp_path=tmp_path)
    torch.testing.assert_close(accumulated, big_batch, atol=1e-6, rtol=1e-3)


def test_heads_with_mean_losses_ask_trainer_to_scale_them():
    # Their losses ignore num_items_in_batch, so Trainer must divide by the accumulation steps itself.
    for model_class in (
        HfGptForSequenceClassification,
        HfGptForTokenClassification,
        HfGptForQuestionAnswering,
        HfGptDoubleHeadsModel,
    ):
        assert model_class.accepts_loss_kwargs is False
    assert not hasattr(HfGptForCausalLM, "accepts_loss_kwargs")  # it passes num_items_in_batch to its loss


def training_losses(collator, tmp_path, name: str) -> list[float]:
    """Per-step training losses of three Trainer steps on sequences of different lengths, in a fixed order."""
    model = seeded(HfGptForCausalLM, tiny_config()).train()
    lengths = [5, 40, 17, 100, 3, 64, 9, 30, 128, 12, 77, 21]
    data = [{"input_ids": torch.randint(2, 1024, (n,), generator=torch.Generator().manual_seed(n)).tolist()}
            for n in lengths]  # fmt: skip
    args = TrainingArguments(
        output_dir=str(tmp_path / name), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_padding_free_training_with_data_collator_with_flattening_matches_the_padded_run(tmp_path, tokenizer):
    """Packed rows longer than the context (4 sequences up to 128 tokens each), each sequence seeing only itself."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening

    padded = training_losses(DataCollatorForLanguageModeling(tokenizer, mlm=False), tmp_path, "padded")
    packed = training_losses(DataCollatorWithFlattening(), tmp_path, "packed")
    assert len(padded) == len(packed) == 3
    assert packed == pytest.approx(padded, rel=1e-4)
