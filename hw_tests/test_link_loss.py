"""Link loss on the treatment side: a helmet streaming on its own (a recording played in a
loop) drives ``run_treatment`` with the simulated stimulator; the helmet is killed (SIGKILL,
no goodbye) at a seeded random moment once the output is up. The intensity must reach zero
within 1 s of the kill and the session record must be complete. A board cannot be killed
from the host, so this runs on virtual helmets only (tests/playback_helmet.py)."""

from __future__ import annotations

import json
import random
import time

import pytest

from hw_tests.conftest import tier_value
from hw_tests.helmets import NO_POWER_CUT

POLICY = {"limits": {"max_intensity": 50, "max_ramp_per_s": 40.0, "min_confidence": 0.0, "hold_s": 2.0},
          "rule": [{"level": lv, "location": "*", "intensity": 30, "program": "tens"}
                   for lv in ("none", "low", "moderate", "high")]}  # any report drives the output up


@pytest.fixture(scope="module")
def playback_fs(board_port, bundle_a, tmp_path_factory):
    if board_port is not None:
        pytest.skip(NO_POWER_CUT)
    from tests.playback_helmet import write_playback_fs

    t = bundle_a["test"]
    return write_playback_fs(tmp_path_factory.mktemp("playback"), bundle_a["bundle"], bundle_a["data"],
                             bundle_a["sfreq"], t.ch_names)


def _one_kill(playback_fs, policy_file, store_path, rng: random.Random) -> dict:
    from painhelm.host_tools.treat_output import SimulatedOutput
    from painhelm.host_tools.treat_policy import load_policy
    from painhelm.host_tools.treat_sessions import SessionStore
    from tests.playback_helmet import HelmetProcess, treat_in_thread

    policy = load_policy(policy_file)
    store = SessionStore(store_path)
    out = SimulatedOutput()
    with HelmetProcess(playback_fs, heapsize="512K") as hp:
        th, box = treat_in_thread(hp.port, policy, store, out)
        deadline = time.monotonic() + 30
        while out.intensity < 10.0 and th.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert out.intensity >= 10.0, box
        time.sleep(rng.uniform(0.0, 1.5))  # a random moment of the session
        t_kill = hp.kill()
        th.join(5)
    assert not th.is_alive() and "error" not in box, box
    res = box["res"]
    t_zero = out.first_zero_after(t_kill)
    s = store.session(res.session_id)
    return {"ramp_to_zero_s": None if t_zero is None else t_zero - t_kill, "res": res, "session": s,
            "samples": store.samples(res.session_id), "policy": policy, "peak": out.peak()}


def _link_loss(playback_fs, tmp_path, kills: int, seed: int, record_figure) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    rng = random.Random(seed)
    worst = 0.0
    for i in range(kills):
        r = _one_kill(playback_fs, policy_file, tmp_path / "sessions.sqlite", rng)
        z = r["ramp_to_zero_s"]
        assert z is not None and z < 1.0, f"kill {i}: output not zero within 1 s ({z})"
        worst = max(worst, z)
        s, res = r["session"], r["res"]
        assert res.end_reason == "helmet lost" and s["end_reason"] == "helmet lost" and s["end"]
        assert s["duration_s"] == pytest.approx(res.duration_s, abs=0.05)
        assert s["max_intensity"] == pytest.approx(r["peak"], abs=1e-3)
        assert s["firmware"] and len(s["model_sha256"]) == 64 and json.loads(s["policy"]) == r["policy"].to_dict()
        lost = [x for x in r["samples"] if x["state"] == "lost"]
        assert lost and lost[-1]["intensity"] == 0.0  # the record ends at zero output
    record_figure("kills", kills)
    record_figure("worst_ramp_to_zero_s", round(worst, 3))


def test_killed_helmet_zeroes_the_output(playback_fs, tmp_path, hw_seed, request, record_figure):
    """Default tier: 1 kill at a random moment; intensity 0 within 1 s, session record complete."""
    _link_loss(playback_fs, tmp_path, tier_value(request, "link_loss_kills"), hw_seed, record_figure)


@pytest.mark.slow
def test_killed_helmet_zeroes_the_output_repeatedly(playback_fs, tmp_path, hw_seed, request, record_figure):
    """Slow tier: 20 kills at random moments."""
    _link_loss(playback_fs, tmp_path, tier_value(request, "link_loss_kills"), hw_seed + 1, record_figure)
