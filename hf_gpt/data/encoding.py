"""Fast, exact encoding for byte-level BPE tokenizers: each distinct word is encoded only once.

Natural text is Zipfian: almost every pre-tokenized word has been seen before. So instead of running
the BPE merges on every word, we split the text into GPT-2's regex words with vectorised numpy code,
look every word up in a cache of word -> token ids (a numpy hash table keyed by the word's bytes, so a
lookup is a few array operations for a whole text, not a Python call per word), send only the unseen
words through the BPE model, and gather the ids. Many texts are encoded in one pass, each as if alone.
The result equals `tokenizer.encode(text)` with special tokens treated as plain text (tiktoken's
`encode_ordinary`), which tests check on arbitrary Unicode.

The split follows GPT-2's pattern
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
and takes each character's class (letter, number, whitespace, other) from the tokenizer's own regex
engine, probed once per distinct character, so Unicode-version differences cannot creep in.
"""

from __future__ import annotations

import json

import numpy as np
from tokenizers import Tokenizer

from .arrays import GrowingArray, HashTable, concatenated_ranges
from .bpe import ArrayBPE

LETTER, NUMBER, OTHER, SPACE = 0, 1, 2, 3
UNKNOWN = 255
APOSTROPHE, BLANK = ord("'"), ord(" ")
CONTRACTIONS_2 = [ord(c) for c in "sdmt"]  # 's 'd 'm 't
CONTRACTIONS_3 = [(ord(a), ord(b)) for a, b in ("ll", "ve", "re")]  # 'll 've 're


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, the byte-level BPE alphabet."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


# Byte -> the code point of its byte-level character (all below 0x10000).
BYTE_LEVEL_CODES = np.array([ord(c) for _, c in sorted(gpt2_bytes_to_unicode().items())], dtype="<u2")


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


def utf8_char_offsets(data: np.ndarray) -> np.ndarray:
    """Byte offset of every character of UTF-8 `data` (the bytes that are not continuation bytes)."""
    return np.flatnonzero((data & 0xC0) != 0x80)


ARRAY_BPE_BYTES = 64  # longer new words take tokenizers' BPE: one long word would keep every round going
PACKED_BYTES = 15  # words up to this many UTF-8 bytes are keyed by two uint64 holding their bytes and length
LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)  # mask of the n low bytes


def packed_keys(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lossless keys of words of at most PACKED_BYTES bytes: bytes 0-7 and 8-14, the length in the top byte."""
    padded = np.concatenate([data, np.zeros(16, dtype=np.uint8)])
    eight_bytes_at = np.ndarray((len(data) + 9,), dtype="<u8", buffer=padded, strides=(1,))  # unaligned view
    low = eight_bytes_at[starts] & LOW_BYTES[np.minimum(lengths, 8)]
    high = eight_bytes_at[starts + 8] & LOW_BYTES[np.maximum(lengths - 8, 0)]
    return low, high | (lengths.astype(np.uint64) << np.uint64(56))


def first_of_each_pair(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct (low, high) key."""
    order = np.lexsort((high, low))
    low, high = low[order], high[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    return order[new]


class CachedEncoder:
    """Encodes text with a GPT-2-style byte-level BPE tokenizer, caching the ids of every word.

    Memory is bounded: the cache is emptied once it holds `max_words` words.
    """

    def __init__(self, tokenizer: Tokenizer, max_words: int = 2_000_000):
        if not is_gpt2_byte_level(tokenizer):
            raise ValueError("CachedEncoder needs a GPT-2-style byte-level BPE tokenizer (see is_gpt2_byte_level)")
        self.bpe = tokenizer.model
        self.array_bpe = ArrayBPE.of(json.loads(tokenizer.to_str())["model"], gpt2_bytes_to_unicode())
        self.classes = CharClasses(tokenizer)
        self.max_words = max_words
        self._clear()

    def _clear(self) -> None:
        self.short_slots = HashTable()  # slots of words of up to PACKED_BYTES bytes
        self.long_slots: dict[bytes, int] = {}  # slots of longer words
        self.slot_start = GrowingArray()  # slot -> first id in self.ids
        self.slot_length = GrowingArray()
        self.ids = GrowingArray()

    def _new_slots(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Encode unseen words once and give each a slot: with numpy all at once where that is exact, else straight
        through tokenizers' BPE model (each word is one pre-token)."""
        slots = np.empty(len(starts), dtype=np.int64)
        in_arrays = lengths <= ARRAY_BPE_BYTES if self.array_bpe else np.zeros(len(starts), dtype=bool)
        for chosen, encode in ((in_arrays, self.array_bpe and self.array_bpe.encode), (~in_arrays, self._tokenize)):
            if chosen.any():
                ids, counts = encode(data, starts[chosen], lengths[chosen])
                first = len(self.slot_start)
                self.slot_start.extend(len(self.ids) + np.cumsum(counts) - counts)
                self.slot_length.extend(counts)
                self.ids.extend(ids)
                slots[chosen] = np.arange(first, first + len(counts))
        return slots

    def _tokenize(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like ArrayBPE.encode, a word per call of tokenizers' BPE model."""
        ends = np.cumsum(lengths)
        # All the words' bytes as byte-level characters in one string (each fits UTF-16), then cut into words.
        text = BYTE_LEVEL_CODES[data[concatenated_ranges(starts, lengths)]].tobytes().decode("utf-16-le")
        tokens = [self.bpe.tokenize(text[a:b]) for a, b in zip((ends - lengths).tolist(), ends.tolist(), strict=True)]
        counts = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
        ids = np.fromiter((t.id for word in tokens for t in word), dtype=np.int64, count=int(counts.sum()))
        return ids, counts

    def _short_word_slots(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        low, high = packed_keys(data, starts, lengths)
        slots = self.short_slots.get(low, high)
        missing = np.flatnonzero(slots < 0)
        if len(missing):
            new = missing[first_of_each_pair(low[missing], high[missing])]
            self.short_slots.put(low[new], high[new], self._new_slots(data, starts[new], lengths[new]))
            slots[missing] = self.short_slots.get(low[missing], high[missing])
        return slots

    def _long_word_slots(self, data: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        words = [data[s : s + n] for s, n in zip(starts.tolist(), lengths.tolist(), strict=True)]
        unseen = list(dict.fromkeys(w for w in words if w not in self.long_slots))
        if unseen:
            unseen_bytes = np.frombuffer(b"".join(unseen), dtype=np.uint8)
            unseen_lengths = np.fromiter(map(len, unseen), dtype=np.int64, count=len(unseen))
            slots = self._new_slots(unseen_bytes, np.cumsum(unseen_lengths) - unseen_lengths, unseen_lengths)
            self.long_slots.update(zip(unseen, slots.tolist(), strict=True))
        return np.fromiter(map(self.long_slots.__getitem__, words), dtype=np.int64, count=len(words))

    def encode(self, text: str) -> np.ndarray:
        """Token ids of `text` (int64), equal to the tokenizer's own encoding of it."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, each as if encoded alone; one pass over all of them, which is faster."""
        if not texts:
            return []
        if len(self.slot_start) > self.max_words:
            self._clear()
        # The texts joined by "\n": a whitespace character that no neighbour can pull into its word (see
        # word_starts), so forcing word starts at each separator and right after it splits each text as alone.
        joined = "\n".join(texts)
        code_points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        is_start = word_starts(code_points, self.classes.of(code_points))
        text_lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        separators = np.cumsum(text_lengths[:-1] + 1) - 1
        is_start[separators] = True
        is_start[separators[separators + 1 < len(code_points)] + 1] = True
        char_starts = np.flatnonzero(is_start)
        raw = joined.encode("utf-8")
        data = np.frombuffer(raw, dtype=np.uint8)
        starts = char_starts if len(data) == len(code_points) else utf8_char_offsets(data)[char_starts]
        lengths = np.diff(np.append(starts, len(data)))
        # Which text each word belongs to; the separators' own words are left out.
        is_separator = np.zeros(len(code_points) + 1, dtype=bool)
        is_separator[separators] = True
        separator_word = is_separator[char_starts]
        text_of_word = np.cumsum(separator_word)
        starts, lengths, text_of_word = starts[~separator_word], lengths[~separator_word], text_of_word[~separator_word]

        short = lengths <= PACKED_BYTES
        slots = np.empty(len(starts), dtype=np.int64)
        slots[short] = self._short_word_slots(data, starts[short], lengths[short])
        slots[~short] = self._long_word_slots(raw, starts[~short], lengths[~short])
        # Gather every word's ids into one flat array, then cut it at the texts' ends.
        counts = self.slot_length.values[slots]
        ids = self.ids.values[concatenated_ranges(self.slot_start.values[slots], counts)]
        tokens_per_text = np.bincount(text_of_word, weights=counts, minlength=len(texts)).astype(np.int64)
        return np.split(ids, np.cumsum(tokens_per_text)[:-1])
