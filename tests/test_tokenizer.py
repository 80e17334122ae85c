"""The byte-level BPE trainer, GPT-2 file compatibility and the cached encoder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import VARIED, WITHOUT_HF_GPT, varied_text
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoTokenizer, GPT2TokenizerFast

from hf_gpt.data.arrays import HashTable
from hf_gpt.data.bpe import ArrayBPE
from hf_gpt.data.encoding import CachedEncoder, gpt2_bytes_to_unicode, is_gpt2_byte_level
from hf_gpt.data.tokenizer import (
    SEPARATOR,
    tokenizer_fingerprint,
    tokenizer_from_gpt2_files,
    train_bpe_tokenizer,
)

HARD_STRINGS = [
    "",
    "😀👩‍💻🇫🇷",
    "日本語のテキスト、中文。한국어",
    "cafe\u0301 n\u0303 a\u0308\u0304",
    "\x00\x01\x07\x1b[0m\x7f\x85\u200b\u2028",
    "   \n\n\n\t\t  \r\n \u00a0\u3000  ",
    "don't 'll 've 're 's 'd 'm 't ''s ' s",
    "<|endoftext|><|sep|> <|endoftext|>",
]


def console_script() -> str:
    """The installed `hf-gpt` entry point next to this interpreter."""
    return str(Path(sys.executable).with_name("hf-gpt"))


def test_trained_folder_loads_with_autotokenizer(trained_tokenizer_dir, trained_tokenizer):
    config = json.loads((trained_tokenizer_dir / "tokenizer_config.json").read_text())
    assert "auto_map" not in config  # no custom code
    tok = trained_tokenizer
    assert tok.is_fast
    assert len(tok) == 700
    assert tok.model_max_length == 1024
    assert tok.bos_token == tok.eos_token == tok.pad_token == tok.unk_token == SEPARATOR
    assert tok.convert_tokens_to_ids([SEPARATOR, "<|sep|>"]) == [0, 1]
    vocab = tok.get_vocab()
    assert all(byte in vocab for byte in pre_tokenizers.ByteLevel.alphabet())  # all 256 bytes
    assert tok("a <|sep|> b<|endoftext|>").input_ids.count(1) == 1  # special tokens stay whole


def test_folder_loads_where_hf_gpt_is_not_installed(trained_tokenizer_dir, trained_tokenizer):
    script = WITHOUT_HF_GPT + (
        "import json\nfrom transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(json.dumps([tok.is_fast, tok(sys.argv[2]).input_ids]))\n"
    )
    text = HARD_STRINGS[2] + HARD_STRINGS[6]
    done = subprocess.run(
        [sys.executable, "-c", script, str(trained_tokenizer_dir), text], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [True, trained_tokenizer(text).input_ids]


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_round_trip_examples(trained_tokenizer, text):
    ids = trained_tokenizer(text).input_ids
    assert trained_tokenizer.decode(ids) == text
    assert trained_tokenizer.unk_token_id not in ids or SEPARATOR in text  # no unknown token, ever


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
@example(text="")
def test_round_trip_any_unicode(trained_tokenizer, text):
    assert trained_tokenizer.decode(trained_tokenizer(text).input_ids) == text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(st.sampled_from(VARIED), st.text(max_size=6)), max_size=30))
def test_cached_encoder_equals_tokenizer(trained_tokenizer, parts):
    """The Zipf cache must be invisible: same ids as the tokenizer, special strings encoded as text."""
    text = "".join(parts)
    encoder = CachedEncoder(trained_tokenizer.backend_tokenizer)
    expected = trained_tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
    assert encoder.encode(text).tolist() == expected
    assert encoder.encode(text).tolist() == expected  # again, now from the cache


# Texts whose neighbours would change their words if they were simply joined: trailing and leading
# whitespace, a dangling apostrophe before "s"/"ll", letters that would run on, empty texts.
EDGES = ["", " ", "  ", "\n", "\t ", "'", "s", "ll", "'s", "'ll ", "a", "1", ".", " x", "\u00a0", "é", "\x00"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.one_of(st.sampled_from(EDGES + list(VARIED)), st.text(max_size=8)), max_size=12))
def test_batch_encodes_each_text_as_if_alone(trained_tokenizer, texts):
    encoder = CachedEncoder(trained_tokenizer.backend_tokenizer)
    expected = [trained_tokenizer(t, add_special_tokens=False, split_special_tokens=True).input_ids for t in texts]
    assert [ids.tolist() for ids in encoder.encode_batch(texts)] == expected


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(1, 2**64 - 1)), unique=True, max_size=300))
def test_hash_table_finds_every_key_through_collisions_and_growth(keys):
    table = HashTable(bits=1)  # two slots: every insert collides, and the table grows many times
    low = np.array([k[0] for k in keys], dtype=np.uint64)
    high = np.array([k[1] for k in keys], dtype=np.uint64)
    for part in np.array_split(np.arange(len(keys)), 4):
        table.put(low[part], high[part], part)
    assert table.get(low, high).tolist() == list(range(len(keys)))
    index = {key: i for i, key in enumerate(keys)}
    shifted = low + np.uint64(1)  # wraps; mostly absent keys, some present
    expected = [index.get((int(a), int(b)), -1) for a, b in zip(shifted, high, strict=True)]
    assert table.get(shifted, high).tolist() == expected
    assert len(table.values) >= 2 * len(keys)  # never more than half full


@pytest.fixture(scope="module")
def runs_tokenizer(tmp_path_factory):
    """A tokenizer whose merges join runs of one letter ("aa", "aaa", "aaaa") and alternations ("abab"): the
    overlapping pairs that BPE must merge left to right."""
    corpus = tmp_path_factory.mktemp("runs") / "runs.txt"
    corpus.write_text(" ".join("ab"[i % 2] * (1 + i % 9) + "ab" * (i % 4) for i in range(4000)), encoding="utf-8")
    return train_bpe_tokenizer([corpus], 300, tmp_path_factory.mktemp("runs_tokenizer"), show_progress=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.one_of(st.text("ab", min_size=1, max_size=30), st.text(min_size=1, max_size=6)), max_size=40))
def test_numpy_merges_equal_tokenizers_bpe_word_by_word(runs_tokenizer, words):
    backend = runs_tokenizer.backend_tokenizer
    merges = ArrayBPE.of(json.loads(backend.to_str())["model"], gpt2_bytes_to_unicode())
    assert merges is not None  # learned merges are in rank order
    raw = [w.encode("utf-8", "surrogatepass") for w in words]
    if not raw:
        return
    lengths = np.array([len(w) for w in raw])
    ids, counts = merges.encode(np.frombuffer(b"".join(raw), dtype=np.uint8), np.cumsum(lengths) - lengths, lengths)
    byte_level = [w.decode("latin-1").translate({b: c for b, c in gpt2_bytes_to_unicode().items()}) for w in raw]
    expected = [[t.id for t in backend.model.tokenize(w)] for w in byte_level]
    assert counts.tolist() == [len(e) for e in expected] and ids.tolist() == [i for e in expected for i in e]


def test_merges_out_of_rank_order_fall_back_to_tokenizers(runs_tokenizer):
    spec = json.loads(runs_tokenizer.backend_tokenizer.to_str())
    merges = spec["model"]["merges"]
    pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
    # Move the first merge that joins an earlier merge's result to the front, before the merge that makes it.
    later = next(i for i, pair in enumerate(pairs) if {"".join(p) for p in pairs[:i]} & set(pair))
    merges.insert(0, merges.pop(later))
    shuffled = Tokenizer.from_str(json.dumps(spec))
    assert ArrayBPE.of(spec["model"], gpt2_bytes_to_unicode()) is None
    assert ArrayBPE.of({**json.loads(runs_tokenizer.backend_tokenizer.to_str())["model"], "ignore_merges": True},
                       gpt2_bytes_to_unicode()) is None  # fmt: skip
    text = " ".join("ab"[i % 2] * (1 + i % 7) for i in range(300)) + " café 日本"
    encoder = CachedEncoder(shuffled)
    assert encoder.array_bpe is None
    assert encoder.encode(text).tolist() == shuffled.encode(text).ids


def test_cached_encoder_on_long_text_and_small_cache(trained_tokenizer):
    text = "\n".join(varied_text(seed, 300) for seed in range(100, 110))
    expected = trained_tokenizer(text, split_special_tokens=True).input_ids
    encoder = CachedEncoder(trained_tokenizer.backend_tokenizer, max_words=50)  # cache cleared often
    head = trained_tokenizer(text[:5000], split_special_tokens=True).input_ids
    assert encoder.encode(text[:5000]).tolist() == head
    assert encoder.encode(text).tolist() == expected


def test_byte_table_is_the_byte_level_alphabet():
    table = gpt2_bytes_to_unicode()
    assert sorted(table) == list(range(256)) and set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_cached_encoder_refuses_other_pipelines(trained_tokenizer):
    backend = trained_tokenizer.backend_tokenizer
    other = type(backend).from_str(backend.to_str())
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    assert is_gpt2_byte_level(backend) and not is_gpt2_byte_level(other)
    with pytest.raises(ValueError, match="GPT-2-style"):
        CachedEncoder(other)


@pytest.fixture(scope="module")
def gpt2_files(trained_tokenizer, tmp_path_factory):
    """vocab.json + merges.txt in GPT-2's format, written from a tokenizer we trained (no download)."""
    folder = tmp_path_factory.mktemp("gpt2_files")
    trained_tokenizer.backend_tokenizer.model.save(str(folder))
    return folder / "vocab.json", folder / "merges.txt"


def test_gpt2_files_give_gpt2_ids(gpt2_files):
    vocab_file, merges_file = gpt2_files
    ours = tokenizer_from_gpt2_files(vocab_file, merges_file, model_max_length=64)
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    # transformers 5.24's GPT2TokenizerFast(vocab_file=..., merges_file=...) silently builds an empty
    # tokenizer, so the reference is built from the loaded vocabulary and merges.
    reference = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert len(reference) >= len(vocab) > 256 and len(merges) > 100
    for seed in range(20):
        text = varied_text(seed + 1000, 60)
        assert ours(text).input_ids == reference(text).input_ids
    assert ours.model_max_length == 64 and ours.eos_token == SEPARATOR
    assert ours.convert_tokens_to_ids(SEPARATOR) == vocab[SEPARATOR]  # kept its id, as 50256 in GPT-2


def test_gpt2_files_errors(gpt2_files, tmp_path):
    vocab_file, _ = gpt2_files
    with pytest.raises(FileNotFoundError, match="merges"):
        tokenizer_from_gpt2_files(vocab_file, tmp_path / "merges.txt")
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\nnot-a-token also-not\n")
    with pytest.raises(ValueError, match="cannot read GPT-2 files"):
        tokenizer_from_gpt2_files(vocab_file, bad)


def test_trains_from_jsonl_parquet_and_dataset_objects(tmp_path):
    import datasets

    docs = [varied_text(seed, 80) for seed in range(30)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)) + "\n", encoding="utf-8")
    table = datasets.Dataset.from_dict({"body": docs})
    table.to_parquet(str(tmp_path / "docs.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "folder").mkdir()
    table.to_json(str(tmp_path / "folder" / "part-0.jsonl"))  # a folder load_dataset reads by itself
    results = {}
    for name, source in [
        ("jsonl", jsonl),
        ("parquet", tmp_path / "docs.parquet"),
        ("saved", tmp_path / "saved"),
        ("folder", tmp_path / "folder"),
        ("object", table),
    ]:
        tok = train_bpe_tokenizer([source], 400, text_field="body", show_progress=False)
        results[name] = tokenizer_fingerprint(tok)
    assert len(set(results.values())) == 1, results  # same documents, same tokenizer
    with pytest.raises(ValueError, match="no text field 'text'.*body"):
        train_bpe_tokenizer([jsonl], 400, show_progress=False)


def test_streams_in_bounded_pieces(tmp_path, monkeypatch):
    """Training never holds more than a piece of text at once (memory flat for corpora beyond RAM)."""
    from hf_gpt.data import documents

    big = tmp_path / "big.txt"
    big.write_text("word " * 200_000, encoding="utf-8")  # one 1 MB document
    seen = []
    original = documents.Corpus.texts

    def spy(self, desc="reading"):
        for text in original(self, desc):
            seen.append(len(text))
            yield text

    monkeypatch.setattr(documents.Corpus, "texts", spy)
    train_bpe_tokenizer([big], 300, show_progress=False)
    assert sum(seen) == 1_000_000 and max(seen) <= 2 * 16384 and len(seen) > 30


def assert_nothing_written(output: Path):
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.")]


def test_bad_input_is_refused_and_writes_nothing(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("some text here", encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="at least 258"):
        train_bpe_tokenizer([text], 257, out, special_tokens=["<|sep|>"])
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        train_bpe_tokenizer([tmp_path / "missing.txt"], 300, out)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="corpus is empty"):
        train_bpe_tokenizer([empty], 300, out, show_progress=False)
    with pytest.raises(ValueError, match="repeat"):
        train_bpe_tokenizer([text], 300, out, special_tokens=["<|sep|>", "<|sep|>"])
    assert_nothing_written(out)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        train_bpe_tokenizer([text], 300, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").exists()


def test_invalid_utf8_rejected_or_replaced_and_counted(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 cr\xe8me ".encode("latin-1") * 50 + b"ok")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"latin1.txt.*invalid UTF-8.*--invalid-utf8 replace"):
        train_bpe_tokenizer([bad], 300, out, show_progress=False)
    assert_nothing_written(out)
    tok = train_bpe_tokenizer([bad], 300, out, invalid_utf8="replace", show_progress=False)
    assert "\ufffd" in tok.decode(tok("caf\ufffd").input_ids)
    assert out.is_dir()


def test_cli_train_tokenizer(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(varied_text(7, 2000), encoding="utf-8")
    out = tmp_path / "tok"
    done = subprocess.run(
        [console_script(), "train-tokenizer", str(corpus), "--vocab-size", "500", "--output", str(out),
         "--special-token", "<|a|>", "--special-token", "<|b|>", "--model-max-length", "256"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"saved to {out}" in done.stdout
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 500 and tok.model_max_length == 256
    assert tok.convert_tokens_to_ids(["<|a|>", "<|b|>"]) == [1, 2]
    failed = subprocess.run(
        [console_script(), "train-tokenizer", str(corpus), "--vocab-size", "100", "--output", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode == 2 and "vocab_size=100 is too small" in failed.stderr
    assert not (tmp_path / "x").exists()


def test_fingerprint_tells_tokenizers_apart(trained_tokenizer, tokenizer):
    assert tokenizer_fingerprint(trained_tokenizer) == tokenizer_fingerprint(trained_tokenizer.backend_tokenizer)
    assert tokenizer_fingerprint(trained_tokenizer) != tokenizer_fingerprint(tokenizer)
