"""Wire protocol v1: the same module on host (CPython) and helmet (MicroPython)."""

import json
import struct

import pytest

from painhelm.firmware import wire

from .mpy import run_micropython


def _collect(**kw):
    frames, text, errors = [], [], []
    p = wire.LineParser(lambda t, s, pl: frames.append((t, s, bytes(pl))), text.append, errors.append, **kw)
    return p, frames, text, errors


def _report(**over):
    args = dict(report_seq=70000, t_ms=0xFFFFFFFF + 5, sample_index=123456, level=wire.UNCERTAIN,
                location=wire.NO_HEAD, level_conf=255, location_conf=0, reasons=0x05, quality=0x81,
                ood=2.345, bad=(1 << 63) | 3, dsp_us=1500, infer_us=25000,
                level_q=[-128, 0, 127, -1], location_q=[5, -5])
    args.update(over)
    return args


def test_roundtrip_frame():
    """A frame decodes to the type, seq and payload it was made from."""
    f = wire.encode_frame(wire.MSG_INFER, 513, b"abc")
    assert wire.decode_frame(f)[0:2] == (wire.MSG_INFER, 513)
    assert bytes(wire.decode_frame(f)[2]) == b"abc"


@pytest.mark.parametrize("mutate,match", [
    (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "crc"),
    (lambda f: f[:7] + bytes([f[7] ^ 0x10]) + f[8:], "crc"),
    (lambda f: bytes([0]) + f[1:], "version 0"),
    (lambda f: bytes([9]) + f[1:], "version"),
    (lambda f: f[:5], "shorter"),
    (lambda f: f[:-2], "length"),
    (lambda f: f[:4] + struct.pack("<H", 99) + f[6:], "length"),
    (lambda f: f[:4] + struct.pack("<H", 0xFFFF) + f[6:], "length"),
])
def test_bad_frames_rejected(mutate, match):
    """Corrupted, truncated, oversized or foreign (v0) frames raise FrameError naming the problem."""
    with pytest.raises(wire.FrameError, match=match):
        wire.decode_frame(mutate(wire.encode_frame(wire.MSG_PING, 1, b"xyz")))


def test_frame_size_is_bounded():
    """MAX_PAYLOAD is the largest payload; its frame and line sizes are MAX_FRAME and MAX_LINE."""
    with pytest.raises(ValueError, match="MAX_PAYLOAD"):
        wire.encode_frame(wire.MSG_INFER, 1, bytes(wire.MAX_PAYLOAD + 1))
    frame = wire.encode_frame(wire.MSG_INFER, 1, bytes(wire.MAX_PAYLOAD))
    line = wire.encode_line(wire.MSG_INFER, 1, bytes(wire.MAX_PAYLOAD))
    assert len(frame) == wire.MAX_FRAME and len(line) <= wire.MAX_LINE
    p, frames, _, errors = _collect()
    p.feed(line)
    assert len(frames) == 1 and len(frames[0][2]) == wire.MAX_PAYLOAD and not errors


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


def test_parser_feed_uses_only_the_first_n_bytes():
    """feed(buf, n) reads n bytes of a reused receive buffer, never the stale rest."""
    p, frames, _, errors = _collect()
    line = wire.encode_line(wire.MSG_PING, 4)
    buf = bytearray(256)
    buf[:] = b"\n" * 256  # stale bytes that would end lines if read
    half = len(line) // 2
    buf[:half] = line[:half]
    p.feed(buf, half)
    buf[: len(line) - half] = line[half:]
    p.feed(buf, len(line) - half)
    assert [f[1] for f in frames] == [4] and not errors


def test_parser_reports_corruption_and_recovers():
    """Corrupted, truncated and non-base64 lines are reported, never delivered; the next frame gets through."""
    p, frames, text, errors = _collect()
    good = wire.encode_line(wire.MSG_PING, 1)
    bad = good[:10] + (b"A" if good[10:11] != b"A" else b"B") + good[11:]
    truncated = good[:-9] + b"\n"
    p.feed(bad + b"$!!!notbase64\n" + truncated + good)
    assert len(errors) == 3 and [f[1] for f in frames] == [1]
    assert all(isinstance(e, wire.FrameError) for e in errors)


def test_parser_drops_overlong_line():
    """A line longer than the buffer is dropped whole without growing memory."""
    frames, errors = [], []
    p = wire.LineParser(lambda *a: frames.append(a), None, errors.append, max_line=64)
    p.feed(b"$" + b"A" * 200 + b"\n" + wire.encode_line(wire.MSG_PING, 3))
    assert len(errors) == 1 and frames[0][1] == 3 and "longer than 64" in str(errors[0])


def test_report_roundtrip_all_fields():
    """Every report field survives pack/unpack, incl. u32 wrap, 64-bit bad mask and int8 logits."""
    a = _report()
    r = wire.unpack_report(wire.pack_report(**a))
    assert set(r) == set(wire.REPORT_KEYS) | {"level_q", "location_q"}
    expect = dict(a, t_ms=a["t_ms"] & 0xFFFFFFFF, ood=2.35)
    for k in wire.REPORT_KEYS + ("level_q", "location_q"):
        assert r[k] == pytest.approx(expect[k]), k


@pytest.mark.parametrize("ood,carried", [(0.0, 0.0), (-3.0, 0.0), (0.004, 0.0), (0.005, 0.01), (1e9, 655.35)])
def test_report_ood_is_rounded_and_saturated(ood, carried):
    """ood travels as round(ood * 100) in a u16: negatives are 0, huge scores saturate."""
    assert wire.unpack_report(wire.pack_report(**_report(ood=ood)))["ood"] == pytest.approx(carried)


def test_report_of_wrong_size_refused():
    """A report payload whose logit counts disagree with its length is refused."""
    p = wire.pack_report(**_report())
    with pytest.raises(ValueError, match="expected"):
        wire.unpack_report(p[:-1])
    with pytest.raises(ValueError, match="header needs"):
        wire.unpack_report(p[:10])


def test_window_samples_heartbeat_payloads():
    """Window, samples and heartbeat payloads round-trip; wrong sizes are refused."""
    samples = struct.pack("<6f", *range(6))
    assert wire.unpack_window_header(wire.pack_window(samples, 2, 3, 128.0)) == (2, 3, 128.0, 8)
    with pytest.raises(ValueError, match="expected"):
        wire.pack_window(samples, 2, 4, 128.0)
    p = wire.pack_samples(samples, 3, 2, 2**32 + 7)
    assert wire.unpack_samples_header(p) == (3, 2, 7, 8) and p[8:] == samples
    with pytest.raises(ValueError, match="expected"):
        wire.unpack_samples_header(p[:-4])
    with pytest.raises(ValueError, match="4\\*n_ch\\*n_samples"):
        wire.pack_samples(samples, 4, 2, 0)
    hb = wire.unpack_heartbeat(wire.pack_heartbeat(2**32 + 1, 9, 3, wire.STATE_STREAMING, 70000))
    assert hb == {"t_ms": 1, "reports": 9, "dropped": 3, "state": wire.STATE_STREAMING, "mem_free_kb": 0xFFFF}
    with pytest.raises(ValueError, match="heartbeat payload"):
        wire.unpack_heartbeat(bytes(5))


def test_command_and_ack_payloads():
    """Commands carry a code and optional json args; ACK/ERROR texts are clipped on a character boundary."""
    assert wire.unpack_command(wire.pack_command(wire.CMD_START)) == (wire.CMD_START, None)
    args = {"heartbeat_ms": 100, "source": "ads1299"}
    assert wire.unpack_command(wire.pack_command(wire.CMD_CONFIG, args)) == (wire.CMD_CONFIG, args)
    for bad in (b"", bytes([3]) + b"{not json", bytes([3, 0xFF, 0xFE])):
        with pytest.raises(ValueError):
            wire.unpack_command(bad)
    assert wire.unpack_ack(wire.pack_ack(wire.ACK_FAILED, "no source")) == (wire.ACK_FAILED, "no source")
    long = "é" * 150  # 300 bytes of 2-byte characters, cut at MAX_TEXT without splitting one
    status, text = wire.unpack_ack(wire.pack_ack(wire.ACK_OK, "x" + long))
    assert len(("x" + long).encode()[:wire.MAX_TEXT]) == wire.MAX_TEXT and text == "x" + "é" * 99
    assert wire.unpack_error(wire.pack_error(wire.ERR_BAD_FRAME, long))[1] == "é" * 100
    assert wire.unpack_error(bytes([5, 0xC3]))[1] == "?"  # a foreign device's broken text


def _execute_counting(calls):
    def execute(code, args):
        calls.append((code, args))
        if code == wire.CMD_RESET:
            raise RuntimeError("ring buffer busy")
        if code == 99:
            return wire.ACK_UNKNOWN, "unknown command 99"
        return None
    return execute


def test_command_log_answers_a_retry_without_running_it_again():
    """A repeated seq gets the stored ACK and is not executed twice."""
    log, calls = wire.CommandLog(), []
    cmd = wire.pack_command(wire.CMD_START)
    first = log.answer(5, cmd, _execute_counting(calls))
    again = log.answer(5, cmd, _execute_counting(calls))
    assert first == again == (wire.MSG_ACK, wire.pack_ack(wire.ACK_OK, ""))
    assert calls == [(wire.CMD_START, None)] and (log.executed, log.replays) == (1, 1)
    assert log.lookup(5) == first[1] and log.lookup(5, cmd) == first[1]
    # the same seq with another command (a new host session) is not a retry
    t, ack = log.answer(5, wire.pack_command(wire.CMD_STOP), _execute_counting(calls))
    assert len(calls) == 2 and wire.unpack_ack(ack)[0] == wire.ACK_OK


def test_command_log_failures_and_bounds():
    """Exceptions become ACK_FAILED, unknown codes ACK_UNKNOWN, bad payloads ERR_BAD_COMMAND; the log holds `size`."""
    log, calls = wire.CommandLog(size=2), []
    ex = _execute_counting(calls)
    t, ack = log.answer(1, wire.pack_command(wire.CMD_RESET), ex)
    assert t == wire.MSG_ACK and wire.unpack_ack(ack) == (wire.ACK_FAILED, "RuntimeError: ring buffer busy")
    assert wire.unpack_ack(log.answer(2, wire.pack_command(99), ex)[1])[0] == wire.ACK_UNKNOWN
    t, err = log.answer(3, b"", ex)
    assert t == wire.MSG_ERROR and wire.unpack_error(err)[0] == wire.ERR_BAD_COMMAND
    log.answer(4, wire.pack_command(wire.CMD_STOP), ex)
    assert log.lookup(1) is None and log.lookup(2) is not None and log.lookup(4) is not None
    log.clear()
    assert log.lookup(4) is None
    with pytest.raises(ValueError, match="size"):
        wire.CommandLog(size=0)


_MPY_LINES = """
import wire
def show(t, s, p):
    print(wire.encode_line(t, s, p).decode().strip())
show(wire.MSG_REPORT, 0, wire.pack_report(70000, 0xFFFFFFFF + 5, 123456, -1, -2, 255, 0, 5, 0x81,
                                          2.345, (1 << 63) | 3, 1500, 25000, [-128, 0, 127, -1], [5, -5]))
show(wire.MSG_HEARTBEAT, 0, wire.pack_heartbeat(123, 9, 3, wire.STATE_STREAMING, 70000))
show(wire.MSG_SAMPLES, 9, wire.pack_samples(bytes(range(24)), 3, 2, 2**32 + 7))
show(wire.MSG_COMMAND, 65535, wire.pack_command(wire.CMD_CONFIG, {"heartbeat_ms": 100}))
show(wire.MSG_ACK, 65535, wire.pack_ack(wire.ACK_OK, "x" + "\\u00e9" * 150))
show(wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_BAD_FRAME, "crc mismatch"))
show(wire.MSG_REPORT, 300, bytes(range(256)))
"""


def _host_lines():
    return [wire.encode_line(t, s, p).strip() for t, s, p in [
        (wire.MSG_REPORT, 0, wire.pack_report(**_report())),
        (wire.MSG_HEARTBEAT, 0, wire.pack_heartbeat(123, 9, 3, wire.STATE_STREAMING, 70000)),
        (wire.MSG_SAMPLES, 9, wire.pack_samples(bytes(range(24)), 3, 2, 2**32 + 7)),
        (wire.MSG_COMMAND, 65535, wire.pack_command(wire.CMD_CONFIG, {"heartbeat_ms": 100})),
        (wire.MSG_ACK, 65535, wire.pack_ack(wire.ACK_OK, "x" + "é" * 150)),
        (wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_BAD_FRAME, "crc mismatch")),
        (wire.MSG_REPORT, 300, bytes(range(256))),
    ]]


def test_micropython_and_cpython_make_identical_lines():
    """MicroPython encodes every v1 message byte-identically to CPython."""
    out = run_micropython(_MPY_LINES)
    assert [ln.encode() for ln in out.split()] == _host_lines()


def test_micropython_decodes_host_frames_and_runs_command_log():
    """MicroPython parses the host's lines (reports, samples, commands) and CommandLog works there."""
    lines = b"".join(ln + b"\n" for ln in _host_lines())
    bad = bytearray(_host_lines()[0] + b"\n")
    bad[20] ^= 1
    code = (
        "import wire, json\n"
        "out = []\n"
        "errs = []\n"
        "p = wire.LineParser(lambda t, s, pl: out.append((t, s, bytes(pl))), None, errs.append)\n"
        "buf = bytearray(64)\n"
        "data = %r + %r\n"
        "for i in range(0, len(data), 64):\n"
        "    k = min(64, len(data) - i)\n"
        "    buf[:k] = data[i:i + k]\n"
        "    p.feed(buf, k)\n"
        "r = wire.unpack_report(out[0][2])\n"
        "assert r['report_seq'] == 70000 and r['bad'] == (1 << 63) | 3 and r['level_q'] == [-128, 0, 127, -1]\n"
        "assert abs(r['ood'] - 2.35) < 1e-6, r\n"
        "assert wire.unpack_samples_header(out[2][2]) == (3, 2, 7, 8)\n"
        "assert wire.unpack_command(out[3][2]) == (wire.CMD_CONFIG, {'heartbeat_ms': 100})\n"
        "assert wire.unpack_ack(out[4][2]) == (0, 'x' + '\\u00e9' * 99)\n"
        "assert len(out) == 7 and len(errs) == 1, (len(out), errs)\n"
        "log = wire.CommandLog(4)\n"
        "n = [0]\n"
        "def ex(code, args):\n"
        "    n[0] += 1\n"
        "a = log.answer(7, out[3][2], ex)\n"
        "b = log.answer(7, out[3][2], ex)\n"
        "assert a == b and n[0] == 1 and log.replays == 1\n"
        "print('ok')\n" % (bytes(bad), lines)
    )
    assert run_micropython(code).strip() == "ok"


def test_protocol_version_is_shared():
    """wire and version agree on the protocol number (the helmet reports it in PONG)."""
    from painhelm.firmware import version

    assert wire.PROTOCOL_VERSION == version.PROTOCOL_VERSION == 1
    assert json.loads(json.dumps({"protocol": wire.PROTOCOL_VERSION}))["protocol"] == 1
