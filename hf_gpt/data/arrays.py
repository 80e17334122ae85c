"""Numpy building blocks of the encoder: work on whole arrays of words, not a Python call per word."""

from __future__ import annotations

import numpy as np


def concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, ..., start + length - 1 of every (start, length), one range after another."""
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)


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


class HashTable:
    """A hash map from 128-bit keys (two uint64 arrays; `high` never 0) to non-negative int64 values, read and
    filled an array at a time. Open addressing with linear probing, at most half full: a lookup is mostly one
    gather."""

    def __init__(self, bits: int = 16):
        self.size = 0
        self._allocate(bits)

    def _allocate(self, bits: int) -> None:
        self.bits, self.mask = bits, (1 << bits) - 1
        self.low = np.zeros(1 << bits, dtype=np.uint64)
        self.high = np.zeros(1 << bits, dtype=np.uint64)
        self.values = np.full(1 << bits, -1, dtype=np.int64)  # -1: an empty slot

    def _home(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        mixed = (low ^ (high * np.uint64(0xC2B2AE3D27D4EB4F))) * np.uint64(0x9E3779B97F4A7C15)  # wraps: a hash
        return (mixed >> np.uint64(64 - self.bits)).astype(np.int64)

    def get(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """The value of each key, -1 where absent."""
        at = self._home(low, high)
        values = self.values[at]
        hit = (self.high[at] == high) & (self.low[at] == low)  # an empty slot's high is 0, no key's is
        found = np.where(hit, values, -1)
        todo = np.flatnonzero(~hit & (values >= 0))  # someone else's key there: probe the next slots
        at = at[todo]
        while len(todo):
            at = (at + 1) & self.mask
            values = self.values[at]
            hit = (self.high[at] == high[todo]) & (self.low[at] == low[todo])
            found[todo[hit]] = values[hit]
            probe_on = ~hit & (values >= 0)
            todo, at = todo[probe_on], at[probe_on]
        return found

    def put(self, low: np.ndarray, high: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are distinct and not in the table yet."""
        self.size += len(low)
        if 2 * self.size > len(self.values):
            old = self.values >= 0
            kept = self.low[old], self.high[old], self.values[old]
            self._allocate(max(self.bits + 1, int(2 * self.size).bit_length()))
            self._place(*kept)
        self._place(low, high, values)

    def _place(self, low: np.ndarray, high: np.ndarray, values: np.ndarray) -> None:
        todo, at = np.arange(len(low)), self._home(low, high)
        while len(todo):
            free = np.flatnonzero(self.values[at] < 0)
            # Keys after the same free slot all claim it; whichever write lands last owns it, and reads so.
            self.values[at[free]] = todo[free]
            won = free[self.values[at[free]] == todo[free]]
            slot, key = at[won], todo[won]
            self.low[slot], self.high[slot], self.values[slot] = low[key], high[key], values[key]
            waiting = np.ones(len(todo), dtype=bool)
            waiting[won] = False
            todo, at = todo[waiting], (at[waiting] + 1) & self.mask
