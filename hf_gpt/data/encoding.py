"""Fast, exact encoding for byte-level BPE tokenizers: each distinct word is encoded only once.

Natural text is Zipfian: almost every pre-tokenized word has been seen before. So instead of running
the BPE merges on every word, we split the text into GPT-2's regex words with vectorised numpy code,
look every word up in a cache of word -> token ids, send only the unseen words through the BPE model,
and gather the ids. The result equals `tokenizer.encode(text)` with special tokens treated as plain
text (tiktoken's `encode_ordinary`), which a test checks on arbitrary Unicode.

The split follows GPT-2's pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
and takes each character's class (letter, number, whitespace, other) from the tokenizer's own regex
engine, probed once per distinct character, so Unicode-version differences cannot creep in.
"""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer

LETTER, NUMBER, OTHER, SPACE = 0, 1, 2, 3
UNKNOWN = 255
APOSTROPHE, BLANK = ord("'"), ord(" ")
CONTRACTIONS_2 = [ord(c) for c in "sdmt"]  # 's 'd 'm 't
CONTRACTIONS_3 = [(ord(a), ord(b)) for a, b in ("ll", "ve", "re")]  # 'll 've 're
PACKED_BYTES = 8  # words up to this many UTF-8 bytes are cached under one uint64 key


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, the byte-level BPE alphabet."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


# A word's UTF-8 bytes, read as latin-1 (one char per byte), become byte-level characters by this table.
BYTE_LEVEL = str.maketrans({chr(b): c for b, c in gpt2_bytes_to_unicode().items()})


def is_gpt2_byte_level(tokenizer: Tokenizer) -> bool:
    """True when `tokenizer` splits text exactly as this module does (GPT-2's byte-level BPE)."""
    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    return (
        spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space", False)
        and model.get("type") == "BPE"
        and not model.get("dropout")
        and all(token.get("special") for token in spec.get("added_tokens", []))
    )


class CharClasses:
    """Letter/number/other/space class of every code point, as the tokenizer's pre-tokenizer sees it."""

    def __init__(self, tokenizer: Tokenizer):
        self.pre_tokenizer = tokenizer.pre_tokenizer
        self.table = np.full(0x110000, UNKNOWN, dtype=np.uint8)

    def of(self, code_points: np.ndarray) -> np.ndarray:
        classes = self.table[code_points]
        unknown = classes == UNKNOWN
        if unknown.any():
            new = np.unique(code_points[unknown])
            self.table[new] = self._probe([chr(c) for c in new])
            classes = self.table[code_points]
        return classes

    def _probe(self, chars: list[str]) -> list[int]:
        # "\n\n" + lead + c: c joins the lead's word iff it has the lead's class; a character that
        # joins none of "a" (letter), "1" (number), "." (other) is whitespace.
        probe, positions = [], []
        length = 0
        for c in chars:
            for lead in "a1.":
                probe.append(f"\n\n{lead}{c}")
                length += 4
                positions.append(length - 1)
        starts = {start for _, (start, _) in self.pre_tokenizer.pre_tokenize_str("".join(probe))}
        classes = []
        for i in range(len(chars)):
            joined = [positions[3 * i + k] not in starts for k in range(3)]
            classes.append(joined.index(True) if any(joined) else SPACE)
        return classes


def word_starts(code_points: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Boolean mask of the characters where one of GPT-2's regex words begins."""
    n = len(code_points)
    starts = np.ones(n, dtype=bool)
    if n < 2:
        return starts
    np.not_equal(classes[1:], classes[:-1], out=starts[1:])  # every run of one class starts a word
    space = classes == SPACE
    # " ?\p{L}+" etc.: a blank right before a non-space run starts that run's word instead ...
    starts[1:] &= ~((code_points[:-1] == BLANK) & ~space[1:])
    # ... and "\s+(?!\S)" leaves the last whitespace before a non-space on its own (or to that blank).
    starts[:-1] |= space[:-1] & ~space[1:]
    # Contractions match only at a word start: "'" + s/d/m/t or ll/ve/re is a word of its own.
    apostrophes = np.flatnonzero(starts & (code_points == APOSTROPHE))
    if len(apostrophes):
        padded = np.concatenate([code_points, np.zeros(2, code_points.dtype)])
        c1, c2 = padded[apostrophes + 1], padded[apostrophes + 2]
        two = np.isin(c1, CONTRACTIONS_2)
        three = np.zeros_like(two)
        for a, b in CONTRACTIONS_3:
            three |= (c1 == a) & (c2 == b)
        starts[apostrophes[two | three] + 1] = False
        ends = np.concatenate([apostrophes[two] + 2, apostrophes[three] + 3])
        starts[ends[ends < n]] = True
    return starts


def utf8_lengths(code_points: np.ndarray) -> np.ndarray:
    return 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)


class GrowingArray:
    """An append-only int64 array whose capacity doubles, so appends cost O(1) amortised."""

    def __init__(self) -> None:
        self.buffer = np.zeros(1024, dtype=np.int64)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    @property
    def values(self) -> np.ndarray:
        return self.buffer[: self.size]

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        if end > len(self.buffer):
            grown = np.zeros(max(end, 2 * len(self.buffer)), dtype=np.int64)
            grown[: self.size] = self.values
            self.buffer = grown
        self.buffer[self.size : end] = values
        self.size = end


class CachedEncoder:
    """Encodes text with a GPT-2-style byte-level BPE tokenizer, caching the ids of every word.

    Memory is bounded: the cache is emptied once it holds `max_words` words.
    """

    def __init__(self, tokenizer: Tokenizer, max_words: int = 2_000_000):
        if not is_gpt2_byte_level(tokenizer):
            raise ValueError("CachedEncoder needs a GPT-2-style byte-level BPE tokenizer (see is_gpt2_byte_level)")
        self.bpe = tokenizer.model
        self.classes = CharClasses(tokenizer)
        self.max_words = max_words
        self._clear()

    def _clear(self) -> None:
        self.packed_keys = np.zeros(0, dtype=np.uint64)  # sorted keys of short words
        self.packed_slots = np.zeros(0, dtype=np.int64)  # their slots
        self.long_slots: dict[bytes, int] = {}  # slots of long words
        self.slot_start = GrowingArray()  # slot -> first id in self.ids
        self.slot_length = GrowingArray()
        self.ids = GrowingArray()

    def _new_slots(self, words: list[bytes]) -> np.ndarray:
        """Encode unseen words once (straight through the BPE model: each is one pre-token) and give each a slot."""
        tokens = [self.bpe.tokenize(word.decode("latin-1").translate(BYTE_LEVEL)) for word in words]
        lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        first = len(self.slot_start)
        self.slot_start.extend(len(self.ids) + np.cumsum(lengths) - lengths)
        self.slot_length.extend(lengths)
        self.ids.extend(np.fromiter((t.id for word in tokens for t in word), dtype=np.int64, count=int(lengths.sum())))
        return np.arange(first, first + len(words))

    def _find_packed(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(self.packed_keys):
            return np.zeros(len(keys), dtype=np.int64), np.zeros(len(keys), dtype=bool)
        where = np.minimum(np.searchsorted(self.packed_keys, keys), len(self.packed_keys) - 1)
        return self.packed_slots[where], self.packed_keys[where] == keys

    def _packed_slots(self, data: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        padded = np.frombuffer(data + bytes(PACKED_BYTES), dtype=np.uint8)
        keys = np.zeros(len(starts), dtype=np.uint64)
        for k in range(PACKED_BYTES):
            keys |= (padded[starts + k] * (lengths > k)).astype(np.uint64) << np.uint64(8 * k)
        slots, found = self._find_packed(keys)
        if not found.all():
            missing = np.flatnonzero(~found)
            new_keys, first = np.unique(keys[missing], return_index=True)
            at = missing[first]
            words = [data[s : s + n] for s, n in zip(starts[at].tolist(), lengths[at].tolist(), strict=True)]
            where = np.searchsorted(self.packed_keys, new_keys)  # merge the sorted new keys in, no re-sort
            self.packed_slots = np.insert(self.packed_slots, where, self._new_slots(words))
            self.packed_keys = np.insert(self.packed_keys, where, new_keys)
            slots[missing], _ = self._find_packed(keys[missing])
        return slots

    def _long_slots(self, data: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        words = [data[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
        unseen = list(dict.fromkeys(w for w in words if w not in self.long_slots))
        if unseen:
            self.long_slots.update(zip(unseen, self._new_slots(unseen).tolist(), strict=True))
        return np.fromiter((self.long_slots[w] for w in words), dtype=np.int64, count=len(words))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` (int64), equal to the tokenizer's own encoding of it."""
        if not text:
            return np.zeros(0, dtype=np.int64)
        if len(self.slot_start) > self.max_words:
            self._clear()
        code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        data = text.encode("utf-8")
        char_starts = np.flatnonzero(word_starts(code_points, self.classes.of(code_points)))
        byte_offsets = np.zeros(len(code_points) + 1, dtype=np.int64)
        np.cumsum(utf8_lengths(code_points), out=byte_offsets[1:])
        starts = byte_offsets[char_starts]
        lengths = np.diff(np.append(starts, len(data)))
        # Short words without NUL bytes pack losslessly into a uint64 (NUL would alias a shorter word).
        short = lengths <= PACKED_BYTES
        nul = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0)
        if len(nul):
            short[np.searchsorted(starts, nul, side="right") - 1] = False
        slots = np.empty(len(starts), dtype=np.int64)
        slots[short] = self._packed_slots(data, starts[short], lengths[short])
        slots[~short] = self._long_slots(data, starts[~short], lengths[~short])
        # Gather every word's ids into one flat array.
        counts = self.slot_length.values[slots]
        out_starts = np.cumsum(counts) - counts
        index = np.repeat(self.slot_start.values[slots] - out_starts, counts) + np.arange(int(counts.sum()))
        return self.ids.values[index]
