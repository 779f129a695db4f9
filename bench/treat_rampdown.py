"""Benchmark: how fast the treatment side reaches zero intensity after the helmet goes silent.

A virtual helmet (``painhelm helmet --virtual`` as its own process: the firmware under the
MicroPython unix port, playing held-out synthetic EEG in a loop) streams reports; the
treatment loop (``painhelm.host_tools.treat.run_treatment``: 50 Hz tick, the simulated
output stage, a SQLite session log) drives the intensity up from them. Then, ``--repeats``
times each:

* ``kill``: SIGKILL the helmet's processes (a dead helmet, a pulled cable): the port read
  fails; figures: kill -> detection, kill -> zero intensity;
* ``freeze``: SIGSTOP the helmet's interpreter (a hung helmet, the port still open): no
  heartbeat; figures: freeze -> silence detected, freeze -> zero (bounded by silence_s
  0.5 s + the fail-safe ramp, at most 0.25 s from max_intensity).

Target: zero within 1 s. Each session's log is checked to be complete (end time, end
reason, a final zero sample). Results: results/treat_rampdown.json.

Run: .venv/bin/python -m bench.treat_rampdown [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench.common import write_result
from painhelm.host_tools.connect import open_helmet
from painhelm.host_tools.treat import TICK_S, run_treatment
from painhelm.host_tools.treat_output import SimulatedOutput
from painhelm.host_tools.treat_policy import Limits, Policy, Rule
from painhelm.host_tools.treat_sessions import SessionStore
from tests.playback_helmet import HelmetProcess, write_playback_fs

RISE_TO = 60.0  # % reached before the helmet is silenced: max_intensity, the longest fail-safe ramp


def build_fs(out: Path) -> Path:
    """A small bundle (brief training on synthetic subjects) and a playback helmet filesystem."""
    from hw_tests.helmets import build_bundle

    b = build_bundle(out, seed=1, seconds=5, windows_per_class=6, max_epochs=15)
    return write_playback_fs(out / "fs", b["bundle"], b["data"], b["sfreq"], b["test"].ch_names)


def policy() -> Policy:
    """Every decision at max_intensity on one program, a quick ordinary ramp: the output climbs
    to the maximum at once, so the fail-safe ramp is the longest it can be (default limits
    otherwise: silence_s 0.5, failsafe_ramp_s 0.25)."""
    return Policy(Limits(max_intensity=60.0, max_ramp_per_s=60.0, min_confidence=0.0, hold_s=5.0),
                  [Rule(level, "*", 60.0, "tens") for level in ("none", "low", "moderate", "high")]).check()


def one_run(fs: Path, db: Path, how: str) -> dict:
    """Start a helmet, treat until RISE_TO, silence it ``how``; return the timings (s)."""
    out = SimulatedOutput()
    store = SessionStore(db)
    box: dict = {}
    with HelmetProcess(fs) as hp:
        helmet = open_helmet(hp.port, timeout=20)
        th = threading.Thread(target=lambda: box.update(res=run_treatment(helmet, policy(), out, store, duration=30)),
                              daemon=True)
        th.start()
        deadline = time.monotonic() + 30
        while out.intensity < RISE_TO:
            if time.monotonic() > deadline or not th.is_alive():
                raise SystemExit(f"the output never reached {RISE_TO} % ({box})")
            time.sleep(0.005)
        level = out.intensity
        if how == "kill":
            t0 = hp.kill()
        else:
            interp = hp.interpreter()
            t0 = time.monotonic()
            os.killpg(interp, signal.SIGSTOP)
        while out.first_zero_after(t0) is None and time.monotonic() < t0 + 5:
            time.sleep(0.005)
        t_zero = out.first_zero_after(t0)
        if how == "freeze":
            os.killpg(interp, signal.SIGCONT)
            hp.kill()  # ends the session as a lost helmet
        th.join(10)
        helmet.close()
    res = box["res"]
    s = store.session(res.session_id)
    samples = store.samples(res.session_id)
    complete = bool(s["end"] and s["end_reason"] == "helmet lost" and samples[-1]["state"] == "end"
                    and samples[-1]["intensity"] == 0.0)
    store.close()
    # when the loop noticed (a port error for a kill, the first fail-safe tick for a freeze),
    # on the same monotonic clock as t0
    noticed = res.lost_at if how == "kill" else res.silent_at
    return {"intensity_at_silence": round(level, 1), "to_detect_s": round(noticed - t0, 4),
            "to_zero_s": None if t_zero is None else round(t_zero - t0, 4), "log_complete": complete}


def summary(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3), "min": round(min(xs), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs of each kind (default 5)")
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"kill": [], "freeze": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fs = build_fs(tmp)
        for how in ("kill", "freeze"):
            for i in range(args.repeats):
                r = one_run(fs, tmp / "sessions.sqlite", how)
                runs[how].append(r)
                print(how, i + 1, r, flush=True)
    lim = Limits()
    figures = {
        "repeats": args.repeats, "tick_s": TICK_S, "silence_s": lim.silence_s,
        "failsafe_ramp_s": lim.failsafe_ramp_s, "intensity_at_silence_pct": RISE_TO,
        "kill_to_detect_s": summary([r["to_detect_s"] for r in runs["kill"]]),
        "kill_to_zero_s": summary([r["to_zero_s"] for r in runs["kill"]]),
        "freeze_to_detect_s": summary([r["to_detect_s"] for r in runs["freeze"]]),
        "freeze_to_zero_s": summary([r["to_zero_s"] for r in runs["freeze"]]),
        "all_logs_complete": all(r["log_complete"] for v in runs.values() for r in v),
        "target_zero_s": 1.0,
        "runs": runs,
    }
    path = write_result("treat_rampdown", figures)
    for k in ("kill_to_detect_s", "kill_to_zero_s", "freeze_to_detect_s", "freeze_to_zero_s"):
        print(f"{k}: median {figures[k]['median']:.3f} s, max {figures[k]['max']:.3f} s")
    print(f"all session logs complete: {figures['all_logs_complete']}; wrote {path}")


if __name__ == "__main__":
    main()
