"""TRL on hf_gpt models as its users run it: SFTTrainer and DPOTrainer, a few steps, the result saved and reloaded.
(SFTTrainer's padding-free packing is checked against the padded run in test_trainer.py.)"""

import pytest
import torch
from conftest import seeded, tiny_config
from datasets import Dataset
from transformers import AutoModelForCausalLM

from hf_gpt import HfGptForCausalLM

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

COMMON = dict(per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, report_to=[], use_cpu=True,
              save_strategy="no", disable_tqdm=True, bf16=False)  # fmt: skip


@pytest.fixture
def base(tmp_path, trained_tokenizer):
    """An hf_gpt folder with the session's tokenizer, loaded by TRL by its path (as a Hub name would be)."""
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0, pad_token_id=0,
                         initializer_range=0.02)  # fmt: skip
    seeded(HfGptForCausalLM, config).save_pretrained(tmp_path / "base")
    trained_tokenizer.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def reloads_with_the_trained_weights(trainer, folder) -> None:
    trainer.save_model(str(folder))
    again = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    trained = trainer.model.eval()
    ids = torch.randint(0, trained.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, trained(ids).logits, rtol=0, atol=1e-6)


def test_sft_trainer_trains_an_hf_gpt_model_by_name(base, tmp_path, trained_tokenizer):
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_dict({"text": ["the quick brown fox jumps over the lazy dog"] * 16})
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=8, trust_remote_code=True, **COMMON)
    trainer = SFTTrainer(model=str(base), args=args, train_dataset=data, processing_class=trained_tokenizer)
    trainer.train()
    first, *_, last = losses(trainer)
    assert last < first - 1.5, losses(trainer)  # one sentence, being learned
    reloads_with_the_trained_weights(trainer, tmp_path / "sft-model")


def test_dpo_trainer_prefers_the_chosen_answers(base, tmp_path, trained_tokenizer):
    from trl import DPOConfig, DPOTrainer

    prompts = ["the cat", "a dog", "the fox", "it was"] * 4
    data = Dataset.from_dict({"prompt": prompts, "chosen": [" is good"] * 16, "rejected": [" is bad"] * 16})
    # TRL loads the reference model itself, from the policy's path: custom code needs the flag there too.
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=6, trust_remote_code=True, **COMMON)
    trainer = DPOTrainer(model=str(base), args=args, train_dataset=data, processing_class=trained_tokenizer)
    assert type(trainer.ref_model).__name__ == "HfGptForCausalLM"
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference: log 2
    assert history[-1]["loss"] < 0.5 and history[-1]["rewards/margins"] > 0
    reloads_with_the_trained_weights(trainer, tmp_path / "dpo-model")
