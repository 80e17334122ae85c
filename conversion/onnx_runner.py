"""Generate with an hf_gpt ONNX export and onnxruntime alone (numpy, tokenizers; no torch, no hf_gpt).

    python generate_onnx.py FOLDER "Once upon a time" [--max-new-tokens 50]

or from Python:

    generator = OnnxGenerator("FOLDER")
    ids = generator.generate([[5, 6, 7], [8, 9]], max_new_tokens=20)   # rows of any lengths (left-padded here)

Greedy decoding (argmax), as `generate(do_sample=False)`: a row that emits the end-of-text id is padded after it,
and decoding stops when every row has. This file is written into every export by conversion/onnx_file.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime


class OnnxGenerator:
    def __init__(self, folder: str | Path, threads: int | None = None):
        folder = Path(folder)
        self.settings = json.loads((folder / "onnx_config.json").read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, ["CPUExecutionProvider"])

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray]):
        """One step: (logits, present), the past grown by the new tokens."""
        names = [f"past.{layer}.{kind}" for layer in range(self.settings["num_layers"]) for kind in ("key", "value")]
        outputs = self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask,
                                          **dict(zip(names, past, strict=True))})  # fmt: skip
        return outputs[0], outputs[1:]

    def generate(
        self,
        rows: list[list[int]],
        max_new_tokens: int = 20,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> np.ndarray:
        """The rows, left-padded to one length, followed by their greedy continuations: (batch, length + new)."""
        settings = self.settings
        eos = settings["eos_token_id"] if eos_token_id is None else eos_token_id
        pad = next(i for i in (pad_token_id, settings["pad_token_id"], eos, 0) if i is not None)
        length = max(len(row) for row in rows)
        if length + max_new_tokens > settings["context"]:
            raise ValueError(
                f"{length} prompt + {max_new_tokens} new tokens exceed the context ({settings['context']})"
            )
        input_ids = np.array([[pad] * (length - len(row)) + list(row) for row in rows], dtype=np.int64)
        mask = np.array([[0] * (length - len(row)) + [1] * len(row) for row in rows], dtype=np.int64)
        shape = (len(rows), settings["num_heads"], 0, settings["head_size"])
        past = [np.zeros(shape, dtype=np.float32) for _ in range(2 * settings["num_layers"])]
        output, finished, tokens = [input_ids], np.zeros(len(rows), dtype=bool), input_ids
        for _ in range(max_new_tokens):
            logits, past = self.step(tokens, mask, past)
            chosen = logits[:, -1].argmax(-1)
            chosen = np.where(finished, pad, chosen)
            output.append(chosen[:, None])
            finished |= chosen == eos if eos is not None else False
            if finished.all():
                break
            tokens = chosen[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        return np.concatenate(output, axis=1)


def main() -> None:
    from tokenizers import Tokenizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="the export's folder")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    args = parser.parse_args()
    tokenizer = Tokenizer.from_file(str(Path(args.folder) / "tokenizer.json"))
    ids = tokenizer.encode(args.prompt).ids
    output = OnnxGenerator(args.folder).generate([ids], max_new_tokens=args.max_new_tokens)
    print(tokenizer.decode(output[0].tolist()))


if __name__ == "__main__":
    main()
