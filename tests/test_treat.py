"""`painhelm treat` and `painhelm sessions` against virtual helmets that stream on their own.

The helmet is the real firmware under the MicroPython unix port, playing held-out synthetic
EEG in a loop; the output stage is the simulated stimulator (no hardware exists here).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import threading
import time

import numpy as np
import pytest

from painhelm.host_tools.cli import main
from painhelm.host_tools.treat_output import SimulatedOutput
from painhelm.host_tools.treat_policy import load_policy
from painhelm.host_tools.treat_sessions import SessionStore
from painhelm.host_tools.virtual_helmet import VirtualHelmet
from tests.playback_helmet import HelmetProcess, treat_in_thread, write_playback_fs

pytestmark = pytest.mark.e2e

RAMP = 40.0  # %/s in the test policy: the output climbs quickly from the first report
POLICY = {"limits": {"max_intensity": 50, "max_ramp_per_s": RAMP, "min_confidence": 0.3, "hold_s": 2.0},
          "rule": [{"level": "none", "intensity": 0},
                   {"level": "low", "location": "*", "intensity": 20, "program": "tens"},
                   {"level": "moderate", "location": "*", "intensity": 30, "program": "tens"},
                   {"level": "high", "location": "*", "intensity": 40, "program": "tens"}]}


@pytest.fixture(scope="module")
def playback_fs(tiny_bundle, tmp_path_factory):
    """A helmet filesystem: firmware + tiny bundle + the held-out windows played in a loop."""
    test = tiny_bundle["test"]
    data = np.concatenate(list(test.data), axis=1).astype(np.float32)
    return write_playback_fs(tmp_path_factory.mktemp("playback_fs"), tiny_bundle["bundle"], data,
                             tiny_bundle["sfreq"], test.ch_names)


@pytest.fixture
def policy_file(tmp_path):
    p = tmp_path / "policy.json"
    p.write_text(json.dumps(POLICY))
    return p


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_killed_helmet_brings_the_output_to_zero_within_1s(playback_fs, policy_file, tmp_path):
    policy = load_policy(policy_file)
    store = SessionStore(tmp_path / "sessions.sqlite")
    out = SimulatedOutput()
    with HelmetProcess(playback_fs) as hp:
        th, box = treat_in_thread(hp.port, policy, store, out)
        _wait(lambda: out.intensity >= 10.0 or not th.is_alive(), 25, "the output to rise from confident reports")
        assert out.intensity >= 10.0, box
        t_kill = hp.kill()
        th.join(5)
    assert not th.is_alive() and "error" not in box, box
    res = box["res"]
    t_zero = out.first_zero_after(t_kill)
    assert t_zero is not None and t_zero - t_kill < 1.0
    assert res.end_reason == "helmet lost" and res.lost_at - t_kill < 0.5
    # the ramp up obeyed max_ramp_per_s (one tick of scheduling jitter allowed) and the clamp
    ups = [(b[1] - a[1], b[0] - a[0]) for a, b in zip(out.history, out.history[1:]) if b[1] > a[1]]
    assert ups and all(di <= RAMP * dt + RAMP * 0.02 + 1e-9 for di, dt in ups)
    assert out.peak() <= 40.0 and out.program == "tens"

    # the session record is complete
    s = store.session(res.session_id)
    assert s["end_reason"] == "helmet lost" and s["end"] and s["duration_s"] == pytest.approx(res.duration_s, abs=0.05)
    assert s["programs"] == "tens" and s["max_intensity"] == pytest.approx(out.peak(), abs=1e-3)  # the curve's peak is logged
    assert s["firmware"] and len(s["model_sha256"]) == 64 and json.loads(s["policy"]) == policy.to_dict()
    samples = store.samples(res.session_id)
    assert samples[0]["intensity"] == 0.0 and samples[0]["state"] == "waiting"
    assert any(r["state"] == "tracking" and r["level"] in ("low", "moderate", "high") for r in samples)
    lost = [r for r in samples if r["state"] == "lost"]
    assert lost and lost[-1]["intensity"] == 0.0
    assert samples[-1]["state"] == "end" and samples[-1]["intensity"] == 0.0
    assert samples[-1]["t_s"] == pytest.approx(s["duration_s"], abs=0.05)
    store.set_feedback(res.session_id, 6, "tingling, then nothing")  # the API, after the session
    s = store.session(res.session_id)
    assert (s["feedback_score"], s["feedback_comment"]) == (6, "tingling, then nothing")
    store.close()


def test_silent_helmet_fails_safe_then_resumes_from_a_new_report(playback_fs, policy_file, tmp_path):
    """A frozen helmet (port still open, no heartbeat): zero within 1 s; when it comes back the
    output rises again only after a new report; the user's stop ends the session."""
    policy = load_policy(policy_file)
    store = SessionStore(tmp_path / "sessions.sqlite")
    out = SimulatedOutput()
    stop = threading.Event()
    with HelmetProcess(playback_fs) as hp:
        th, box = treat_in_thread(hp.port, policy, store, out, should_stop=stop.is_set)
        _wait(lambda: out.intensity >= 10.0 or not th.is_alive(), 25, "the output to rise")
        interp = hp.interpreter()
        os.killpg(interp, signal.SIGSTOP)
        t_freeze = time.monotonic()
        try:
            _wait(lambda: out.intensity == 0.0, 2.0, "the fail-safe")
            assert out.first_zero_after(t_freeze) - t_freeze < 1.0
            time.sleep(0.3)
            assert out.intensity == 0.0 and th.is_alive()  # the session goes on
        finally:
            os.killpg(interp, signal.SIGCONT)
        _wait(lambda: out.intensity > 0.0 or not th.is_alive(), 15, "the output to rise again")
        stop.set()
        th.join(5)
    res = box["res"]
    assert res.end_reason == "user stop" and out.intensity == 0.0
    states = [r["state"] for r in store.samples(res.session_id)]
    fs = states.index("failsafe")
    assert "tracking" in states[:fs] and "tracking" in states[fs:] and states[-2:] == ["stopping", "end"]
    store.close()


@pytest.fixture(scope="module")
def helmet_port(playback_fs, tmp_path_factory):
    fs = tmp_path_factory.mktemp("treat_cli_fs")
    shutil.copytree(playback_fs, fs, dirs_exist_ok=True)
    with VirtualHelmet(fs, heapsize="512K") as h:
        yield h.port


def test_treat_and_sessions_commands(helmet_port, policy_file, tmp_path, capsys):
    db = tmp_path / "db" / "s.sqlite"
    rc = main(["treat", "--port", helmet_port, "--db", str(db), "--policy", str(policy_file), "--duration", "3.5",
               "--feedback", "8", "--comment", "calm"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert re.search(r"session 1: 3\.[5-9] s, ended: duration, \d+ reports", out) and "feedback 8/10" in out
    assert main(["sessions", "--db", str(db)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:4] == ["id", "start", "dur_s", "end"] and listing[1].split()[0] == "1"
    assert "duration" in listing[1] and " 8 " in listing[1]

    assert main(["sessions", "--db", str(db), "--csv", str(tmp_path / "sessions.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sessions.csv")))
    assert len(rows) == 1 and rows[0]["end_reason"] == "duration" and rows[0]["feedback_comment"] == "calm"
    assert float(rows[0]["duration_s"]) == pytest.approx(3.5, abs=0.3)
    assert main(["sessions", "--db", str(db), "--samples", "1", "--csv", str(tmp_path / "samples.csv")]) == 0
    samples = list(csv.DictReader(open(tmp_path / "samples.csv")))
    assert samples[0]["state"] == "waiting" and samples[-1]["state"] == "end" and float(samples[-1]["intensity"]) == 0
    ts = [float(r["t_s"]) for r in samples]
    assert ts == sorted(ts) and max(ts) - min(ts) >= 3.4
    with SessionStore(db) as store:
        assert len(samples) == len(store.samples(1))

    assert main(["sessions", "--db", str(db), "--feedback", "1", "9", "--comment", "better"]) == 0
    with SessionStore(db) as store:
        assert (store.session(1)["feedback_score"], store.session(1)["feedback_comment"]) == (9, "better")
    png = tmp_path / "s1.png"
    assert main(["sessions", "--db", str(db), "--plot", "1", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    # mistakes about sessions: one line each
    for argv, msg in [(["--samples", "7"], "no session 7 in"),
                      (["--feedback", "1", "11"], "feedback score must be a whole number from 0 to 10, got 11"),
                      (["--feedback", "x", "3"], "--feedback takes a session id and a score 0-10")]:
        assert main(["sessions", "--db", str(db), *argv]) == 1
        assert capsys.readouterr().err.strip().startswith(f"painhelm: {msg}")


def test_treat_user_mistakes(tmp_path, capsys, policy_file):
    def err(argv):
        assert main(argv) == 1
        e = capsys.readouterr().err.strip()
        assert e.startswith("painhelm: ") and "\n" not in e and "Traceback" not in e
        return e

    db = str(tmp_path / "s.sqlite")
    assert "cannot open serial port /dev/ttyNOPE: no such port" in err(["treat", "--port", "/dev/ttyNOPE", "--db", db])
    # the user's files are checked before the port is touched
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nlevel = "high"\nintensity = 75\nprogram = "burst"\n')
    assert "rule 1 (high/*): intensity 75 is outside [0, limits.max_intensity = 60]" in err(
        ["treat", "--port", "/dev/ttyNOPE", "--policy", str(bad), "--db", db])
    assert "no such policy file" in err(["treat", "--port", "/dev/ttyNOPE", "--policy", str(tmp_path / "x.toml")])
    assert "is a folder, not a database file" in err(["treat", "--port", "/dev/ttyNOPE", "--db", str(tmp_path)])
    junk = tmp_path / "junk.sqlite"
    junk.write_text("these are my notes, not a database\n" * 100)
    assert "cannot use" in err(["treat", "--port", "/dev/ttyNOPE", "--db", str(junk)])
    (tmp_path / "file").write_text("")
    assert "cannot create the session database" in err(["treat", "--port", "/dev/ttyNOPE", "--db",
                                                        str(tmp_path / "file" / "s.sqlite")])
    assert "--feedback must be from 0 to 10" in err(["treat", "--port", "/dev/ttyNOPE", "--feedback", "12"])
    assert "no session database at" in err(["sessions", "--db", str(tmp_path / "none.sqlite")])


def test_treat_refuses_a_helmet_without_painhelm_or_with_a_wrong_bundle(playback_fs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with VirtualHelmet(tmp_path / "empty", heapsize="256K") as h:  # MicroPython, no firmware
        assert main(["treat", "--port", h.port, "--db", str(tmp_path / "s.sqlite"), "--connect-timeout", "1.5"]) == 1
    assert "is not a painhelm helmet: a MicroPython REPL answered" in capsys.readouterr().err
    fs = tmp_path / "wrong"
    shutil.copytree(playback_fs, fs)
    man = json.loads((fs / "model_bundle" / "manifest.json").read_text())
    man["bundle_version"] = 99  # a bundle written for other firmware
    (fs / "model_bundle" / "manifest.json").write_text(json.dumps(man))
    with VirtualHelmet(fs, heapsize="512K") as h:
        assert main(["treat", "--port", h.port, "--db", str(tmp_path / "s.sqlite")]) == 1
    e = capsys.readouterr().err
    assert "has no usable bundle" in e and "bundle version 99, this firmware reads" in e
    with SessionStore(tmp_path / "s.sqlite") as store:
        assert store.sessions() == []  # no session is opened for a helmet that cannot treat
