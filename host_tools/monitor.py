"""Live view of a helmet's reports, and their CSV record (`painhelm monitor`).

``run_monitor`` reads an open helmet (connect.Helmet) without blocking, turns each report
into a row (:func:`report_row`: names instead of indices, confidences 0-1, link health at
that moment), shows it (:class:`LiveView`: a block redrawn in place on a terminal, one line
per report elsewhere) and appends it to a CSV file (:class:`CsvRecorder`, flushed per row).
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from painhelm.firmware import decide, quality, wire

from .link import LinkTimeout

__all__ = ["CSV_COLUMNS", "report_row", "CsvRecorder", "RecordError", "LiveView", "MonitorSummary", "run_monitor",
           "STATE_NAMES"]

STATE_NAMES = {wire.STATE_IDLE: "idle", wire.STATE_STREAMING: "streaming", wire.STATE_NO_BUNDLE: "no bundle"}
CSV_COLUMNS = ("host_time", "report_seq", "t_ms", "sample_index", "level", "location", "level_conf",
               "location_conf", "certain", "reasons", "quality", "bad_channels", "ood", "dsp_ms", "infer_ms",
               "heartbeat_age_s", "lost_reports", "bad_frames", "device_errors", "device_state")


class RecordError(ValueError):
    """The CSV file cannot be written as asked (exists, other columns, no permission)."""


def _name(index: int, names: list[str]) -> str:
    if index == wire.UNCERTAIN:
        return "uncertain"
    if index == wire.NO_HEAD:
        return "-"
    return names[index] if 0 <= index < len(names) else f"#{index}"


def report_row(r: dict, info: dict, link, host_time: float | None = None) -> dict:
    """One CSV row (CSV_COLUMNS) for a wire.unpack_report dict, with the helmet's names and
    the link's health when it arrived."""
    ch = info.get("ch_names") or []
    bad = [ch[i] if i < len(ch) else f"ch{i}" for i in range(64) if r["bad"] >> i & 1]
    hb = link.heartbeats[-1] if link.heartbeats else None
    age = time.monotonic() - hb["host_time"] if hb else math.inf
    return {
        "host_time": round(time.time() if host_time is None else host_time, 3),
        "report_seq": r["report_seq"], "t_ms": r["t_ms"], "sample_index": r["sample_index"],
        "level": _name(r["level"], info.get("level_names") or []),
        "location": _name(r["location"], info.get("location_names") or []),
        "level_conf": round(r["level_conf"] / 255, 3), "location_conf": round(r["location_conf"] / 255, 3),
        "certain": int(r["reasons"] == 0 and r["level"] >= 0 and r["location"] != wire.UNCERTAIN),
        "reasons": "|".join(decide.reason_names(r["reasons"])),
        "quality": "|".join(quality.flag_names(r["quality"])),
        "bad_channels": "|".join(bad), "ood": round(r["ood"], 2),
        "dsp_ms": round(r["dsp_us"] / 1000, 2), "infer_ms": round(r["infer_us"] / 1000, 2),
        "heartbeat_age_s": round(age, 3) if math.isfinite(age) else "",
        "lost_reports": link.lost_reports, "bad_frames": link.bad_frames, "device_errors": len(link.device_errors),
        "device_state": STATE_NAMES.get(hb["state"], str(hb["state"])) if hb else "",
    }


class CsvRecorder:
    """Rows appended to ``path``, each flushed at once (a crash loses no written row).

    An existing file is refused unless ``append`` (its header must be CSV_COLUMNS) or
    ``force`` (replace it)."""

    def __init__(self, path: str | Path, append: bool = False, force: bool = False) -> None:
        self.path = Path(path)
        self.rows = 0
        exists = self.path.exists()
        if self.path.is_dir():
            raise RecordError(f"--record {self.path} is a folder")
        if exists and not (append or force):
            raise RecordError(f"{self.path} exists: give --append to add to it or --force to replace it")
        if exists and append:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            if header is not None and tuple(header) != CSV_COLUMNS:
                raise RecordError(f"{self.path} has other columns than a monitor record; choose another file")
            write_header = header is None
        else:
            write_header = True
        try:
            self._f = open(self.path, "a" if append else "w", newline="")
        except OSError as e:
            raise RecordError(f"cannot write {self.path}: {e.strerror or e}") from None
        self._w = csv.DictWriter(self._f, CSV_COLUMNS)
        if write_header:
            self._w.writeheader()
            self._f.flush()

    def write(self, row: dict) -> None:
        self._w.writerow(row)
        self._f.flush()
        self.rows += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


@dataclass
class MonitorSummary:
    """What a monitor run saw."""

    reports: int = 0
    uncertain: int = 0
    seconds: float = 0.0
    end_reason: str = ""  # count, duration, user stop, helmet lost, silent
    error: str = ""
    lost_reports: int = 0
    bad_frames: int = 0
    device_errors: int = 0
    levels: dict = field(default_factory=dict)

    def line(self) -> str:
        top = ", ".join(f"{k} {v}" for k, v in sorted(self.levels.items(), key=lambda kv: -kv[1]))
        rate = self.reports / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.reports} reports in {self.seconds:.1f} s ({rate:.2f}/s), {self.uncertain} uncertain"
                + (f" [{top}]" if top else "")
                + f"; lost reports {self.lost_reports}, bad frames {self.bad_frames}, device errors {self.device_errors}"
                + f"; ended: {self.end_reason}")


class LiveView:
    """Shows rows: a block redrawn in place on a terminal (``tty``), else a line per report."""

    def __init__(self, stream, tty: bool, port: str, info: dict, record: str | None = None) -> None:
        self.stream, self.tty, self.port, self.info, self.record = stream, tty, port, info, record
        self._lines = 0
        self._row: dict | None = None
        self._times: deque[float] = deque(maxlen=20)
        self.recorded = 0

    def rate(self) -> float:
        """Reports per second over the last few."""
        t = self._times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def report(self, row: dict, now: float) -> None:
        self._row = row
        self._times.append(now)
        if self.tty:
            self.redraw(None)
        else:
            print(self.line(row), file=self.stream, flush=True)

    @staticmethod
    def line(row: dict) -> str:
        """One line for a report (the non-terminal output)."""
        verdict = "" if row["certain"] else f" uncertain({row['reasons'] or 'no class'})"
        return (f"#{row['report_seq']} t={row['t_ms']}ms level={row['level']}({row['level_conf']:.2f}) "
                f"location={row['location']}({row['location_conf']:.2f}){verdict} "
                f"quality={row['quality'] or 'ok'} bad={row['bad_channels'] or '-'} ood={row['ood']:.2f} "
                f"dsp={row['dsp_ms']:.1f}ms infer={row['infer_ms']:.1f}ms hb={row['heartbeat_age_s']}s "
                f"lost={row['lost_reports']} bad_frames={row['bad_frames']} dev_err={row['device_errors']}")

    def redraw(self, link, now: float | None = None) -> None:
        """Draw the block again (a terminal only); ``link`` refreshes the link line."""
        if not self.tty:
            return
        i, r = self.info, self._row
        hb = link.heartbeats[-1] if link is not None and link.heartbeats else None
        age = f"{time.monotonic() - hb['host_time']:.2f} s ago" if hb else "-"
        state = STATE_NAMES.get(hb["state"], "?") if hb else (r["device_state"] if r else "?")
        lines = [f"painhelm monitor  {self.port}  firmware {i.get('firmware', '?')}  "
                 f"model {str(i.get('model_sha256', '?'))[:12]}  state {state}"]
        if r is None:
            lines.append("waiting for the first report...")
        else:
            bar = "#" * round(10 * r["level_conf"])
            lines += [
                f"report    #{r['report_seq']}  device t {r['t_ms'] / 1000:.1f} s  rate {self.rate():.2f}/s",
                f"level     {r['level']:<12} {r['level_conf']:.2f} {bar}",
                f"location  {r['location']:<12} {r['location_conf']:.2f}",
                f"decision  {'certain' if r['certain'] else 'UNCERTAIN: ' + (r['reasons'] or 'no class')}",
                f"quality   {r['quality'] or 'ok'}   bad channels: {r['bad_channels'].replace('|', ', ') or 'none'}",
                f"ood       {r['ood']:.2f}",
                f"timing    dsp {r['dsp_ms']:.1f} ms  infer {r['infer_ms']:.1f} ms",
            ]
        if link is not None:
            lines.append(f"link      heartbeat {age}  lost reports {link.lost_reports}  bad frames {link.bad_frames}  "
                         f"device errors {len(link.device_errors)}")
        elif r is not None:
            lines.append(f"link      heartbeat {r['heartbeat_age_s']} s ago  lost reports {r['lost_reports']}  "
                         f"bad frames {r['bad_frames']}  device errors {r['device_errors']}")
        if self.record:
            lines.append(f"recording {self.record}: {self.recorded} rows")
        out = (f"\x1b[{self._lines}F" if self._lines else "") + "\x1b[J" + "\n".join(lines) + "\n"
        self.stream.write(out)
        self.stream.flush()
        self._lines = len(lines)


def _port_errors() -> tuple[type[BaseException], ...]:
    import serial

    return (OSError, serial.SerialException)


def run_monitor(helmet, view: LiveView, recorder: CsvRecorder | None = None, *, duration: float | None = None,
                count: int | None = None, start: bool = False, silence_timeout: float = 10.0,
                should_stop: Callable[[], bool] = lambda: False,
                on_report: Callable[[dict, dict], None] | None = None, poll_s: float = 0.02) -> MonitorSummary:
    """Show (and record) the helmet's reports until ``count`` reports, ``duration`` seconds,
    ``should_stop()``, a lost port or ``silence_timeout`` s without a heartbeat.

    ``start``: send CMD_START if the helmet is idle (CMD_STOP at the end, if the link lives).
    ``on_report(report, row)`` sees each decoded report and its row. Never raises for a lost
    helmet: the summary's ``end_reason`` / ``error`` say what happened.
    """
    link, info = helmet.link, helmet.info
    port_errors = _port_errors()
    s = MonitorSummary()
    started_it = False
    if start and info.get("state") != wire.STATE_STREAMING:
        link.command(wire.CMD_START)
        started_it = True
    t0 = last_alive = time.monotonic()
    last_draw = 0.0
    alive = True
    try:
        while True:
            now = time.monotonic()
            try:
                link.poll()
                frames = []
                while True:
                    try:
                        frames.append(link.receive(timeout=0.0, seq=0))
                    except LinkTimeout:
                        break
            except port_errors as e:
                alive = False
                s.end_reason, s.error = "helmet lost", f"lost the link to the helmet on {helmet.port}: {e}"
                break
            for msg_type, _, payload in frames:
                if msg_type != wire.MSG_REPORT:
                    continue
                r = wire.unpack_report(payload)
                row = report_row(r, info, link)
                s.reports += 1
                s.uncertain += 0 if row["certain"] else 1
                key = row["level"] if row["certain"] else "uncertain"
                s.levels[key] = s.levels.get(key, 0) + 1
                if recorder is not None:
                    recorder.write(row)
                    view.recorded = recorder.rows
                view.report(row, now)
                if on_report is not None:
                    on_report(r, row)
                if count is not None and s.reports >= count:
                    break
            if link.heartbeats:
                last_alive = max(last_alive, link.heartbeats[-1]["host_time"])
            if count is not None and s.reports >= count:
                s.end_reason = "count"
                break
            if duration is not None and now - t0 >= duration:
                s.end_reason = "duration"
                break
            if should_stop():
                s.end_reason = "user stop"
                break
            if silence_timeout and now - last_alive > silence_timeout:
                s.end_reason, s.error = "silent", (f"no heartbeat from the helmet on {helmet.port} for "
                                                   f"{silence_timeout:g} s (is it powered and running?)")
                break
            if now - last_draw >= 0.25:
                view.redraw(link)
                last_draw = now
            time.sleep(poll_s)
    finally:
        s.seconds = time.monotonic() - t0
        s.lost_reports, s.bad_frames, s.device_errors = link.lost_reports, link.bad_frames, len(link.device_errors)
        if started_it and alive:
            try:
                link.command(wire.CMD_STOP, timeout=1.0, retries=1)
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
    return s
