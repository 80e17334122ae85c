"""Text in, token ids out: corpus reading (`documents`), fast byte-level BPE encoding (`encoding`), the tokenizer
trainer (`tokenizer`), packed token files (`tokens`) and their blocks as a PyTorch dataset (`blocks`), and task-file
rows (`records`).

The packed-token-file API is importable from here, as it always was: `hf_gpt.data.TokenBlocks`,
`hf_gpt.data.prepare_data`, `hf_gpt.data.read_manifest`. TokenBlocks is imported when first asked for: it needs
torch, which preparing data does not.
"""

from .tokens import MANIFEST, prepare_data, read_manifest

__all__ = ["MANIFEST", "TokenBlocks", "prepare_data", "read_manifest"]


def __getattr__(name: str):
    if name == "TokenBlocks":
        from .blocks import TokenBlocks

        return TokenBlocks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
