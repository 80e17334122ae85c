"""`hf-gpt quickstart`: the whole job in one command, offline, on a laptop CPU in a few minutes.

The corpus is the docstrings of the Python standard library that runs this command: every Python
install has it, so nothing is downloaded and no text is copied into this repository.
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from .files import check_output_dir
from .train.pretraining import Pretraining
from .train.pretraining_setup import PretrainArguments

# Not prose, or not the standard library proper.
SKIPPED_PARTS = {"site-packages", "dist-packages", "__pycache__", "idlelib", "lib2to3", "turtledemo", "ensurepip"}
SHORTEST_DOCSTRING = 40  # characters; shorter ones are mostly "Return x." one-liners
PROMPTS = ("Return the", "This module provides", "If the")

# A small GPT (about 1M parameters) that learns recognisable docstring English in ~3 minutes on 2 cores.
MODEL = "gpt2-tiny"
MODEL_OVERRIDES = {
    "num_hidden_layers": 4,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
    "resid_pdrop": 0.0,
}
TRAINING = dict(
    vocab_size=2048,
    block_size=128,
    batch_size=16,
    learning_rate=2e-3,
    eval_every=250,
    eval_blocks=64,
    save_every=500,
    log_every=25,
    val_fraction=0.05,
)
STEPS = 1000
WARMUP_STEPS = 50


def stdlib_modules() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [
        path
        for path in sorted(root.rglob("*.py"))
        if not any(part in SKIPPED_PARTS or part.startswith("test") for part in path.relative_to(root).parts)
    ]


def module_docstrings(path: Path) -> str:
    """A module's docstrings (module, classes, functions) as one document, duplicates dropped."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return "\n\n".join(dict.fromkeys(d for d in found if d and len(d) >= SHORTEST_DOCSTRING))


def stdlib_documents() -> Iterator[str]:
    for path in tqdm(stdlib_modules(), desc="reading standard library docstrings", unit="module"):
        text = module_docstrings(path)
        if text:
            yield text


def write_corpus(path: Path) -> Path:
    """JSON lines, one document (a module's docstrings) per line."""
    with open(path, "w", encoding="utf-8") as f:
        for text in stdlib_documents():
            f.write(json.dumps({"text": text}) + "\n")
    return path


def quickstart(output_dir: str | os.PathLike = "hf-gpt-quickstart", max_steps: int = STEPS, **overrides) -> Path:
    """Train a tokenizer and a small GPT on the standard library docstrings, show samples; returns the model folder."""
    with tempfile.TemporaryDirectory(prefix="hf-gpt-corpus-") as corpus_dir:
        corpus = Path(corpus_dir) / "stdlib_docstrings.jsonl"
        args = PretrainArguments(
            output_dir=str(output_dir),
            data=[str(corpus)],
            model=MODEL,
            model_overrides=dict(MODEL_OVERRIDES),
            max_steps=max_steps,
            warmup_steps=min(WARMUP_STEPS, max_steps // 10),
            overwrite=True,  # replaces only an earlier quickstart's own folder: the record must say "quickstart"
            command="quickstart",
            **{**TRAINING, **overrides},
        )
        args.check()  # before the minutes of work below
        check_output_dir(output_dir, args.overwrite, kind=args.command)
        write_corpus(corpus)
        trainer = Pretraining(args)
        model_dir = trainer.run()
    if trainer.accelerator.is_main_process:
        show_samples(model_dir)
    return model_dir


def show_samples(model_dir: Path) -> None:
    from .generation.loading import load_causal_lm
    from .generation.sampling import sample

    lm, tokenizer = load_causal_lm(model_dir)
    print("\nSamples (top-k 50):")
    for index, prompt in enumerate(PROMPTS):
        print()
        sample(lm, tokenizer, prompt, max_new_tokens=40, seed=index)
    print(
        f"\nThe model is in {model_dir}. Load it (its code is in the folder) with\n"
        f"  AutoModelForCausalLM.from_pretrained({str(model_dir)!r}, trust_remote_code=True)\n"
        f"  pipeline('text-generation', model={str(model_dir)!r}, trust_remote_code=True)\n"
        "(after `import hf_gpt`, trust_remote_code is not needed)\n"
        f'or sample from it with: hf-gpt generate {model_dir} "{PROMPTS[0]}"'
    )
