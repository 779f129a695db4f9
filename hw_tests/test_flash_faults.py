"""Flashing is idempotent, and a power cut at any moment of a flash never bricks the helmet.

Power cuts: a seeded list of points, each either a byte offset of the bundle transfer (the
flash's progress callback arms the cut there; it lands a random few ms later, inside the
next write exec) or a delay after the last byte (the cut lands in the switch-over exec, the
reset, or the boot that self-tests and promotes the new bundle). After each cut the helmet
is switched on again and must: boot the firmware, run exactly the old or the new bundle
(its model SHA-256), answer the REPL, and accept the same flash again to completion.
Only a virtual helmet can be power-cut; on a board those cases skip.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from hw_tests.conftest import tier_value
from hw_tests.helmets import Rig
from painhelm.firmware import slots, version


@pytest.fixture
def rig(board_port, tmp_path, request):
    r = Rig(board_port, tmp_path / "fs", heapsize=request.config.getoption("--heapsize") or "256K").start()
    yield r
    r.stop()


def test_flashing_twice_changes_nothing(rig, bundle_a, record_figure):
    """The second flash of the same firmware and bundle writes nothing and the helmet runs the same bundle."""
    first = rig.flash(bundle_a["bundle"])
    assert first["info"]["model_sha256"] == bundle_a["sha"]
    second = rig.flash(bundle_a["bundle"])
    record_figure("first_flash_bytes", first["bytes"])
    record_figure("second_flash_bytes", second["bytes"])
    assert second["written"] == [] and second["bytes"] == 0 and second["deleted"] == [], second
    assert "the helmet already runs this bundle" in second["notes"]
    info = second["info"]
    assert info["model_sha256"] == bundle_a["sha"] and info["bundle"] == slots.ACTIVE
    assert "bundle_refused" not in info and "bundle_error" not in info


class _Cut(Exception):
    """Raised from the progress callback once the power is gone."""


def _points(rng: random.Random, n: int, total: int, after_s: float) -> list[tuple[str, float]]:
    """``n`` cut points: ("byte", offset) during the transfer, ("after", seconds) past its end."""
    pts = []
    for _ in range(n):
        if rng.random() < 0.7:
            pts.append(("byte", rng.randrange(total)))
        else:
            pts.append(("after", rng.uniform(0.0, after_s)))
    return pts


def _interrupted_flash(rig: Rig, bundle, point: tuple[str, float], rng: random.Random) -> str:
    """Flash ``bundle``, cutting the power at ``point``; return where the cut landed."""
    kind, where = point
    state = {"armed": False, "where": "not cut"}

    def cut(delay: float, label: str) -> None:
        def go():
            if not state["armed"]:
                return
            state["armed"] = False
            state["where"] = label
            rig.power_cut()
        state["armed"] = True
        threading.Timer(delay, go).start()

    def progress(path: str, sent: int, total: int) -> None:
        if not state["armed"] and state["where"] == "not cut":
            if kind == "byte" and sent >= where:
                cut(rng.uniform(0.0, 0.03), f"byte {sent}/{total} ({path.rsplit('/', 1)[-1]})")
            elif kind == "after" and sent >= total and total:
                cut(where, f"{where:.2f} s after the last byte")
        if state["where"] != "not cut":
            raise _Cut()

    try:
        rig.flash(bundle, progress=progress)
    except Exception:  # noqa: BLE001 - the link dies with the helmet: any error is expected
        pass
    deadline = time.monotonic() + 5
    while state["armed"] and time.monotonic() < deadline:  # a cut armed near the end still lands
        time.sleep(0.01)
    if state["where"] == "not cut":  # the whole flash finished before the cut: cut now
        state["armed"] = False
        rig.power_cut()
        state["where"] = "after the flash returned"
    return state["where"]


def _power_cuts(rig: Rig, a: dict, b: dict, n: int, seed: int, record_figure) -> None:
    if not rig.virtual:
        pytest.skip("power cuts need a virtual helmet: the host cannot switch a board off")
    rng = random.Random(seed)
    assert rig.flash(a["bundle"])["info"]["model_sha256"] == a["sha"]
    # one uninterrupted bundle flash measures what the cut points range over: the bytes a
    # bundle flash sends (the firmware is unchanged) and the time from its last byte to its end
    last_byte = []
    second = rig.flash(b["bundle"], progress=lambda p, s, t: last_byte.append(time.monotonic()) if s >= t else None)
    after_s = time.monotonic() - last_byte[-1]
    total = second["bytes"]
    assert second["info"]["model_sha256"] == b["sha"] and total > 0
    points = _points(rng, n, total, after_s=after_s)
    running = b
    survived, landed = 0, []
    for i, point in enumerate(points):
        target = b if running is a else a
        landed.append(_interrupted_flash(rig, target["bundle"], point, rng))
        rig.restart()
        link = rig.link(timeout=60.0)  # the firmware boots by itself after the cut
        info = link.info
        ctx = f"cut {i} at {landed[-1]}: {info}"
        assert info["firmware"] == version.VERSION, ctx
        assert info.get("bundle_error") is None, ctx  # a usable bundle is loaded
        assert info["model_sha256"] in (running["sha"], target["sha"]), ctx  # exactly old or new
        assert info["bundle"] in (slots.ACTIVE, slots.PREVIOUS), ctx
        t = rig.transport()
        t.enter_raw_repl()
        assert t.eval_("1 + 2") == 3, ctx  # the REPL answers: the host can always reflash
        again = rig.flash(target["bundle"])  # flashing again completes (resuming what it can)
        assert again["info"]["model_sha256"] == target["sha"], ctx
        running = target
        survived += 1
    record_figure("powercut_points", n)
    record_figure("powercut_survived", survived)
    record_figure("powercut_seed", seed)
    record_figure("bundle_flash_bytes", total)
    record_figure("bundle_flash_tail_s", round(after_s, 2))
    record_figure("cuts_during_transfer", sum(w.startswith("byte") for w in landed))
    record_figure("cuts_after_last_byte", sum(not w.startswith("byte") for w in landed))
    assert survived == n


def test_power_cuts_while_flashing_never_brick(rig, bundle_a, bundle_b, hw_seed, request, record_figure):
    """>= 10 seeded power cuts during flashes: the helmet always boots the old or the new bundle."""
    _power_cuts(rig, bundle_a, bundle_b, tier_value(request, "powercut_points"), hw_seed, record_figure)


@pytest.mark.slow
def test_power_cuts_while_flashing_never_brick_long(rig, bundle_a, bundle_b, hw_seed, request, record_figure):
    """The slow tier: >= 100 seeded power cuts."""
    _power_cuts(rig, bundle_a, bundle_b, tier_value(request, "powercut_points"), hw_seed + 1, record_figure)
