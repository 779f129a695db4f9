"""Ctrl-C for long-running commands: the first asks the loop to finish cleanly, a second
interrupts at once."""

from __future__ import annotations

import signal
import sys
import threading


class CtrlC:
    """Context manager; ``requested`` turns True at the first Ctrl-C (``notice`` printed to
    stderr then), the second raises KeyboardInterrupt. Only the main thread can install a
    signal handler; elsewhere Ctrl-C keeps its default behaviour."""

    def __init__(self, notice: str | None = None) -> None:
        self.requested = False
        self.notice = notice
        self._old = None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.notice:
            print("\n" + self.notice, file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
