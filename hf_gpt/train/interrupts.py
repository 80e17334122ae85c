"""Ctrl-C during training: finish the current step, save, then stop (a second Ctrl-C stops at once)."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """While active, SIGINT sets `requested` instead of raising KeyboardInterrupt wherever the code happens
    to be (inside a checkpoint write, or between two processes' collectives)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals can only be handled there
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
