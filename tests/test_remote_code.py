"""A saved folder loads with trust_remote_code=True where hf_gpt is not installed."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import WITHOUT_HF_GPT, seeded, tiny_config

from hf_gpt import HfGptDoubleHeadsModel, HfGptForCausalLM, HfGptForSequenceClassification
from hf_gpt.configuration_hf_gpt import AUTO_MAP

pytestmark = pytest.mark.model

# Runs in a fresh interpreter in which `import hf_gpt` fails, as on a machine without the package.
REMOTE_LOAD = WITHOUT_HF_GPT + textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    lm_folder, classifier_folder, out = sys.argv[1:4]
    ids = torch.load(f"{out}/ids.pt")
    lm = AutoModelForCausalLM.from_pretrained(lm_folder, trust_remote_code=True).eval()
    classifier = AutoModelForSequenceClassification.from_pretrained(classifier_folder, trust_remote_code=True).eval()
    assert type(lm).__module__.startswith("transformers_modules"), type(lm).__module__
    with torch.no_grad():
        torch.save(
            {
                "lm_logits": lm(ids).logits,
                "generated": lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False),
                "classifier_logits": classifier(ids).logits,
            },
            f"{out}/remote.pt",
        )
    """
)


def test_saved_folder_has_the_code_and_a_complete_auto_map(tmp_path):
    for model_class in (HfGptForCausalLM, HfGptForSequenceClassification, HfGptDoubleHeadsModel):
        folder = tmp_path / model_class.__name__
        seeded(model_class, tiny_config()).save_pretrained(folder)
        assert {"configuration_hf_gpt.py", "modeling_hf_gpt.py"} <= set(os.listdir(folder))
        assert json.loads((folder / "config.json").read_text())["auto_map"] == AUTO_MAP


@pytest.mark.slow
def test_loading_with_trust_remote_code_without_hf_gpt_gives_the_same_outputs(tmp_path):
    config = tiny_config("gpt3-tiny", pad_token_id=1, num_labels=3)
    lm, classifier = seeded(HfGptForCausalLM, config), seeded(HfGptForSequenceClassification, config)
    lm.save_pretrained(tmp_path / "lm")
    classifier.save_pretrained(tmp_path / "classifier")
    ids = torch.randint(2, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    args = [sys.executable, "-c", REMOTE_LOAD, str(tmp_path / "lm"), str(tmp_path / "classifier"), str(tmp_path)]
    done = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    remote = torch.load(tmp_path / "remote.pt")
    with torch.no_grad():
        torch.testing.assert_close(remote["lm_logits"], lm(ids).logits)
        torch.testing.assert_close(remote["classifier_logits"], classifier(ids).logits)
        expected = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert torch.equal(remote["generated"], expected)
