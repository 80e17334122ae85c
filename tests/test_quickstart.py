"""`hf-gpt quickstart`: the README's main job, offline, from the standard library's docstrings."""

import subprocess

import pytest
from test_tokenizer import console_script
from transformers import AutoModelForCausalLM, pipeline

from hf_gpt.quickstart import module_docstrings, stdlib_modules


def test_corpus_is_docstrings_only(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        '"""A module that explains itself at some length, as modules should."""\n'
        "SECRET = 'code is not text'\n"
        "def f():\n"
        '    """Return the answer to a question that this docstring poses at length."""\n'
        "class C:\n"
        '    """Short."""\n'
        "    def g(self):\n"
        '        """Return the answer to a question that this docstring poses at length."""\n'
    )
    text = module_docstrings(source)
    assert text == (
        "A module that explains itself at some length, as modules should.\n\n"
        "Return the answer to a question that this docstring poses at length."
    )  # code, short docstrings and repeats left out
    modules = stdlib_modules()
    assert len(modules) > 100 and not any("site-packages" in str(p) for p in modules)


@pytest.mark.slow
def test_quickstart_trains_samples_and_writes_a_loadable_model(tmp_path):
    output = tmp_path / "quick"
    done = subprocess.run(
        [console_script(), "quickstart", "--output", str(output), "--max-steps", "10"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "perplexity" in done.stdout and "Samples" in done.stdout
    assert f"The model is in {output / 'model'}" in done.stdout
    model = AutoModelForCausalLM.from_pretrained(output / "model")
    assert model.config.num_hidden_layers == 4 and model.config.vocab_size == 2048
    generator = pipeline("text-generation", model=str(output / "model"))
    assert generator("Return the", max_new_tokens=5)[0]["generated_text"].startswith("Return the")
    # Run again: it replaces its own earlier run folder.
    again = subprocess.run(
        [console_script(), "quickstart", "--output", str(output), "--max-steps", "2"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"max_steps": 2' in (output / "run.json").read_text()
