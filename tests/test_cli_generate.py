"""`hf-gpt generate`: streams a model's continuation of a prompt."""

import subprocess

import pytest
import torch
from conftest import seeded, tiny_config
from test_tokenizer import console_script

from hf_gpt import HfGptForCausalLM
from hf_gpt.generation.loading import load_causal_lm
from hf_gpt.generation.sampling import sample


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, trained_tokenizer):
    folder = tmp_path_factory.mktemp("generate") / "model"
    config = tiny_config(vocab_size=len(trained_tokenizer), bos_token_id=0, eos_token_id=0)
    seeded(HfGptForCausalLM, config, seed=3).save_pretrained(folder)
    trained_tokenizer.save_pretrained(folder)
    return folder


def greedy_continuation(model_dir, prompt: str, new_tokens: int) -> str:
    lm, tokenizer = load_causal_lm(model_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_cli_prints_the_greedy_continuation(model_dir):
    expected = greedy_continuation(model_dir, "The quick", 12)
    assert expected.strip()  # a continuation to compare with
    done = subprocess.run(
        [console_script(), "generate", str(model_dir), "The quick", "--greedy", "--max-new-tokens", "12"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip("\n") == "The quick" + expected


def test_samples_stream_one_by_one_and_follow_the_seed(model_dir, capsys):
    lm, tokenizer = load_causal_lm(model_dir)
    first = sample(lm, tokenizer, "It was", max_new_tokens=10, num_return_sequences=2, seed=5, top_p=0.9)
    printed = capsys.readouterr().out
    assert printed.count("--- sample") == 2 and all(text in printed for text in first)
    again = sample(lm, tokenizer, "It was", max_new_tokens=10, num_return_sequences=2, seed=5, top_p=0.9)
    assert again == first and len(first) == 2


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ],
)
def test_bad_sampling_options_are_named(model_dir, options, message):
    lm, tokenizer = load_causal_lm(model_dir)
    with pytest.raises(ValueError, match=message):
        sample(lm, tokenizer, "x", **options)


def test_cli_reports_a_missing_model(tmp_path):
    done = subprocess.run([console_script(), "generate", str(tmp_path / "nope"), "hi"], capture_output=True, text=True)
    assert done.returncode == 2 and "hf-gpt generate: error:" in done.stderr and "nope" in done.stderr
    assert "Traceback" not in done.stderr
