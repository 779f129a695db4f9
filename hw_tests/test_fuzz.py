"""Protocol fuzzing: a seeded stream of random, truncated, bit-flipped, bad-CRC, oversized,
unknown-type and replayed frames, between valid PINGs and commands.

Every item ends with a newline (a line is the protocol's unit of recovery). Items go in
batches of about 1 KB, each closed by a sync PING whose PONG proves the helmet processed the
batch (and keeps a board's receive buffer from overflowing). Per batch the helmet must answer:

* exactly the valid frames, by their seq: a reply with any other seq would be a damaged
  frame the helmet accepted;
* one ERR_BAD_FRAME per damaged line, as many as ``wire.LineParser`` (the firmware's own
  parser, run on the host over the same bytes) counts;
* a replayed COMMAND with its first ACK, byte for byte, without running it again.

Afterwards the helmet still answers, its bundle and state are unchanged, no report was made
(no valid SAMPLES or INFER was ever sent) and its settings are those of the last new command.
"""

from __future__ import annotations

import binascii
import json
import random
import time

import pytest

from hw_tests.conftest import tier_value
from hw_tests.helmets import Rig, flashed_rig
from painhelm.firmware import wire

BATCH_BYTES = 1024
HEARTBEATS = (250, 300, 400, 500)  # CMD_CONFIG values the fuzzer sets (observable, harmless)


@pytest.fixture(scope="module")
def fuzz_rig(board_port, bundle_a, tmp_path_factory, request):
    yield from flashed_rig(board_port, bundle_a, tmp_path_factory.mktemp("fuzz") / "fs", request)


class Fuzzer:
    """Makes the items and keeps what the helmet must answer."""

    def __init__(self, rng: random.Random, max_line: int) -> None:
        self.rng, self.max_line = rng, max_line
        self.seq = rng.randrange(1, 0xFFFF)
        self.commands: list[tuple[int, bytes]] = []  # (seq, line) of new commands, newest last
        self.heartbeat_ms = wire.HEARTBEAT_MS
        self.counts: dict[str, int] = {}

    def next_seq(self) -> int:
        self.seq = self.seq % 0xFFFF + 1
        return self.seq

    def _valid(self) -> bytes:
        """A valid line to damage: PING, COMMAND, SAMPLES or INFER with random contents."""
        r = self.rng
        kind = r.choice((wire.MSG_PING, wire.MSG_COMMAND, wire.MSG_SAMPLES, wire.MSG_INFER))
        payload = b"" if kind == wire.MSG_PING else r.randbytes(r.randrange(0, 600))
        if kind == wire.MSG_COMMAND:
            payload = wire.pack_command(wire.CMD_CONFIG, {"heartbeat_ms": r.choice(HEARTBEATS)})
        return wire.encode_line(kind, self.next_seq(), payload)

    def item(self) -> tuple[str, bytes, int | None]:
        """``(kind, bytes, seq that must be answered or None)``."""
        r = self.rng
        kind = r.choices(("random", "truncated", "bitflip", "crc", "oversized", "unknown", "command",
                          "replay", "ping"), (20, 20, 20, 15, 2, 5, 8, 5, 5))[0]
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "random":  # anything but Ctrl-C, which interrupts the firmware by design
            return kind, bytes(b if b != 3 else 4 for b in r.randbytes(r.randrange(1, 200))) + b"\n", None
        if kind == "truncated":
            line = self._valid()
            return kind, line[:r.randrange(1, len(line) - 1)] + b"\n", None
        if kind == "bitflip":
            good = self._valid()
            while True:
                line = bytearray(good)
                i = r.randrange(1, len(line) - 1)
                line[i] ^= 1 << r.randrange(8)
                if line[i] == 3:
                    line[i] ^= 0x80
                # base64 has slack (unused low bits of a final "xx==" group): a flip there
                # still decodes to the very same frame, which is not damage; flip again
                if _decoded(bytes(line)) != _decoded(good):
                    return kind, bytes(line), None
        if kind == "crc":
            frame = bytearray(wire.encode_frame(wire.MSG_PING, self.next_seq(), r.randbytes(r.randrange(0, 64))))
            frame[-1 - r.randrange(wire.CRC_SIZE)] ^= 1 << r.randrange(8)
            return kind, b"$" + binascii.b2a_base64(bytes(frame), newline=False) + b"\n", None
        if kind == "oversized":  # a well-formed frame too long for the helmet's frame buffer
            n = (self.max_line * 3) // 4 + r.randrange(1, 3000)
            return kind, wire.encode_line(wire.MSG_INFER, self.next_seq(), r.randbytes(n)), None
        if kind == "unknown":
            seq = self.next_seq()
            return kind, wire.encode_line(r.choice((0x00, 0x05, 0x13, 0x42, 0x7E)), seq, r.randbytes(8)), seq
        if kind == "command":
            seq = self.next_seq()
            self.heartbeat_ms = r.choice(HEARTBEATS)
            line = wire.encode_line(wire.MSG_COMMAND, seq, wire.pack_command(wire.CMD_CONFIG,
                                                                             {"heartbeat_ms": self.heartbeat_ms}))
            self.commands = (self.commands + [(seq, line)])[-4:]  # well inside the helmet's log of 8
            return kind, line, seq
        if kind == "replay" and self.commands:
            seq, line = r.choice(self.commands)
            return kind, line, seq
        seq = self.next_seq()
        return "ping", wire.encode_line(wire.MSG_PING, seq), seq


def _decoded(line: bytes) -> bytes | None:
    """The frame bytes a line's base64 decodes to (None: not base64)."""
    try:
        return binascii.a2b_base64(line[1:-1])
    except (binascii.Error, ValueError):
        return None


def _oom(msg_type: int, payload: bytes) -> bool:
    return msg_type == wire.MSG_ERROR and wire.unpack_error(payload)[0] == wire.ERR_INTERNAL


def _read_until_pong(ser, parser, got: list, seq: int, text: list, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(s == seq for _, s, _ in got):  # PONG, or an error frame: an answer either way
        assert time.monotonic() < deadline, \
            f"no PONG for sync ping {seq}: the helmet stopped answering; it printed {text[-12:]}"
        data = ser.read(max(1, ser.in_waiting))
        if data:
            parser.feed(data)


def _fuzz(rig: Rig, n_frames: int, seed: int, record_figure) -> None:
    link = rig.link()
    info0 = link.ping()
    assert info0.get("bundle_error") is None, info0
    max_line = ((wire.HEADER_SIZE + info0.get("max_payload", 1024) + wire.CRC_SIZE + 2) // 3) * 4 + 2
    fz = Fuzzer(random.Random(seed), max_line)
    ser = link.serial
    got: list[tuple[int, int, bytes]] = []
    text: list[bytes] = []  # console lines that are not frames (a traceback, if the firmware died)
    dev = wire.LineParser(lambda t, s, p: got.append((t, s, bytes(p))), text.append)  # what the helmet sends
    oracle_errors = [0]
    oracle = wire.LineParser(lambda t, s, p: None, None, lambda e: oracle_errors.__setitem__(0, oracle_errors[0] + 1),
                             max_line=max_line)
    first_ack: dict[int, bytes] = {}
    oom: dict[str, int] = {}  # valid frames answered ERR_INTERNAL "out of memory", by kind
    sent = bad_frame_errors = accepted_damaged = replays = 0
    reports0 = None
    t0 = time.monotonic()
    while sent < n_frames:
        batch, expect, size = [], {}, 0
        while size < BATCH_BYTES and sent < n_frames:
            kind, data, seq = fz.item()
            batch.append(data)
            size += len(data)
            sent += 1
            if seq is not None:  # answers come in order; a replay may follow its original
                expect.setdefault(seq, []).append(kind)
        sync = fz.next_seq()
        blob = b"".join(batch)
        oracle_errors[0] = 0
        oracle.feed(blob)
        got.clear()
        ser.write(blob + wire.encode_line(wire.MSG_PING, sync))
        _read_until_pong(ser, dev, got, sync, text)
        errors = 0
        for t, s, p in got:
            if s == 0:
                if t == wire.MSG_ERROR and wire.unpack_error(p)[0] == wire.ERR_BAD_FRAME:
                    errors += 1
                elif t == wire.MSG_HEARTBEAT:
                    hb = wire.unpack_heartbeat(p)
                    reports0 = hb["reports"] if reports0 is None else reports0
                    assert hb["reports"] == reports0, "a report was made: a damaged frame was taken as data"
                continue
            if s == sync or s in expect and expect[s] and _oom(t, p):
                if _oom(t, p):  # answered, but without the info: see docs/reliability.md
                    oom[expect[s][0] if s != sync else "ping"] = oom.get(expect[s][0] if s != sync else "ping", 0) + 1
                    if s != sync:
                        expect[s].pop(0)
                continue
            kind = expect[s].pop(0) if expect.get(s) else None
            if kind is None:
                accepted_damaged += 1
                continue
            if kind in ("command", "replay"):
                assert t == wire.MSG_ACK, (kind, t, p)
                if kind == "command":
                    first_ack[s] = p
                else:
                    replays += 1
                    assert p == first_ack[s], "a replayed command was not answered with its first ACK"
            elif kind == "unknown":
                assert t == wire.MSG_ERROR and wire.unpack_error(p)[0] == wire.ERR_UNKNOWN_TYPE
            else:
                assert t == wire.MSG_PONG, (kind, t, wire.unpack_error(p) if t == wire.MSG_ERROR else p[:80])
        unanswered = {s: k for s, k in expect.items() if k}
        assert not unanswered, f"valid frames without an answer: {unanswered}"
        assert accepted_damaged == 0, "the helmet answered a frame that was sent damaged"
        assert errors == oracle_errors[0], f"{errors} ERR_BAD_FRAME for {oracle_errors[0]} damaged lines"
        bad_frame_errors += errors
    seconds = time.monotonic() - t0
    link = rig.link()  # a fresh link: the helmet still answers
    info1 = link.ping()
    for k in ("state", "bundle", "model_sha256", "firmware"):
        assert info1.get(k) == info0.get(k), k
    cfg = json.loads(link.command(wire.CMD_CONFIG, {}))
    if not oom.get("command") and not oom.get("replay"):  # an OOM'd command may or may not have run
        assert cfg["heartbeat_ms"] == fz.heartbeat_ms  # the last NEW command, not a replayed older one
    link.command(wire.CMD_CONFIG, {"heartbeat_ms": wire.HEARTBEAT_MS})
    record_figure("frames_fuzzed", sent)
    record_figure("seed", seed)
    record_figure("kinds", json.dumps(fz.counts, sort_keys=True))
    record_figure("bad_frame_errors", bad_frame_errors)
    record_figure("replays_answered_from_log", replays)
    record_figure("damaged_frames_accepted", accepted_damaged)
    record_figure("frames_per_s", round(sent / seconds))
    record_figure("out_of_memory_answers", json.dumps(oom, sort_keys=True))
    if "mem_free" in info0:
        record_figure("mem_free_before_after", f"{info0['mem_free']} / {info1['mem_free']}")
    assert not oom, f"valid frames answered 'out of memory': {oom}"


def test_fuzzed_frames_are_refused_and_the_helmet_keeps_answering(fuzz_rig, hw_seed, request, record_figure):
    """10 k fuzzed frames (default tier): no crash, no damaged frame accepted, replays run once."""
    _fuzz(fuzz_rig, tier_value(request, "fuzz_frames"), hw_seed, record_figure)


@pytest.mark.slow
def test_fuzzed_frames_long(fuzz_rig, hw_seed, request, record_figure):
    """The slow tier: 1 M fuzzed frames."""
    _fuzz(fuzz_rig, tier_value(request, "fuzz_frames"), hw_seed + 1, record_figure)

