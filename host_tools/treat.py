"""The treatment loop: helmet link -> safety controller -> output stage -> session log.

One thread, a fixed control tick (50 Hz by default) that does not wait for reports: each
tick reads what the port has (never blocking), feeds the controller every report and sign
of life, asks it for the output, applies that to the output stage, then logs. The output is
set before anything is written to disk, so logging can never delay the fail-safe.

A read error on the port (the helmet's process died, the USB cable came out) is link loss
at once: the controller ramps to zero at the fail-safe rate and the session ends with
"helmet lost". Silence (no heartbeat or report for ``silence_s``) ramps to zero the same
way but the session goes on: a helmet that comes back must send a new report before the
output rises again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from painhelm.firmware import wire

from .link import LinkError, LinkTimeout
from .treat_output import StimulatorOutput
from .treat_policy import Decision, Output, Policy, SafetyController, decision_from_report
from .treat_sessions import SessionStore

__all__ = ["TreatResult", "run_treatment", "TICK_S", "LOG_EVERY_S"]

TICK_S = 0.02  # 50 Hz control loop
LOG_EVERY_S = 1.0  # a sample at least this often, even when nothing changes
RAMP_LOG_S = 0.1  # during a ramp, a sample at most this often (and at its end)


@dataclass
class TreatResult:
    """How a session ended."""

    session_id: int
    end_reason: str
    duration_s: float
    reports: int = 0
    max_intensity: float = 0.0
    lost_at: float | None = None  # monotonic time the port was found gone
    silent_at: float | None = None  # monotonic time a silence was first detected
    zero_at: float | None = None  # monotonic time the output first reached zero after either
    notes: list[str] = field(default_factory=list)


def _port_errors() -> tuple[type[BaseException], ...]:
    try:
        import serial

        return (OSError, serial.SerialException)
    except ImportError:  # pragma: no cover - pyserial is a dependency
        return (OSError,)


class _Logger:
    """Decides which ticks become samples: every change of state, program or decision (with
    the tick before it, so a ramp's turning point is in the log), a ramp at most every
    RAMP_LOG_S plus its end, and at least one sample per LOG_EVERY_S."""

    def __init__(self, store: SessionStore, sid: int, t0: float, unix0: float) -> None:
        self.store, self.sid, self.t0, self.unix0 = store, sid, t0, unix0
        self._last: tuple | None = None
        self._last_t = -1e9
        self._last_intensity = None
        self._skipped: tuple | None = None  # the last tick not logged

    def __call__(self, now: float, out: Output, d: Decision | None, force: bool = False) -> None:
        key = (out.state, out.program, None if d is None else (d.level, d.location, d.certain))
        ramp_end = self._last_intensity is not None and out.intensity != self._last_intensity and out.intensity == out.target
        due = (force or key != self._last or ramp_end or now - self._last_t >= LOG_EVERY_S
               or (out.intensity != self._last_intensity and now - self._last_t >= RAMP_LOG_S))
        if not due:
            self._skipped = (now, out, d)
            return
        if self._skipped is not None and (force or key != self._last):
            self._write(*self._skipped)
        self._skipped = None
        self._last, self._last_t, self._last_intensity = key, now, out.intensity
        self._write(now, out, d)

    def _write(self, now: float, out: Output, d: Decision | None) -> None:
        self.store.add_sample(self.sid, round(now - self.t0, 4), self.unix0 + (now - self.t0), round(out.intensity, 4),
                              round(out.target, 4), out.program, None if d is None else d.level,
                              None if d is None else d.location,
                              None if d is None else round(d.confidence, 4), out.state)


def run_treatment(helmet, policy: Policy, output: StimulatorOutput, store: SessionStore, *,
                  duration: float | None = None, start: bool = False, tick_s: float = TICK_S,
                  should_stop: Callable[[], bool] = lambda: False,
                  on_tick: Callable[[float, Output, Decision | None, SafetyController], None] | None = None,
                  on_session: Callable[[int], None] | None = None,
                  clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> TreatResult:
    """Run one treatment session on an open helmet (connect.Helmet) until the user stops
    (``should_stop()`` turns True), ``duration`` seconds pass, or the helmet is lost.

    ``start``: send CMD_START when the helmet is not streaming (and CMD_STOP at the end).
    ``on_tick(now, output, decision, controller)`` is called every tick (a live view);
    ``on_session(id)`` once the session row exists. Returns a :class:`TreatResult`;
    the output stage is at zero when it returns, whatever happened.
    """
    info, link = helmet.info, helmet.link
    level_names, location_names = list(info.get("level_names") or []), list(info.get("location_names") or [])
    notes = policy.check_names(level_names, location_names)
    port_errors = _port_errors()
    started_it = False
    if start and info.get("state") != wire.STATE_STREAMING:
        link.command(wire.CMD_START)
        started_it = True

    t0, unix0 = clock(), time.time()
    sid = store.start_session(helmet.port, info, policy.to_dict(), unix0)
    if on_session is not None:
        on_session(sid)
    ctl = SafetyController(policy, t0)
    log = _Logger(store, sid, t0, unix0)
    res = TreatResult(sid, "error", 0.0, notes=notes)
    decision: Decision | None = None
    lost = False
    stopping_reason: str | None = None
    last_hb: float | None = None
    next_tick = t0
    out = ctl.tick(t0)
    try:
        output.set(out.intensity, out.program)
        log(t0, out, None, force=True)
        while True:
            now = clock()
            if not lost:
                try:
                    link.poll()
                    frames = _drain(link)
                except port_errors as e:
                    lost = True
                    ctl.link_lost(now)
                    res.lost_at = now
                    res.notes.append(f"lost the link to the helmet on {helmet.port}: {e}")
                    frames = []
                for msg_type, payload in frames:
                    if msg_type == wire.MSG_REPORT:
                        try:
                            r = wire.unpack_report(payload)
                        except ValueError:
                            continue  # counted by nobody: the CRC was right, so it is a firmware bug
                        res.reports += 1
                        decision = decision_from_report(r, level_names, location_names)
                        ctl.decide(decision, now)
                    elif msg_type == wire.MSG_PONG:  # the ready announcement: the helmet rebooted
                        res.notes.append(f"the helmet restarted at {now - t0:.1f} s")
                        ctl.not_streaming(now)
                if link.heartbeats:
                    hb = link.heartbeats[-1]
                    if hb["host_time"] != last_hb:
                        last_hb = hb["host_time"]
                        ctl.alive(last_hb)
                        if hb["state"] != wire.STATE_STREAMING:
                            ctl.not_streaming(last_hb)
            if stopping_reason is None:
                if should_stop():
                    stopping_reason = "user stop"
                elif duration is not None and now - t0 >= duration:
                    stopping_reason = "duration"
                if stopping_reason is not None:
                    ctl.stop()
            was_silent = out.state == "failsafe"
            out = ctl.tick(now)
            output.set(out.intensity, out.program)
            if out.state == "failsafe" and not was_silent and res.silent_at is None:
                res.silent_at = now
            if (res.lost_at is not None or res.silent_at is not None) and res.zero_at is None and out.intensity == 0.0:
                res.zero_at = now
            res.max_intensity = max(res.max_intensity, out.intensity)
            log(now, out, decision if out.state not in ("lost", "failsafe") else None)
            if on_tick is not None:
                on_tick(now, out, decision, ctl)
            if out.intensity == 0.0 and (lost or stopping_reason is not None):
                res.end_reason = "helmet lost" if lost else stopping_reason
                break
            next_tick += tick_s
            delay = next_tick - clock()
            if delay > 0:
                sleep(delay)
            else:
                next_tick = clock()  # overran (a slow disk): do not burst to catch up
    except KeyboardInterrupt:  # a second Ctrl-C: no ramp, off now
        output.off()
        res.end_reason = "user stop"
        res.notes.append("stopped at once: output switched off without a ramp (second Ctrl-C)")
    finally:
        output.off()  # zero whatever happened (an exception: end reason "error")
        end = clock()
        try:
            log(end, Output(0.0, out.program, "end", 0.0), None, force=True)
            store.end_session(sid, res.end_reason, unix0 + (end - t0))
        finally:
            res.duration_s = end - t0
            if started_it and not lost:
                try:
                    link.command(wire.CMD_STOP, timeout=1.0, retries=1)
                except (LinkError, *port_errors):
                    pass
    return res


def _drain(link) -> list[tuple[int, bytes]]:
    """Every queued unsolicited frame (reports, error frames, announcements), oldest first."""
    got = []
    while True:
        try:
            msg_type, _, payload = link.receive(timeout=0.0, seq=0)
        except LinkTimeout:
            return got
        got.append((msg_type, payload))
