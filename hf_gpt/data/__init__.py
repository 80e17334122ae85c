"""Text in, token ids out: corpus reading (`documents`), fast byte-level BPE encoding (`encoding`), the tokenizer
trainer (`tokenizer`), packed token files and their blocks (`tokens`), and task-file rows (`records`).

The packed-token-file API is importable from here, as it always was: `hf_gpt.data.TokenBlocks`,
`hf_gpt.data.prepare_data`, `hf_gpt.data.read_manifest`.
"""

from .tokens import MANIFEST, TokenBlocks, prepare_data, read_manifest

__all__ = ["MANIFEST", "TokenBlocks", "prepare_data", "read_manifest"]
