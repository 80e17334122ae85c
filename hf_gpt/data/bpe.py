"""Byte-level BPE merges applied to many words at once, with numpy: the word cache's encoder of new words.

tokenizers' BPE encodes one word per call, about 3 µs each; a corpus of many distinct words (names, code,
numbers) spends most of its time there. Here all of a batch's new words are merged together, round by
round: in each word, every occurrence of its lowest-ranked adjacent pair is merged (left to right where
occurrences overlap, as in "a a a"), then only the pairs beside a merge are looked up again.

That is what tokenizers' BPE does one merge at a time (lowest rank first, leftmost first), provided a merge
never ranks before the merges that make its parts: then a merge can only create pairs of later ranks, and
a word's merges happen rank by rank. Merge lists learned by BPE training have that order by construction;
`ArrayBPE.of` checks it, and the other options tokenizers' BPE has, and declines anything else.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import HashTable, concatenated_ranges

NO_MERGE = np.iinfo(np.int64).max


class ArrayBPE:
    def __init__(self, byte_ids: np.ndarray, left: np.ndarray, right: np.ndarray, merged: np.ndarray):
        self.byte_ids = byte_ids  # byte -> id of its byte-level character
        self.merged = merged  # rank -> id of the merge's result
        self.vocab_size = np.uint64(max(int(ids.max()) for ids in (byte_ids, left, right, merged)) + 1)
        self.ranks = HashTable()  # (left id, right id) -> rank
        self.ranks.put(*self._pair_keys(left, right), np.arange(len(merged)))

    @classmethod
    def of(cls, model: dict[str, Any], byte_chars: dict[int, str]) -> ArrayBPE | None:
        """From tokenizer.json's "model"; None where rounds of merges would not give tokenizers' result."""
        plain = not (
            model.get("dropout") or model.get("ignore_merges") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix") or model.get("byte_fallback")
        )  # fmt: skip
        vocab, merges = model.get("vocab") or {}, model.get("merges") or []
        pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
        if not plain or not pairs or any(c not in vocab for c in byte_chars.values()):
            return None
        try:
            columns = ([a for a, _ in pairs], [b for _, b in pairs], [a + b for a, b in pairs])
            left, right, merged = (np.array([vocab[t] for t in column], dtype=np.int64) for column in columns)
        except (KeyError, ValueError):
            return None
        # Every merge must rank after every merge that makes one of its parts; and no pair may be listed twice.
        size = max(vocab.values()) + 1
        made_by = np.full(size, -1, dtype=np.int64)
        ranks = np.arange(len(merged))
        np.maximum.at(made_by, merged, ranks)
        if (made_by[left] >= ranks).any() or (made_by[right] >= ranks).any():
            return None
        if len(np.unique(left * size + right)) != len(pairs):
            return None
        return cls(np.array([vocab[byte_chars[b]] for b in range(256)], dtype=np.int64), left, right, merged)

    def _pair_keys(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = left.astype(np.uint64) * self.vocab_size + right.astype(np.uint64)
        return low, np.ones(len(low), dtype=np.uint64)

    def _rank(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        found = self.ranks.get(*self._pair_keys(left, right))
        return np.where(found >= 0, found, NO_MERGE)

    def encode(self, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the words `data[start : start + length]` (uint8 bytes, lengths >= 1), one after another,
        and how many ids each word has."""
        ends = np.cumsum(lengths)
        symbols = self.byte_ids[data[concatenated_ranges(starts, lengths)]]
        word = np.repeat(np.arange(len(lengths)), lengths)
        last = np.zeros(len(symbols), dtype=bool)  # the last symbol of its word
        last[ends - 1] = True
        rank = np.full(len(symbols), NO_MERGE)  # rank of the pair (symbol, next symbol of the same word)
        pairs = np.flatnonzero(~last)
        rank[pairs] = self._rank(symbols[pairs], symbols[pairs + 1])
        done_words, done_symbols = [], []
        while len(symbols):
            firsts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
            lowest = np.minimum.reduceat(rank, firsts)
            lowest = np.repeat(lowest, np.diff(np.append(firsts, len(symbols))))
            finished = lowest == NO_MERGE  # words with nothing left to merge leave the rounds
            if finished.any():
                done_words.append(word[finished])
                done_symbols.append(symbols[finished])
                keep = ~finished
                symbols, word, last, rank, lowest = symbols[keep], word[keep], last[keep], rank[keep], lowest[keep]
                if not len(symbols):
                    break
            merge = rank == lowest
            after_merge = np.concatenate([[False], merge[:-1]])
            if (merge & after_merge).any():  # overlapping occurrences ("a a a"): every other one, from the left
                position = np.arange(len(merge))
                run_start = np.maximum.accumulate(np.where(merge & ~after_merge, position, 0))
                merge &= (position - run_start) % 2 == 0
                after_merge = np.concatenate([[False], merge[:-1]])
            at = np.flatnonzero(merge)
            symbols[at] = self.merged[rank[at]]
            last[at] = last[at + 1]
            keep = ~after_merge
            symbols, word, last, rank, merge = symbols[keep], word[keep], last[keep], rank[keep], merge[keep]
            # Only the pairs that now start at a merged symbol or end at one are new.
            before_merge = np.concatenate([merge[1:], [False]])
            changed = np.flatnonzero((merge | before_merge) & ~last)
            rank[changed] = self._rank(symbols[changed], symbols[changed + 1])
            rank[last] = NO_MERGE
        word, ids = np.concatenate(done_words), np.concatenate(done_symbols)
        order = np.argsort(word, kind="stable")  # back in word order, each word's ids in their order
        return ids[order], np.bincount(word, minlength=len(lengths))
