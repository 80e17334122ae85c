"""prepare_data (parallel, exact, atomic) and the memory-mapped TokenBlocks dataset."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import varied_text
from test_tokenizer import assert_nothing_written, console_script
from transformers import AutoTokenizer

from hf_gpt.data.blocks import TokenBlocks
from hf_gpt.data.tokenizer import tokenizer_from_gpt2_files, train_bpe_tokenizer
from hf_gpt.data.tokens import prepare_data, read_manifest, token_dtype


def encode_plain(tokenizer, text):
    """What prepare_data must write for one document: its ids (special strings as text), then <|endoftext|>."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids + [tokenizer.eos_token_id]


def read_split(folder, name):
    manifest = read_manifest(folder)
    return np.fromfile(folder / manifest["splits"][name]["file"], dtype=manifest["dtype"]).tolist()


def split_documents(ids, separator):
    docs, current = [], []
    for i in ids:
        current.append(i)
        if i == separator:
            docs.append(tuple(current))
            current = []
    return docs


@pytest.fixture(scope="module")
def documents():
    return [varied_text(seed, 40 + seed % 50) for seed in range(300)]


@pytest.fixture(scope="module")
def jsonl_corpus(documents, tmp_path_factory):
    path = tmp_path_factory.mktemp("jsonl") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    return path


def test_every_document_once_with_its_exact_ids(documents, jsonl_corpus, trained_tokenizer, tmp_path):
    manifest = prepare_data([jsonl_corpus], trained_tokenizer, tmp_path / "data", val_fraction=0.1, workers=2)
    train, val = read_split(tmp_path / "data", "train"), read_split(tmp_path / "data", "val")
    separator = trained_tokenizer.eos_token_id
    expected = sorted(tuple(encode_plain(trained_tokenizer, d)) for d in documents)
    assert sorted(split_documents(train, separator) + split_documents(val, separator)) == expected
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert manifest["documents"] == 300
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 300
    assert manifest["splits"]["val"]["tokens"] == len(val) and manifest["dtype"] == "uint16"
    umask = os.umask(0)
    os.umask(umask)
    for made in (tmp_path / "data", tmp_path / "data" / "manifest.json"):  # as readable as any new file
        assert made.stat().st_mode & 0o777 == (0o777 if made.is_dir() else 0o666) & ~umask
    # validation documents are spread through the corpus, not just its tail
    order = {tuple(encode_plain(trained_tokenizer, d)): i for i, d in enumerate(documents)}
    positions = [order[doc] for doc in split_documents(val, separator)]
    assert min(positions) < 100 and max(positions) > 200


def test_held_out_validation_inputs(documents, trained_tokenizer, tmp_path):
    train_file, val_file = tmp_path / "train.txt", tmp_path / "val.txt"
    train_file.write_text(documents[0], encoding="utf-8")
    val_file.write_text(documents[1], encoding="utf-8")
    manifest = prepare_data([train_file], trained_tokenizer, tmp_path / "data", val_inputs=[val_file], workers=1)
    assert read_split(tmp_path / "data", "train") == encode_plain(trained_tokenizer, documents[0])
    assert read_split(tmp_path / "data", "val") == encode_plain(trained_tokenizer, documents[1])
    assert manifest["val_inputs"] == [str(val_file)] and manifest["documents"] == 2


def test_long_document_pieces_encode_like_the_whole(trained_tokenizer, tmp_path):
    """A text file is one document; cutting it into pieces for the workers changes no id."""
    text = "\n".join(varied_text(seed, 500) for seed in range(40))  # ~100k characters, many pieces
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        prepare_data([path], trained_tokenizer, out, val_fraction=0.0, workers=workers)
        outputs[workers] = (out / "train.bin").read_bytes()
    assert outputs[1] == outputs[2]
    assert read_split(tmp_path / "w1", "train") == encode_plain(trained_tokenizer, text)


def test_uint32_when_the_vocabulary_needs_it(tmp_path):
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    from tokenizers import pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: i for i, token in enumerate(sorted(alphabet))}
    vocab.update({f"filler{i}": 256 + i for i in range(70_000)})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    big = tokenizer_from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert big.eos_token_id == 70_256
    (tmp_path / "a.txt").write_text("héllo wörld", encoding="utf-8")
    manifest = prepare_data([tmp_path / "a.txt"], big, tmp_path / "data", val_fraction=0.0, workers=1)
    assert manifest["dtype"] == "uint32"
    assert read_split(tmp_path / "data", "train") == encode_plain(big, "héllo wörld")


def test_token_blocks_are_shifted_windows_of_the_file(jsonl_corpus, trained_tokenizer, tmp_path):
    prepare_data([jsonl_corpus], trained_tokenizer, tmp_path / "data", val_fraction=0.1, workers=1)
    tokens = read_split(tmp_path / "data", "train")
    blocks = TokenBlocks(tmp_path / "data", "train", block_size=32, tokenizer=trained_tokenizer)
    assert len(blocks) == (len(tokens) - 1) // 32
    assert isinstance(blocks.tokens, np.memmap)  # read by memory map, not loaded
    for i in (0, 1, len(blocks) - 1):
        item = blocks[i]
        assert item["input_ids"].tolist() == tokens[32 * i : 32 * i + 32]
        assert item["shift_labels"].tolist() == tokens[32 * i + 1 : 32 * i + 33]
        assert item["labels"].tolist() == item["input_ids"].tolist() and item["input_ids"].dtype == torch.long
    clone = pickle.loads(pickle.dumps(blocks))  # what a DataLoader worker receives: no open map
    assert clone._tokens is None and torch.equal(clone[1]["input_ids"], blocks[1]["input_ids"])
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    val = TokenBlocks(tmp_path / "data", "val", block_size=16)
    assert len(val) > 0


def test_token_blocks_refuse_an_altered_token_file_naming_the_block(jsonl_corpus, trained_tokenizer, tmp_path):
    """Blocks are checked on the CPU, so the training loop's model need not read its batches back from the device."""
    prepare_data([jsonl_corpus], trained_tokenizer, tmp_path / "data", val_fraction=0.0, workers=1)
    blocks = TokenBlocks(tmp_path / "data", "train", block_size=16)
    tokens = np.memmap(blocks.path, dtype=blocks.dtype, mode="r+")
    tokens[16 * 3 + 5] = len(trained_tokenizer)  # one id past the vocabulary, in block 3
    tokens.flush()
    blocks[2]  # the blocks around it still read
    with pytest.raises(ValueError, match=rf"holds token id {len(trained_tokenizer)} in block 3, outside its tokenizer"):
        blocks[3]


def test_token_blocks_in_dataloaders_and_accelerate_shards(jsonl_corpus, trained_tokenizer, tmp_path):
    from accelerate.data_loader import prepare_data_loader

    prepare_data([jsonl_corpus], trained_tokenizer, tmp_path / "data", val_fraction=0.0, workers=1)
    blocks = TokenBlocks(tmp_path / "data", "train", block_size=16)
    sequential = torch.cat([b["input_ids"] for b in torch.utils.data.DataLoader(blocks, batch_size=8)])
    assert torch.equal(sequential, torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))]))
    shuffled = torch.utils.data.DataLoader(
        blocks, batch_size=8, shuffle=True, num_workers=2, generator=torch.Generator().manual_seed(0)
    )
    random_order = torch.cat([b["input_ids"] for b in shuffled])
    assert not torch.equal(random_order, sequential)
    assert sorted(map(tuple, random_order.tolist())) == sorted(map(tuple, sequential.tolist()))
    # Two processes' shards (as Accelerate makes them) are disjoint and cover every block once.
    seen = []
    for rank in range(2):
        loader = torch.utils.data.DataLoader(blocks, batch_size=4, shuffle=True)
        shard = prepare_data_loader(
            loader,
            num_processes=2,
            process_index=rank,
            put_on_device=False,
            use_seedable_sampler=True,
            even_batches=False,
        )
        shard.set_epoch(0)
        seen += [tuple(row) for batch in shard for row in batch["input_ids"].tolist()]
    assert sorted(seen) == sorted(map(tuple, sequential.tolist()))


@pytest.mark.model
def test_model_trains_on_token_blocks(jsonl_corpus, trained_tokenizer, tmp_path):
    """A batch of blocks goes straight into the model; shift_labels make every position count."""
    from conftest import seeded, tiny_config

    from hf_gpt import HfGptForCausalLM

    prepare_data([jsonl_corpus], trained_tokenizer, tmp_path / "data", val_fraction=0.0, workers=1)
    batch = next(iter(torch.utils.data.DataLoader(TokenBlocks(tmp_path / "data", block_size=16), batch_size=4)))
    model = seeded(HfGptForCausalLM, tiny_config(vocab_size=len(trained_tokenizer)))
    out = model(**batch)
    expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), batch["shift_labels"].flatten())
    assert torch.allclose(out.loss, expected, atol=1e-6)
    without = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert not torch.allclose(out.loss, without)  # the labels-only loss skips the last position


def test_different_tokenizer_is_refused(jsonl_corpus, trained_tokenizer, tokenizer, tmp_path):
    prepare_data([jsonl_corpus], trained_tokenizer, tmp_path / "data", val_fraction=0.0, workers=1)
    with pytest.raises(ValueError, match="prepared with a different tokenizer"):
        TokenBlocks(tmp_path / "data", block_size=16, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="fewer than one block"):
        TokenBlocks(tmp_path / "data", block_size=10**7)
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        TokenBlocks(tmp_path, block_size=16)


def test_bad_input_writes_nothing(trained_tokenizer, trained_tokenizer_dir, tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="corpus is empty"):
        prepare_data([empty], trained_tokenizer, out, workers=1)
    with pytest.raises(FileNotFoundError, match="nope.txt does not exist"):
        prepare_data([tmp_path / "nope.txt"], trained_tokenizer, out)
    with pytest.raises(FileNotFoundError, match="tokenizer folder"):
        prepare_data([empty], tmp_path / "no-tokenizer", out)
    small = tmp_path / "small.txt"
    small.write_text("just a few words")
    with pytest.raises(ValueError, match="too small for val_fraction=0.1"):
        prepare_data([small], trained_tokenizer_dir, out, val_fraction=0.1, workers=1)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"text": "fine"}) * 1 + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        prepare_data([broken], trained_tokenizer, out, workers=2)
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="corrupt.parquet"):
        prepare_data([corrupt], trained_tokenizer, out, workers=1)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_data([small], trained_tokenizer, out, val_fraction=1.5)
    assert_nothing_written(out)


def test_invalid_utf8_policy(trained_tokenizer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9 and \xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid UTF-8"):
        prepare_data([bad], trained_tokenizer, tmp_path / "out", val_fraction=0.0, workers=1)
    manifest = prepare_data(
        [bad], trained_tokenizer, tmp_path / "out", val_fraction=0.0, workers=1, invalid_utf8="replace"
    )
    assert manifest["replaced_bytes"] == 3 and manifest["invalid_utf8"] == "replace"
    expected = encode_plain(trained_tokenizer, "ok") + encode_plain(trained_tokenizer, "caf\ufffd and \ufffd\ufffd")
    assert read_split(tmp_path / "out", "train") == expected


@pytest.mark.slow
def test_killed_run_leaves_nothing_that_looks_complete(trained_tokenizer_dir, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(varied_text(seed, 2000) for seed in range(20)) * 60, encoding="utf-8")  # ~12 MB
    out = tmp_path / "out"
    command = [console_script(), "prepare-data", str(corpus), "--tokenizer", str(trained_tokenizer_dir),
               "--output", str(out), "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is writing tokens, then kill it without warning
        staged = [p / "train.bin" for p in tmp_path.glob(".out.tmp-*")]
        if any(p.exists() and p.stat().st_size > 0 for p in staged):
            break
        time.sleep(0.02)
    else:
        pytest.fail("prepare-data never started writing")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists()  # only the hidden staging folder is left, without a manifest
    assert not list(tmp_path.glob(".out.tmp-*/manifest.json"))


def test_cli_prepare_data(jsonl_corpus, trained_tokenizer_dir, tmp_path):
    out = tmp_path / "data"
    done = subprocess.run(
        [console_script(), "prepare-data", str(jsonl_corpus), "--tokenizer", str(trained_tokenizer_dir),
         "--output", str(out), "--val-fraction", "0.2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"written to {out}" in done.stdout
    manifest = read_manifest(out)
    assert manifest["documents"] == 300 and manifest["splits"]["val"]["tokens"] > 0
    again = subprocess.run(
        [console_script(), "prepare-data", str(jsonl_corpus), "--tokenizer", str(trained_tokenizer_dir),
         "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 2 and "not empty" in again.stderr
    assert read_manifest(out) == manifest


def test_documents_without_blanks_are_cut_exactly_where_possible(trained_tokenizer, tmp_path):
    code = "x=y+1;f(a)[2]/3" * 3000  # no blank or newline: cut where the character class changes
    word = "hello" * 8000  # one 40k-letter word: no exact cut exists, so it is cut inside and counted
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(json.dumps({"text": code}) + "\n" + json.dumps({"text": word}) + "\n", encoding="utf-8")
    manifest = prepare_data([corpus], trained_tokenizer, tmp_path / "out", val_fraction=0.0, workers=2)
    ids = read_split(tmp_path / "out", "train")
    expected_code = encode_plain(trained_tokenizer, code)
    assert ids[: len(expected_code)] == expected_code
    assert manifest["inexact_cuts"] == 2  # the 40k-letter word, in 16k-character pieces


def dying_encode(texts, dtype):
    """Stands in for a worker that the kernel kills (out of memory) on one task."""
    if any("KILLME" in text for text in texts):
        os._exit(9)
    return [np.zeros(1, dtype=dtype) for _ in texts]


def test_a_dead_worker_stops_the_run_with_a_clear_error(trained_tokenizer, tmp_path, monkeypatch):
    import hf_gpt.data.tokens

    monkeypatch.setattr(hf_gpt.data.tokens, "_encode_texts", dying_encode)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["fine"] * 10 + ["KILLME"]), encoding="utf-8")
    with pytest.raises(RuntimeError, match="worker process died"):
        prepare_data([corpus], trained_tokenizer, tmp_path / "out", val_fraction=0.0, workers=2)
    assert_nothing_written(tmp_path / "out")


def test_overwrite_never_removes_inputs_or_foreign_folders(trained_tokenizer_dir, jsonl_corpus, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    inside = folder / "corpus.jsonl"
    inside.write_bytes(jsonl_corpus.read_bytes())
    with pytest.raises(ValueError, match="inside the output folder"):
        prepare_data([inside], trained_tokenizer_dir, folder, overwrite=True, workers=1)
    with pytest.raises(ValueError, match="inside the output folder"):
        prepare_data([jsonl_corpus], trained_tokenizer_dir, trained_tokenizer_dir.parent, overwrite=True, workers=1)
    with pytest.raises(ValueError, match="has no .hf_gpt-output.json, so it is not an earlier output"):
        prepare_data([jsonl_corpus], trained_tokenizer_dir, folder, overwrite=True, workers=1)
    assert inside.exists()
    prepare_data([jsonl_corpus], trained_tokenizer_dir, tmp_path / "data", workers=1)
    prepare_data([jsonl_corpus], trained_tokenizer_dir, tmp_path / "data", overwrite=True, workers=1, val_fraction=0.2)
    assert read_manifest(tmp_path / "data")["val_fraction"] == 0.2  # an earlier output is replaced


LAUNCH = """
import sys
from hf_gpt_launcher import main

sys.argv = ["hf-gpt", *sys.argv[1:]]
code = main()
print("at the end:", "torch" in sys.modules, "transformers" in sys.modules)
sys.exit(code)
"""


def test_the_data_commands_start_without_torch_or_transformers(trained_tokenizer_dir, tmp_path):
    """Both take seconds to import; the tokenizer and data commands need neither, to read, encode or write."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(varied_text(seed, 300) for seed in range(20)), encoding="utf-8")
    command = [sys.executable, "-c", LAUNCH, "prepare-data", str(corpus), "--tokenizer", str(trained_tokenizer_dir),
               "--output", str(tmp_path / "data"), "--workers", "1", "--val-fraction", "0"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "at the end: False False"
    # The same packed tokens as the Python API with a transformers tokenizer gives.
    tokenizer = AutoTokenizer.from_pretrained(trained_tokenizer_dir)
    prepare_data([corpus], tokenizer, tmp_path / "again", workers=1, val_fraction=0)
    assert (tmp_path / "data" / "train.bin").read_bytes() == (tmp_path / "again" / "train.bin").read_bytes()
    assert read_manifest(tmp_path / "data")["tokenizer"] == read_manifest(tmp_path / "again")["tokenizer"]
    command = [sys.executable, "-c", LAUNCH, "train-tokenizer", str(corpus), "--vocab-size", "300", "--output",
               str(tmp_path / "tokenizer")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "at the end: False False"
    # The folder it wrote by hand is what transformers would have written: the same tokenizer, the same settings.
    written = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    trained = train_bpe_tokenizer([corpus], 300, show_progress=False)
    assert written.backend_tokenizer.to_str() == trained.backend_tokenizer.to_str()
    for name in ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length", "extra_special_tokens"):
        assert getattr(written, name) == getattr(trained, name), name
    text = varied_text(7, 200) + " <|endoftext|>"
    assert written.decode(written(text).input_ids) == text
