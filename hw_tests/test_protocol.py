"""Protocol v0 conformance of a flashed helmet (virtual by default, a board with --port)."""

import pytest

from painhelm.firmware import wire
from painhelm.host_tools.link import HelmetLink, LinkError


@pytest.fixture(scope="module")
def link(helmet):
    link = HelmetLink(helmet.serial, timeout=10.0)
    link.wait_ready(timeout=30.0)
    return link


def test_ping_reports_firmware_and_protocol(link):
    """PING is answered with the firmware version and protocol 0."""
    from painhelm.firmware.version import VERSION

    info = link.ping()
    assert info["firmware"] == VERSION and info["protocol"] == wire.PROTOCOL_VERSION


def test_infer_without_bundle_is_refused_clearly(link):
    """With no bundle flashed, INFER is answered by an error frame, not silence or a crash."""
    with pytest.raises(LinkError, match="error %d" % wire.ERR_NO_MODEL):
        link.request(wire.MSG_INFER, wire.pack_window(bytes(8), 1, 2, 128.0))


def test_unknown_type_and_corrupt_frames_keep_device_alive(link):
    """Unknown types and corrupted frames get error frames; the device keeps answering."""
    with pytest.raises(LinkError, match="error %d" % wire.ERR_UNKNOWN_TYPE):
        link.request(0x42)
    line = bytearray(wire.encode_line(wire.MSG_PING, 9))
    line[5] = ord("A") if line[5] != ord("A") else ord("B")
    link.serial.write(bytes(line))
    kind, _, payload = link.receive(timeout=10.0, seq=0)
    assert kind == wire.MSG_ERROR and wire.unpack_error(payload)[0] == wire.ERR_BAD_FRAME
    assert link.ping()["protocol"] == wire.PROTOCOL_VERSION
