"""Allowed ranges of numeric arguments, checked the same way by the library (names) and the command line (flags).

A number that is out of range, NaN or infinite would train silently wrongly (a negative clip norm, a zero
learning rate), so each one is refused with its name, its range and the value given.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the bound itself is excluded
    high_open: bool = False
    integer: bool = False

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return kind

    def contains(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def check(self, name: str, value, optional: bool = False) -> None:
        """ValueError naming `name` unless `value` is in range (or None, when `optional`)."""
        if not (optional and value is None) and not self.contains(value):
            raise ValueError(f"{name} must be {self}{' or None' if optional else ''}, got {value!r}")

    def parse(self, text: str):
        """An argparse `type`: argparse puts the flag's name before the message."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            value = None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self}, got {text!r}")
        return value


POSITIVE_INT = Range(1, integer=True)
COUNT = Range(0, integer=True)  # zero allowed
SEED = Range(0, 2**32 - 1, integer=True)  # what numpy and torch seeding accept
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
SHARE = Range(0, 1, high_open=True)  # a part of the whole that leaves something: [0, 1)
PROPORTION = Range(0, 1)  # [0, 1]
PROBABILITY_MASS = Range(0, 1, low_open=True)  # (0, 1], e.g. top_p
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # (0, 1), e.g. a held-out share that leaves training data
