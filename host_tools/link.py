"""Host end of the wire protocol over a serial port (a board, or the virtual helmet's pty).

The framing is ``painhelm.firmware.wire`` — the helmet's own module — so the two ends
cannot drift. ``HelmetLink`` only adds I/O: sequence numbers, timeouts and waiting for the
reply that carries the request's sequence number.
"""

from __future__ import annotations

import json
import time

import numpy as np

from painhelm.firmware import wire


class LinkError(Exception):
    """The helmet did not answer as the protocol says (timeout, error frame, bad frame)."""


class HelmetLink:
    """Request/response over a pyserial-like object (``read``, ``write``, ``in_waiting``)."""

    def __init__(self, serial, timeout: float = 10.0):
        self.serial = serial
        self.timeout = timeout
        self._seq = 0
        self._inbox: list[tuple[int, int, bytes]] = []
        self.text: list[bytes] = []  # console lines that were not frames (prints, tracebacks)
        self.bad_frames = 0
        self._parser = wire.LineParser(self._on_frame, self.text.append, self._on_error)

    def _on_frame(self, msg_type: int, seq: int, payload) -> None:
        self._inbox.append((msg_type, seq, bytes(payload)))

    def _on_error(self, exc: Exception) -> None:
        self.bad_frames += 1

    def _pump(self, deadline: float) -> None:
        while not self._inbox and time.monotonic() < deadline:
            data = self.serial.read(max(1, self.serial.in_waiting))
            if data:
                self._parser.feed(bytes(data))

    def receive(self, timeout: float | None = None, seq: int | None = None) -> tuple[int, int, bytes]:
        """Next frame (``seq`` given: the next one with that seq); LinkError on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, item in enumerate(self._inbox):
                if seq is None or item[1] == seq:
                    return self._inbox.pop(i)
            self._pump(deadline)
            if not self._inbox and time.monotonic() >= deadline:
                tail = b" | ".join(self.text[-3:]).decode(errors="replace")
                raise LinkError(f"no answer from the helmet within {self.timeout if timeout is None else timeout:.1f} s"
                                + (f"; it printed: {tail}" if tail else ""))
            if seq is not None:  # drop unrelated frames (e.g. an unsolicited ready announcement)
                self._inbox = [it for it in self._inbox if it[1] == seq]

    def request(self, msg_type: int, payload: bytes = b"", timeout: float | None = None) -> tuple[int, bytes]:
        """Send one message, return ``(reply_type, payload)`` of the reply with the same seq."""
        self._seq = (self._seq % 0xFFFF) + 1
        self.serial.write(wire.encode_line(msg_type, self._seq, payload))
        reply_type, _, data = self.receive(timeout, seq=self._seq)
        if reply_type == wire.MSG_ERROR:
            code, text = wire.unpack_error(data)
            raise LinkError(f"helmet answered error {code}: {text}")
        return reply_type, data

    def ping(self, timeout: float | None = None) -> dict:
        """The helmet's description (firmware, protocol, memory, bundle state)."""
        reply_type, data = self.request(wire.MSG_PING, timeout=timeout)
        if reply_type != wire.MSG_PONG:
            raise LinkError(f"expected PONG, got message type {reply_type}")
        return json.loads(data)

    def wait_ready(self, timeout: float = 30.0) -> dict:
        """Ping until the firmware answers (it may still be booting); return its info."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                return self.ping(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except LinkError as e:
                last = e
        raise LinkError(f"the helmet firmware did not answer within {timeout:.0f} s ({last})")

    def infer(self, window: np.ndarray, sfreq: float, timeout: float | None = None) -> dict:
        """Send one window (n_ch, n_times) in µV; return the decoded pain report."""
        window = np.ascontiguousarray(window, dtype="<f4")
        n_ch, n_times = window.shape
        payload = wire.pack_window(window.ravel().tobytes(), n_ch, n_times, sfreq)
        reply_type, data = self.request(wire.MSG_INFER, payload, timeout)
        if reply_type != wire.MSG_REPORT:
            raise LinkError(f"expected REPORT, got message type {reply_type}")
        return wire.unpack_report(data)
