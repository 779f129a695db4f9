"""Wire protocol v0: the same module on host (CPython) and helmet (MicroPython)."""

import json
import struct

import pytest

from painhelm.firmware import wire

from .mpy import run_micropython


def _collect():
    frames, text, errors = [], [], []
    p = wire.LineParser(lambda t, s, pl: frames.append((t, s, bytes(pl))), text.append, errors.append)
    return p, frames, text, errors


def test_roundtrip_frame():
    """A frame decodes to the type, seq and payload it was made from."""
    f = wire.encode_frame(wire.MSG_INFER, 513, b"abc")
    assert wire.decode_frame(f)[0:2] == (wire.MSG_INFER, 513)
    assert bytes(wire.decode_frame(f)[2]) == b"abc"


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "crc"),
    (lambda f: bytes([9]) + f[1:], "version"),
    (lambda f: f[:5], "shorter"),
    (lambda f: f[:4] + struct.pack("<H", 99) + f[6:], "length"),
])
def test_bad_frames_rejected(mutate, match):
    """Corrupted, truncated or foreign frames raise FrameError naming the problem."""
    with pytest.raises(wire.FrameError, match=match):
        wire.decode_frame(mutate(wire.encode_frame(wire.MSG_PING, 1, b"xyz")))


def test_payload_bound():
    """Payloads over MAX_PAYLOAD are refused at encode time."""
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        wire.encode_frame(wire.MSG_INFER, 1, bytes(wire.MAX_PAYLOAD + 1))


def test_parser_splits_frames_and_text_across_chunks():
    """Frames split over arbitrary chunks are reassembled; console text goes to its own hook."""
    p, frames, text, errors = _collect()
    stream = (b"MicroPython v1.29\r\n>>> " + wire.encode_line(wire.MSG_PONG, 7, b'{"a": 1}')
              + b"hello\r\n" + wire.encode_line(wire.MSG_REPORT, 8, bytes(range(200))))
    for i in range(0, len(stream), 5):
        p.feed(stream[i:i + 5])
    assert [(t, s) for t, s, _ in frames] == [(wire.MSG_PONG, 7), (wire.MSG_REPORT, 8)]
    assert frames[1][2] == bytes(range(200))
    assert text == [b"MicroPython v1.29", b">>> ", b"hello"] and errors == []


def test_parser_reports_corruption_and_recovers():
    """A corrupted line is reported, never delivered, and the next frame still gets through."""
    p, frames, text, errors = _collect()
    good = wire.encode_line(wire.MSG_PING, 1)
    bad = good[:10] + (b"A" if good[10:11] != b"A" else b"B") + good[11:]
    p.feed(bad + b"$!!!notbase64\n" + good)
    assert len(errors) == 2 and [f[1] for f in frames] == [1]


def test_parser_drops_overlong_line():
    """A line longer than the buffer is dropped whole without growing memory."""
    frames, errors = [], []
    p = wire.LineParser(lambda *a: frames.append(a), None, errors.append, max_line=64)
    p.feed(b"$" + b"A" * 200 + b"\n" + wire.encode_line(wire.MSG_PING, 3))
    assert len(errors) == 1 and frames[0][1] == 3


def test_report_and_window_payloads():
    """Report and window payloads round-trip; a window of the wrong size is refused."""
    r = wire.unpack_report(wire.pack_report(2, 1, 200, 90, 0, 1234, 5678, [-3, 4, 127, -128], [5, -5]))
    assert (r["level"], r["location"], r["level_q"], r["location_q"]) == (2, 1, [-3, 4, 127, -128], [5, -5])
    samples = struct.pack("<6f", *range(6))
    n_ch, n_times, sfreq, off = wire.unpack_window_header(wire.pack_window(samples, 2, 3, 128.0))
    assert (n_ch, n_times, sfreq, off) == (2, 3, 128.0, 8)
    with pytest.raises(ValueError, match="expected"):
        wire.pack_window(samples, 2, 4, 128.0)


def test_micropython_and_cpython_make_identical_lines():
    """MicroPython encodes byte-identical lines and decodes the host's frames."""
    host_line = wire.encode_line(wire.MSG_REPORT, 300, bytes(range(256)))
    code = (
        "import wire\n"
        "out = []\n"
        "p = wire.LineParser(lambda t, s, pl: out.append((t, s, bytes(pl))), None, None)\n"
        "p.feed(%r)\n"
        "assert out == [(wire.MSG_REPORT, 300, bytes(range(256)))], out\n"
        "print(wire.encode_line(wire.MSG_REPORT, 300, bytes(range(256))).decode())\n" % host_line
    )
    out = run_micropython(code)
    assert out.strip().encode() == host_line.strip()
