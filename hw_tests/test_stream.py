"""Host in the loop: a recorded trial streamed into the helmet gives the host pipeline's reports.

The helmet (a real board with ``--port``, else the virtual helmet: the MicroPython unix port
with a 256 KB heap behind a pty) is flashed with the firmware and a compact bundle; the
host streams the recording as MSG_SAMPLES frames, like a treatment-side test rig, and
collects the unsolicited reports. ``painhelm.host_tools.replay`` computes on the host what
those reports must be (numpy DSP, TensorFlow Lite Micro, the firmware's decision code).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from hw_tests.helmets import build_bundle
from painhelm.firmware import wire
from painhelm.host_tools.replay import compare_reports, expected_reports

N_WINDOWS = 6
HEAP = "256K"  # the compact model's budget; firmware flashed as .mpy


@pytest.fixture(scope="module")
def streaming_helmet(request, tmp_path_factory, stream_bundle):
    """A helmet flashed with firmware + ``stream_bundle``; yields (HelmetLink, info)."""
    from painhelm.host_tools.flash import flash_helmet
    from painhelm.host_tools.link import HelmetLink
    from painhelm.host_tools.transport import SerialTransport
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    port = request.config.getoption("--port")
    virtual = None
    if port is None:
        virtual = VirtualHelmet(tmp_path_factory.mktemp("helmet_fs"), heapsize=HEAP).start()
        port = virtual.port
    t = SerialTransport(port, wait=5.0)
    try:
        flash_helmet(t, bundle=stream_bundle["bundle"])  # .mpy where the board's format allows
        link = HelmetLink(t.serial, timeout=60.0)
        info = link.wait_ready(timeout=60.0)
        yield link, info
    finally:
        t.close()
        if virtual is not None:
            virtual.stop()


@pytest.fixture(scope="module")
def stream_bundle(tmp_path_factory):
    """A compact model trained briefly on synthetic subjects, with calibrated decisions."""
    return build_bundle(tmp_path_factory.mktemp("stream"), seed=3, seconds=4, windows_per_class=4, max_epochs=8,
                        decisions=True)


def test_streamed_trial_gives_the_host_pipelines_reports(streaming_helmet, stream_bundle):
    link, info = streaming_helmet
    assert info.get("bundle_error") is None, info
    assert info["protocol"] == wire.PROTOCOL_VERSION and info["selftest_cases"] > 0
    test = stream_bundle["test"]
    data = np.concatenate(list(test.data[:N_WINDOWS]), axis=1).astype(np.float32)  # a continuous recording
    link.send_samples(data, 0, max_samples=wire.SAMPLES_PER_FRAME)
    reports = [link.next_report(timeout=60.0) for _ in range(N_WINDOWS)]
    host = expected_reports(stream_bundle["bundle"], data)
    assert len(host) == N_WINDOWS
    assert compare_reports(reports, host) == []
    assert [r["sample_index"] for r in reports] == [test.data.shape[2] * (k + 1) for k in range(N_WINDOWS)]
    seqs = [r["report_seq"] for r in reports]
    assert seqs == list(range(seqs[0], seqs[0] + N_WINDOWS))  # none lost
    # the helmet keeps beating while it streams: the stream may be shorter than one 250 ms
    # period, so wait (bounded) for the next beat rather than expect one already there
    deadline = time.monotonic() + 2.0
    while link.last_heartbeat_age() == math.inf and time.monotonic() < deadline:
        time.sleep(0.02)
    assert link.last_heartbeat_age() < 2.0
