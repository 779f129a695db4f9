"""Host-in-the-loop tests: run against a real board (``--port /dev/ttyUSB0``) or, by default,
a virtual helmet (the MicroPython unix port behind a pty). Same tests, same code path.

Tiers: the default run (``-m 'not slow'``, CI) uses small counts; ``-m slow`` runs the long
variants. The count options below override both tiers. Each run writes JUnit XML and a short
HTML summary (every hw_tests case, its outcome and the figures it recorded with
``record_figure``) to ``--hw-report`` (default ``runs/hw_tests/``); see docs/reliability.md.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import pytest

# option -> (default tier, slow tier); None in the option means "the tier's value"
TIERS = {
    "powercut_points": (10, 100),
    "fuzz_frames": (10_000, 1_000_000),
    "soak_minutes": (1.0, 60.0),
    "link_loss_kills": (1, 20),
}


def pytest_addoption(parser):
    g = parser.getgroup("hw_tests", "helmet-in-the-loop tests (hw_tests/)")
    g.addoption("--port", default=None,
                help="serial port of a real helmet for hw_tests (default: start a virtual helmet)")
    g.addoption("--heapsize", default=None,
                help="heap of the virtual helmet (default: each test's own, 256K or 384K)")
    g.addoption("--powercut-points", type=int, default=None, help="power cuts while flashing (10 / slow 100)")
    g.addoption("--fuzz-frames", type=int, default=None, help="fuzzed frames (10000 / slow 1000000)")
    g.addoption("--soak-minutes", type=float, default=None, help="real-time streaming soak (1 / slow 60)")
    g.addoption("--link-loss-kills", type=int, default=None, help="helmet kills mid-session (1 / slow 20)")
    g.addoption("--hw-seed", type=int, default=9, help="seed of the random power-cut points and fuzz frames")
    g.addoption("--hw-report", default="runs/hw_tests",
                help="folder for junit.xml and summary.html of the hw_tests (default runs/hw_tests)")


@pytest.hookimpl(tryfirst=True)  # before the junitxml plugin reads xmlpath
def pytest_configure(config):
    config._hw_results = []
    if getattr(config.option, "xmlpath", None) is None and not hasattr(config, "workerinput"):
        out = Path(config.rootpath, config.getoption("--hw-report"))
        config.option.xmlpath = str(out / "junit.xml")


def tier_value(request, name: str):
    """The count for this test: the option if given, else the slow or default tier's value."""
    given = request.config.getoption("--" + name.replace("_", "-"))
    if given is not None:
        return given
    default, slow = TIERS[name]
    return slow if request.node.get_closest_marker("slow") else default


@pytest.fixture
def record_figure(request):
    """``record_figure(name, value)``: a key figure of this case, shown in summary.html (kept
    in the report's user_properties; pytest's record_property would warn under xunit2)."""
    return lambda name, value: request.node.user_properties.append((name, value))


@pytest.fixture(scope="session")
def hw_seed(request) -> int:
    return request.config.getoption("--hw-seed")


@pytest.fixture(scope="session")
def board_port(request) -> str | None:
    """``--port`` (a real board) or None (virtual helmets)."""
    return request.config.getoption("--port")


@pytest.fixture(scope="session")
def bundle_a(tmp_path_factory):
    """A compact 16-channel bundle (the 256 KB heap's model); see helmets.build_bundle."""
    from hw_tests.helmets import build_bundle

    return build_bundle(tmp_path_factory.mktemp("bundle_a"), seed=1)


@pytest.fixture(scope="session")
def bundle_b(tmp_path_factory):
    """A second bundle of the same shape with other weights (another model_sha256)."""
    from hw_tests.helmets import build_bundle

    return build_bundle(tmp_path_factory.mktemp("bundle_b"), seed=2)


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
        virtual = VirtualHelmet(fs, heapsize=request.config.getoption("--heapsize") or "256K").start()
        port = virtual.port
    t = SerialTransport(port, wait=5.0)
    try:
        flash_helmet(t, mpy=False)
        yield t
    finally:
        t.close()
        if virtual is not None:
            virtual.stop()


# ---------------------------------------------------------------------- summary

def pytest_runtest_logreport(report):
    if "hw_tests/" not in report.nodeid.replace("\\", "/"):
        return
    config = getattr(pytest_runtest_logreport, "config", None)
    results = getattr(config, "_hw_results", None)
    if results is None:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "xfail" if hasattr(report, "wasxfail") else report.outcome
        why = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            why = str(report.longrepr[2])
        elif report.failed:
            why = str(report.longreprtext).strip().splitlines()[-1:][0] if report.longreprtext else ""
        results.append((report.nodeid, outcome, report.duration, list(report.user_properties), why))


def pytest_sessionstart(session):
    pytest_runtest_logreport.config = session.config  # the logreport hook has no config argument


def pytest_sessionfinish(session, exitstatus):
    results = getattr(session.config, "_hw_results", [])
    if not results:
        return
    out = Path(session.config.rootpath, session.config.getoption("--hw-report"))
    out.mkdir(parents=True, exist_ok=True)
    target = session.config.getoption("--port") or "virtual helmet"
    colour = {"passed": "#cfc", "failed": "#fcc", "skipped": "#eee", "xfail": "#eee"}
    rows = []
    for nodeid, outcome, dur, props, why in results:
        figs = "<br>".join(f"{html.escape(str(k))} = {html.escape(str(v))}" for k, v in props)
        rows.append(f"<tr style='background:{colour.get(outcome, '#fff')}'><td>{html.escape(nodeid)}</td>"
                    f"<td>{outcome}</td><td>{dur:.1f}</td><td>{figs}</td><td>{html.escape(why[:300])}</td></tr>")
    n = {k: sum(r[1] == k for r in results) for k in ("passed", "failed", "skipped")}
    page = (f"<!doctype html><meta charset=utf-8><title>painhelm hw_tests</title>"
            f"<h1>painhelm hw_tests</h1><p>{time.strftime('%Y-%m-%d %H:%M:%S')} &middot; target: "
            f"{html.escape(target)} &middot; markers: {html.escape(session.config.option.markexpr or '-')} "
            f"&middot; {n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped &middot; "
            f"JUnit XML: junit.xml</p><table border=1 cellspacing=0 cellpadding=4>"
            "<tr><th>case</th><th>outcome</th><th>s</th><th>figures</th><th>note</th></tr>"
            + "".join(rows) + "</table>\n")
    (out / "summary.html").write_text(page)
