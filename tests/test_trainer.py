"""Trainer: gradient accumulation must give the update of the equivalent large batch, for every head."""

import copy

import pytest
import torch
from conftest import seeded, tiny_config
from datasets import Dataset
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


def training_losses(tmp_path, name: str, trainer_class=Trainer, args_class=TrainingArguments, **trainer_kwargs):
    """Per-step training losses of three steps on sequences of different lengths, in a fixed order, and the shape
    of each batch the model saw (with whether it came with position ids)."""
    model = seeded(HfGptForCausalLM, tiny_config()).train()
    shapes = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append((tuple(kwargs["input_ids"].shape), "position_ids" in kwargs)),
        with_kwargs=True,
    )
    lengths = [5, 40, 17, 100, 3, 64, 9, 30, 128, 12, 77, 21]
    ids = [torch.randint(2, 1024, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in lengths]
    data = Dataset.from_dict({"input_ids": ids})
    extra_args = trainer_kwargs.pop("args", {})
    args = args_class(
        output_dir=str(tmp_path / name), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
        lr_scheduler_type="constant", logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, remove_unused_columns=False, **extra_args,
    )  # fmt: skip
    trainer = trainer_class(model=model, args=args, train_dataset=data, **trainer_kwargs)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry], shapes


def test_padding_free_training_with_data_collator_with_flattening_matches_the_padded_run(tmp_path, tokenizer):
    """Packed rows longer than the context (4 sequences up to 128 tokens each), each sequence seeing only itself."""
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening

    padded, padded_shapes = training_losses(
        tmp_path, "padded", data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)
    )
    packed, packed_shapes = training_losses(tmp_path, "packed", data_collator=DataCollatorWithFlattening())
    assert padded_shapes == [((4, 100), False), ((4, 64), False), ((4, 128), False)]
    assert packed_shapes == [((1, 162), True), ((1, 106), True), ((1, 238), True)]  # longer than the context (128)
    assert len(padded) == len(packed) == 3
    assert packed == pytest.approx(padded, rel=1e-4)


def test_trl_sft_trainer_padding_free_matches_the_padded_run(tmp_path, tokenizer):
    """TRL's SFTTrainer(padding_free=True) packs a batch into one row with restarting position ids, as above."""
    from trl import SFTConfig, SFTTrainer

    def sft_losses(name: str, padding_free: bool) -> list[float]:
        return training_losses(
            tmp_path, name, trainer_class=SFTTrainer, args_class=SFTConfig, processing_class=tokenizer,
            args={"padding_free": padding_free, "bf16": False, "max_length": None},
        )  # fmt: skip

    padded, padded_shapes = sft_losses("sft-padded", padding_free=False)
    packed, packed_shapes = sft_losses("sft-packed", padding_free=True)
    assert [shape for shape, _ in padded_shapes] == [(4, 100), (4, 64), (4, 128)]
    assert packed_shapes == [((1, 162), True), ((1, 106), True), ((1, 238), True)]
    assert len(padded) == len(packed) == 3
    assert packed == pytest.approx(padded, rel=1e-4)
