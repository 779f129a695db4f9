"""Host-in-the-loop tests: run against a real board (``--port /dev/ttyUSB0``) or, by default,
a virtual helmet (the MicroPython unix port behind a pty). Same tests, same code path."""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--port", default=None,
                     help="serial port of a real helmet for hw_tests (default: start a virtual helmet)")


@pytest.fixture(scope="module")
def helmet(request, tmp_path_factory):
    """A helmet flashed with the current firmware_py (no bundle); yields an open SerialTransport."""
    from painhelm.host_tools.flash import flash_helmet
    from painhelm.host_tools.transport import SerialTransport
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    port = request.config.getoption("--port")
    virtual = None
    if port is None:
        fs = tmp_path_factory.mktemp("helmet_fs")
        virtual = VirtualHelmet(fs, heapsize="256K").start()
        port = virtual.port
    t = SerialTransport(port, wait=5.0)
    try:
        flash_helmet(t, mpy=False)
        yield t
    finally:
        t.close()
        if virtual is not None:
            virtual.stop()
