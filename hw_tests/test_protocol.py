"""Protocol v1 conformance of a flashed helmet (virtual by default, a board with --port).

The helmet runs the real firmware (app.py's serve loop over link_serial) without a bundle,
so every answer below comes from the protocol layer: PONG, error frames, heartbeats,
commands with their ACKs and the retry log.
"""

import binascii
import json
import time

import pytest

from painhelm.firmware import wire
from painhelm.host_tools.link import HelmetLink, LinkError


@pytest.fixture(scope="module")
def link(helmet):
    link = HelmetLink(helmet.serial, timeout=10.0)
    link.wait_ready(timeout=30.0)
    return link


def _damaged(msg_type, seq, payload=b""):
    line = bytearray(wire.encode_line(msg_type, seq, payload))
    line[5] = ord("A") if line[5] != ord("A") else ord("B")
    return bytes(line)


def _bad_frame_error(link):
    kind, seq, payload = link.receive(timeout=10.0, seq=0)
    while kind != wire.MSG_ERROR:  # a seq-0 frame that is not the error (e.g. the ready PONG)
        kind, seq, payload = link.receive(timeout=10.0, seq=0)
    return wire.unpack_error(payload)


def test_ping_reports_firmware_and_protocol(link):
    """PING is answered with the firmware version and protocol 1."""
    from painhelm.firmware.version import VERSION

    info = link.ping()
    assert info["firmware"] == VERSION and info["protocol"] == wire.PROTOCOL_VERSION == 1


def test_infer_without_bundle_is_refused_clearly(link):
    """With no bundle flashed, INFER is answered by an error frame, not silence or a crash."""
    with pytest.raises(LinkError, match="error %d" % wire.ERR_NO_MODEL):
        link.request(wire.MSG_INFER, wire.pack_window(bytes(8), 1, 2, 128.0))


def test_unknown_type_and_corrupt_frames_keep_device_alive(link):
    """Unknown types get ERR_UNKNOWN_TYPE, damaged frames ERR_BAD_FRAME; the device keeps answering."""
    with pytest.raises(LinkError, match="error %d" % wire.ERR_UNKNOWN_TYPE):
        link.request(0x42)
    link.serial.write(_damaged(wire.MSG_PING, 9))
    assert _bad_frame_error(link)[0] == wire.ERR_BAD_FRAME
    assert link.ping()["protocol"] == wire.PROTOCOL_VERSION


@pytest.mark.parametrize("line", [
    wire.encode_line(wire.MSG_PING, 11)[:-9] + b"\n",  # truncated
    b"$" + binascii.b2a_base64(bytes([0]) + wire.encode_frame(wire.MSG_PING, 12)[1:]).strip() + b"\n",  # v0
    b"$" + b"QUFB" * 4000 + b"\n",  # longer than the device's line buffer
    b"$!!not base64!!\n",
], ids=["truncated", "version-0", "overlong", "not-base64"])
def test_bad_lines_are_reported_and_the_parser_recovers(link, line):
    """Truncated, foreign-version, over-long and garbled lines each give one ERR_BAD_FRAME; the next frame works."""
    link.serial.write(line)
    assert _bad_frame_error(link)[0] == wire.ERR_BAD_FRAME
    assert link.ping()["protocol"] == wire.PROTOCOL_VERSION


def test_heartbeats_follow_the_configured_period(link):
    """HEARTBEAT (seq 0) arrives every heartbeat_ms and carries the device state."""
    link.command(wire.CMD_CONFIG, {"heartbeat_ms": 100})
    try:
        link.poll()
        link.heartbeats.clear()
        time.sleep(1.0)
        assert link.last_heartbeat_age() < 0.5
        beats = list(link.heartbeats)
        assert 5 <= len(beats) <= 15, len(beats)
        gaps = [(b["t_ms"] - a["t_ms"]) & 0xFFFFFFFF for a, b in zip(beats, beats[1:])]
        assert all(90 <= g <= 400 for g in gaps), gaps  # device clock; never faster than the period
        assert beats[-1]["state"] == wire.STATE_NO_BUNDLE
    finally:
        link.command(wire.CMD_CONFIG, {"heartbeat_ms": wire.HEARTBEAT_MS})


def test_commands_are_acked_or_refused_with_a_reason(link):
    """CONFIG is acked with the settings; START without a bundle and unknown codes raise with the device's text."""
    cfg = json.loads(link.command(wire.CMD_CONFIG, {}))
    assert cfg["heartbeat_ms"] == wire.HEARTBEAT_MS
    with pytest.raises(LinkError, match="command failed.*bundle"):
        link.command(wire.CMD_START)
    with pytest.raises(LinkError, match="unknown command 42"):
        link.command(42)
    # a malformed command payload is refused (ACK_FAILED, or ERROR ERR_BAD_COMMAND as
    # wire.CommandLog.answer does), never executed and never silent
    try:
        kind, data = link.request(wire.MSG_COMMAND, bytes([wire.CMD_CONFIG]) + b"{not json")
    except LinkError as e:
        assert "error %d" % wire.ERR_BAD_COMMAND in str(e)
    else:
        assert kind == wire.MSG_ACK and wire.unpack_ack(data)[0] == wire.ACK_FAILED


def test_repeated_command_seq_is_answered_not_executed(link):
    """A COMMAND resent with its seq gets the first ACK again and does not run again."""
    first = wire.pack_command(wire.CMD_CONFIG, {"heartbeat_ms": 300})
    seq = link.send(wire.MSG_COMMAND, first)
    kind, _, ack1 = link.receive(10.0, seq=seq)
    link.command(wire.CMD_CONFIG, {"heartbeat_ms": 200})  # a later command changes the setting
    link.send(wire.MSG_COMMAND, first, seq=seq)  # the host "retries" the first one
    kind2, _, ack2 = link.receive(10.0, seq=seq)
    assert kind == kind2 == wire.MSG_ACK and ack2 == ack1  # the stored ACK, byte for byte
    assert json.loads(link.command(wire.CMD_CONFIG, {}))["heartbeat_ms"] == 200  # not run again
    link.command(wire.CMD_CONFIG, {"heartbeat_ms": wire.HEARTBEAT_MS})


def test_command_survives_a_lost_ack(link):
    """HelmetLink.command retries after a lost ACK (same seq) and gets the helmet's answer."""
    from tests.test_link import LossyPort

    port = link.serial
    lossy = LossyPort(port, drop_types=(wire.MSG_ACK,), count=1)
    link.serial = lossy
    try:
        cfg = json.loads(link.command(wire.CMD_CONFIG, {"heartbeat_ms": 250}, timeout=1.0))
    finally:
        link.serial = port
    assert len(lossy.dropped) == 1 and cfg["heartbeat_ms"] == 250
