"""Host end of the wire protocol over a serial port (a board, the virtual helmet's pty) or BLE.

The framing is ``painhelm.firmware.wire`` — the helmet's own module — so the two ends
cannot drift. ``HelmetLink`` adds the I/O: sequence numbers, timeouts, waiting for the reply
that carries the request's sequence number, command retries, and the stream of unsolicited
frames (seq 0: reports, heartbeats, the ready announcement, error frames).

It works on any pyserial-like object (``read(size)`` honouring its ``timeout``, ``write``,
``in_waiting``): a ``serial.Serial``, ``SerialTransport.serial`` after a reset, ``loop://``,
or a BLE port from ``painhelm.host_tools.ble``.
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
from collections import deque

import numpy as np

from painhelm.firmware import wire

_SAMPLES_HEADER_SIZE = struct.calcsize(wire.SAMPLES_HEADER)


class LinkError(Exception):
    """The helmet did not answer as the protocol says (timeout, error frame, refused command)."""


class LinkTimeout(LinkError):
    """No answer within the timeout (a LinkError, so callers may catch either)."""


class HelmetLink:
    """Request/response and streaming over a pyserial-like object (``read``, ``write``, ``in_waiting``).

    Attributes: ``heartbeats`` (the last heartbeats, dicts from wire.unpack_heartbeat plus
    ``host_time``: time.monotonic() when this link read it, so a watchdog should ``poll``
    more often than the heartbeat period), ``device_errors`` (ERROR frames nobody was
    waiting for, the unsolicited seq-0 ones included, which also stay queued for
    ``receive(seq=0)``: ``(seq, code, text)``), ``text`` (recent console lines that were not frames),
    ``bad_frames`` (damaged lines received), ``lost_reports`` (gaps in the reports'
    ``report_seq``), ``dropped`` (unsolicited frames discarded because the queue was full).
    """

    def __init__(self, serial, timeout: float = 10.0, max_queue: int = 1024):
        self.serial = serial
        self.timeout = timeout
        # a random first seq: a helmet's CommandLog from an earlier session then cannot
        # mistake this session's first commands for retries
        self._seq = random.randrange(0xFFFF)
        self._n = 0  # arrival counter, orders the two queues
        self._replies: list[tuple[int, int, int, bytes]] = []  # (n, type, seq, payload), seq != 0
        self._unsolicited: deque[tuple[int, int, int, bytes]] = deque()  # seq 0, not heartbeats
        self.max_queue = max_queue
        self.dropped = 0
        self.heartbeats: deque[dict] = deque(maxlen=256)
        self.device_errors: deque[tuple[int, int, str]] = deque(maxlen=256)
        self.text: deque[bytes] = deque(maxlen=256)  # console lines that were not frames
        self.bad_frames = 0
        self.last_bad_frame: Exception | None = None
        self.lost_reports = 0
        self._last_report_seq: int | None = None
        self._parser = wire.LineParser(self._on_frame, self.text.append, self._on_error)

    # ------------------------------------------------------------------ receiving
    def _on_frame(self, msg_type: int, seq: int, payload) -> None:
        self._n += 1
        item = (self._n, msg_type, seq, bytes(payload))
        if seq != 0:
            self._replies.append(item)
            if len(self._replies) > self.max_queue:  # replies nobody waits for: keep the newest
                self._forget(self._replies.pop(0))
            return
        if msg_type == wire.MSG_HEARTBEAT:
            try:
                hb = wire.unpack_heartbeat(item[3])
            except ValueError:
                self.bad_frames += 1
                return
            hb["host_time"] = time.monotonic()
            self.heartbeats.append(hb)
            return
        if msg_type == wire.MSG_REPORT:
            self._count_report(item[3])
        elif msg_type == wire.MSG_ERROR:  # e.g. ERR_BUNDLE_REFUSED at boot: kept here as well
            self._forget(item)
        if len(self._unsolicited) >= self.max_queue:
            self._unsolicited.popleft()
            self.dropped += 1
        self._unsolicited.append(item)

    def _count_report(self, payload: bytes) -> None:
        if len(payload) < 4:
            return
        rs = struct.unpack_from("<I", payload, 0)[0]
        if self._last_report_seq is not None:
            gap = (rs - self._last_report_seq - 1) & 0xFFFFFFFF
            if gap < 0x80000000:  # a restart of the device's counter is not a loss
                self.lost_reports += gap
        self._last_report_seq = rs

    def _forget(self, item: tuple[int, int, int, bytes]) -> None:
        """A reply nobody waits for: keep it only if it is an error (device_errors)."""
        _, msg_type, seq, payload = item
        if msg_type == wire.MSG_ERROR:
            try:
                code, text = wire.unpack_error(payload)
            except ValueError:  # an empty payload: still an error frame
                code, text = -1, ""
            self.device_errors.append((seq, code, text))

    def _on_error(self, exc: Exception) -> None:
        self.bad_frames += 1
        self.last_bad_frame = exc  # why (e.g. another protocol version): connect.py reports it

    def _read(self, block: bool) -> bool:
        """Feed what the port has (``block``: wait up to its read timeout for a byte)."""
        n = self.serial.in_waiting
        if not n and not block:
            return False
        data = self.serial.read(max(1, n))
        if data:
            self._parser.feed(bytes(data))
        return bool(data)

    def poll(self) -> int:
        """Read whatever has arrived, without waiting; return how many frames it brought."""
        before = self._n
        while self._read(block=False):
            pass
        return self._n - before

    def _take(self, seq: int | None, want=None):
        """Pop the oldest queued frame matching ``seq`` (None: any) and ``want(type)``."""
        best = None
        if seq is None or seq != 0:
            for i, it in enumerate(self._replies):
                if (seq is None or it[2] == seq) and (want is None or want(it[1])):
                    best = ("r", i, it)
                    break
        if seq is None or seq == 0:
            for i, it in enumerate(self._unsolicited):
                if want is None or want(it[1]):
                    if best is None or it[0] < best[2][0]:
                        best = ("u", i, it)
                    break
        if best is None:
            return None
        where, i, it = best
        if where == "r":
            del self._replies[i]
        else:
            del self._unsolicited[i]
        return it[1], it[2], it[3]

    def _wait(self, timeout: float | None, seq: int | None, want=None, what: str = "an answer"):
        t = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + t
        while True:
            got = self._take(seq, want)
            if got is not None:
                return got
            if time.monotonic() >= deadline:
                tail = b" | ".join(list(self.text)[-3:]).decode(errors="replace")
                raise LinkTimeout(f"no {what} from the helmet within {t:.1f} s"
                                + (f"; it printed: {tail}" if tail else ""))
            self._read(block=True)

    def receive(self, timeout: float | None = None, seq: int | None = None) -> tuple[int, int, bytes]:
        """Next frame (``seq`` given: the next one with that seq; 0: unsolicited) as
        ``(msg_type, seq, payload)``; heartbeats go to ``heartbeats``, not here. LinkError on
        timeout."""
        return self._wait(timeout, seq, what="answer" if seq is None else f"frame with seq {seq}")

    def next_report(self, timeout: float | None = None) -> dict:
        """The next streamed (seq 0) report, decoded (wire.unpack_report); LinkError on timeout."""
        _, _, data = self._wait(timeout, 0, lambda t: t == wire.MSG_REPORT, "report")
        return wire.unpack_report(data)

    def last_heartbeat_age(self) -> float:
        """Seconds since the last heartbeat arrived (math.inf if none has); reads the port first."""
        self.poll()
        return time.monotonic() - self.heartbeats[-1]["host_time"] if self.heartbeats else math.inf

    # ------------------------------------------------------------------ sending
    def _next_seq(self) -> int:
        self._seq = (self._seq % 0xFFFF) + 1  # 1..65535; 0 is the device's unsolicited seq
        return self._seq

    def send(self, msg_type: int, payload: bytes = b"", seq: int | None = None) -> int:
        """Send one frame without waiting for anything; return its seq."""
        seq = self._next_seq() if seq is None else seq
        self.serial.write(wire.encode_line(msg_type, seq, payload))
        return seq

    def _drop_stale(self, seq: int) -> None:
        """Replies to earlier requests that nobody waits for any more (errors are kept aside)."""
        stale = [it for it in self._replies if it[2] != seq]
        if stale:
            self._replies = [it for it in self._replies if it[2] == seq]
            for it in stale:
                self._forget(it)

    def _await_reply(self, seq: int, timeout: float | None) -> tuple[int, bytes]:
        self._drop_stale(seq)
        try:
            reply_type, _, data = self._wait(timeout, seq, what="answer")
        finally:
            self._drop_stale(seq)
        if reply_type == wire.MSG_ERROR:
            code, text = wire.unpack_error(data)
            raise LinkError(f"helmet answered error {code}: {text}")
        return reply_type, data

    def request(self, msg_type: int, payload: bytes = b"", timeout: float | None = None) -> tuple[int, bytes]:
        """Send one message, return ``(reply_type, payload)`` of the reply with the same seq.

        Unsolicited frames that arrive meanwhile stay queued (next_report, receive(seq=0))."""
        seq = self.send(msg_type, payload)
        return self._await_reply(seq, timeout)

    def command(self, code: int, args=None, retries: int = 3, timeout: float = 2.0) -> str:
        """Run a MSG_COMMAND (wire.CMD_*) and return the ACK's text.

        Waits ``timeout`` seconds for the ACK; on silence resends the command with the SAME
        seq, up to ``retries`` more times (the helmet's CommandLog answers a repeated seq
        from its log, so the command runs once). Raises LinkError with the helmet's text
        when it answers ACK_FAILED or ACK_UNKNOWN, or an error frame.
        """
        payload = wire.pack_command(code, args)
        seq = self._next_seq()
        for _ in range(retries + 1):
            self.send(wire.MSG_COMMAND, payload, seq)
            try:
                reply_type, data = self._await_reply(seq, timeout)
                break
            except LinkTimeout:
                continue
        else:
            raise LinkTimeout(f"command {code}: no ACK from the helmet after {retries + 1} tries of {timeout:.1f} s")
        if reply_type != wire.MSG_ACK:
            raise LinkError(f"command {code}: expected ACK, got message type {reply_type}")
        status, text = wire.unpack_ack(data)
        if status == wire.ACK_OK:
            return text
        what = "unknown command" if status == wire.ACK_UNKNOWN else "command failed"
        raise LinkError(f"helmet refused command {code} ({what}): {text}")

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

    def send_samples(self, data: np.ndarray, first_index: int, max_samples: int | None = None) -> int:
        """Stream samples (n_ch, n_samples) in µV as MSG_SAMPLES chunks; return the index
        after the last sample sent (the next call's ``first_index``).

        Each chunk holds ``wire.SAMPLES_PER_FRAME`` samples (what the helmet's link FIFO
        keeps; ``max_samples`` can lower it) or fewer when MAX_PAYLOAD is the limit; the
        helmet answers nothing, and its reports arrive as unsolicited frames (next_report).
        What has arrived is read between chunks, so the port's buffer never fills."""
        x = np.asarray(data, dtype="<f4")
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"data must have shape (n_ch, n_samples) with n_ch >= 1, got {x.shape}")
        n_ch, n = x.shape
        fit = (wire.MAX_PAYLOAD - _SAMPLES_HEADER_SIZE) // (4 * n_ch)
        if fit < 1:
            raise ValueError(f"{n_ch} channels do not fit one sample in MAX_PAYLOAD ({wire.MAX_PAYLOAD} bytes)")
        want = wire.SAMPLES_PER_FRAME if max_samples is None else max(1, int(max_samples))
        step = min(fit, want)
        xt = np.ascontiguousarray(x.T)  # sample-major, as MSG_SAMPLES carries it
        for i in range(0, n, step):
            k = min(step, n - i)
            self.send(wire.MSG_SAMPLES, wire.pack_samples(xt[i:i + k].tobytes(), n_ch, k, first_index + i))
            self.poll()
        return (first_index + n) & 0xFFFFFFFF
