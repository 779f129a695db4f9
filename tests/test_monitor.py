"""`painhelm monitor` against a virtual helmet that streams a recording on its own."""

from __future__ import annotations

import csv
import io
import threading
import time

import numpy as np
import pytest

from painhelm.firmware import wire
from painhelm.host_tools.cli import main
from painhelm.host_tools.connect import open_helmet
from painhelm.host_tools.monitor import CSV_COLUMNS, CsvRecorder, LiveView, run_monitor
from painhelm.host_tools.replay import compare_reports, expected_reports
from painhelm.host_tools.virtual_helmet import VirtualHelmet
from tests.playback_helmet import HelmetProcess, write_playback_fs

pytestmark = pytest.mark.e2e
HOP = 64


@pytest.fixture(scope="module")
def recording(tiny_bundle):
    test = tiny_bundle["test"]
    return np.concatenate(list(test.data), axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def playback_fs(tiny_bundle, recording, tmp_path_factory):
    return write_playback_fs(tmp_path_factory.mktemp("monitor_fs"), tiny_bundle["bundle"], recording,
                             tiny_bundle["sfreq"], tiny_bundle["test"].ch_names, hop=HOP)


@pytest.fixture(scope="module")
def helmet_port(playback_fs):
    with VirtualHelmet(playback_fs, heapsize="512K") as h:
        yield h.port


def test_recorded_rows_are_the_helmets_reports(helmet_port, tiny_bundle, recording, tmp_path):
    """Each CSV row is one report, and each report is what the host pipeline computes for
    that window of the looped recording (matched by the report's sample index)."""
    seen = []
    term = io.StringIO()
    with open_helmet(helmet_port, timeout=20) as helmet:
        rec = CsvRecorder(tmp_path / "r.csv")
        view = LiveView(term, True, helmet_port, helmet.info, "r.csv")
        s = run_monitor(helmet, view, rec, count=5, on_report=lambda r, row: seen.append((r, row)))
        rec.close()
        dropped = helmet.link.heartbeats[-1]["dropped"]
    assert s.end_reason == "count" and s.reports == 5 and s.error == ""
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 5
    assert rows == [{k: str(v) for k, v in row.items()} for _, row in seen]
    reports = [r for r, _ in seen]
    seqs = [r["report_seq"] for r in reports]
    assert seqs == list(range(seqs[0], seqs[0] + 5)) and rows[-1]["lost_reports"] == "0"
    assert all(r["device_state"] == "streaming" and float(r["heartbeat_age_s"]) < 1.0 for r in rows)
    names = tiny_bundle["test"].level_names
    for r, row in seen:
        assert row["level"] == (names[r["level"]] if r["level"] >= 0 else "uncertain")
        assert row["level_conf"] == round(r["level_conf"] / 255, 3) and row["dsp_ms"] > 0

    # the helmet started playing at boot: report k covers samples [si - n_times, si) of the loop
    assert dropped == 0, "the helmet fell behind real time; the windows no longer line up with the recording"
    n_times = tiny_bundle["test"].data.shape[2]
    last = max(r["sample_index"] for r in reports)
    looped = np.tile(recording, (1, last // recording.shape[1] + 1))[:, :last]
    host = {h["sample_index"]: h for h in expected_reports(tiny_bundle["bundle"], looped, hop=HOP)}
    assert compare_reports(reports, [host[r["sample_index"]] for r in reports]) == []
    assert all(r["sample_index"] % HOP == n_times % HOP for r in reports)

    # the terminal view was redrawn in place and shows the last report
    shown = term.getvalue()
    assert "\x1b[J" in shown and "\x1b[10F" in shown
    last_block = shown.rsplit("\x1b[J", 1)[1]
    assert f"#{seqs[-1]}" in last_block and f"level     {rows[-1]['level']}" in last_block
    assert "recording r.csv: 5 rows" in last_block


def test_monitor_command(helmet_port, tmp_path, capsys):
    f = tmp_path / "m.csv"
    assert main(["monitor", "--port", helmet_port, "--count", "2", "--record", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"monitoring {helmet_port}") and [ln[:1] for ln in out[1:3]] == ["#", "#"]
    assert "level=" in out[1] and "2 reports in" in out[3] and out[4] == f"2 rows written to {f}"
    assert len(list(csv.DictReader(open(f)))) == 2
    # never overwrite a record by accident
    assert main(["monitor", "--port", helmet_port, "--count", "1", "--record", str(f)]) == 1
    assert "exists: give --append to add to it or --force to replace it" in capsys.readouterr().err
    assert main(["monitor", "--port", helmet_port, "--count", "1", "--record", str(f), "--append"]) == 0
    rows = list(csv.DictReader(open(f)))
    assert len(rows) == 3 and int(rows[2]["report_seq"]) > int(rows[1]["report_seq"])
    capsys.readouterr()

    # --start on an idle helmet: starts it, and stops it again at the end
    with open_helmet(helmet_port) as h:
        h.link.command(wire.CMD_STOP)
    assert main(["monitor", "--port", helmet_port, "--start", "--count", "1", "--record", str(f), "--force"]) == 0
    assert "1 reports in" in capsys.readouterr().out and len(list(csv.DictReader(open(f)))) == 1
    with open_helmet(helmet_port) as h:
        assert h.link.ping()["state"] == wire.STATE_IDLE
        h.link.command(wire.CMD_START)


def test_monitor_reports_a_lost_helmet_and_keeps_the_csv(playback_fs, tmp_path, capsys):
    f = tmp_path / "lost.csv"
    box = {}
    with HelmetProcess(playback_fs) as hp:
        th = threading.Thread(target=lambda: box.update(rc=main(["monitor", "--port", hp.port, "--record", str(f)])))
        th.start()
        deadline = time.monotonic() + 20
        while not (f.exists() and f.read_text().count("\n") >= 3):  # header + 2 rows
            assert time.monotonic() < deadline and th.is_alive()
            time.sleep(0.05)
        hp.kill()
        th.join(5)
    assert box["rc"] == 1
    err = capsys.readouterr().err.strip()
    rows = list(csv.DictReader(open(f)))
    assert err.startswith(f"painhelm: lost the link to the helmet on {hp.port}") and "\n" not in err
    assert err.endswith(f"{f} holds the {len(rows)} rows received") and len(rows) >= 2
    assert all(r["report_seq"] and r["level"] for r in rows)


def test_monitor_user_mistakes(tmp_path, capsys):
    for argv, msg in [(["--port", "/dev/ttyNOPE"], "cannot open serial port /dev/ttyNOPE: no such port"),
                      (["--port", "/dev/ttyNOPE", "--append"], "--append and --force go with --record FILE"),
                      (["--port", "/dev/ttyNOPE", "--count", "0"], "--count must be positive, got 0")]:
        assert main(["monitor", *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"painhelm: {msg}") and "\n" not in err
