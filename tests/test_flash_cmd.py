"""`painhelm flash` and `painhelm info` end to end against the virtual helmet."""

from __future__ import annotations

import json
import os

import pytest

from painhelm.firmware import version, wire
from painhelm.host_tools.cli import main
from painhelm.host_tools.flash import flash
from painhelm.host_tools.image import firmware_files
from painhelm.host_tools.transport import SerialTransport


from .test_flash import helmet  # noqa: F401 - the same empty 256 KB helmet


def run(capsys, *argv):
    """``painhelm ARGV`` in this process: (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_flash_then_info_then_reflash_a_running_helmet(helmet, tiny_bundle, tmp_path, capsys):
    """flash writes firmware + bundle + settings and confirms the boot; info describes it;
    flashing again interrupts the running painhelm main.py and changes nothing; --dry-run
    lists only what changed and writes nothing."""
    cfg = tmp_path / "config.json"
    cfg.write_text('{"hop": 128}')
    rc, out, err = run(capsys, "flash", "--port", helmet.port, "--bundle", tiny_bundle["bundle"], "--config", cfg)
    assert rc == 0, err
    assert "firmware as .mpy for x64" in out and "SHA-256 verified" in out
    assert f"runs firmware {version.VERSION}" in out and "bundle model" in out

    rc, out, err = run(capsys, "info", "--port", helmet.port)
    assert rc == 0, err
    model = json.loads((tiny_bundle["bundle"] / "manifest.json").read_text())["files"]["model.tflite"]["sha256"]
    assert f"{version.VERSION} (protocol v{wire.PROTOCOL_VERSION}" in out
    assert f"model_bundle, model {model[:12]}" in out and "self-test cases passed" in out
    assert "hop 128 samples" in out and "heap" in out and "storage" in out and "Fp1" in out

    rc, out, _ = run(capsys, "info", "--port", helmet.port, "--json")
    info = json.loads(out)
    assert rc == 0 and info["model_sha256"] == model and info["protocol"] == wire.PROTOCOL_VERSION

    # the app is running main.py now: flash must break in, find nothing to do, and restart it
    rc, out, err = run(capsys, "flash", "--port", helmet.port, "--bundle", tiny_bundle["bundle"], "--config", cfg)
    assert rc == 0, err
    assert "0 files written" in out and "the helmet already runs this bundle" in err

    cfg.write_text('{"hop": 64}')
    before = {p: os.path.getmtime(os.path.join(helmet.fs_dir, p)) for p in os.listdir(helmet.fs_dir)}
    rc, out, err = run(capsys, "flash", "--port", helmet.port, "--bundle", tiny_bundle["bundle"], "--config", cfg,
                       "--dry-run")
    assert rc == 0, err
    assert "nothing was written" in out and "write   /config.json  11 B  (changed)" in out
    assert "1 files to write" in out
    assert {p: os.path.getmtime(os.path.join(helmet.fs_dir, p)) for p in os.listdir(helmet.fs_dir)} == before
    assert open(os.path.join(helmet.fs_dir, "config.json")).read() == '{"hop": 128}'


def test_info_errors_are_one_clear_line(helmet, tmp_path, capsys):
    """No such port, a busy port, a bare MicroPython board, firmware of another protocol."""
    rc, _, err = run(capsys, "info", "--port", tmp_path / "ttyUSB7", "--timeout", "1")
    assert rc == 1 and err.startswith("painhelm: ") and "no such port" in err

    rc, _, err = run(capsys, "info", "--port", helmet.port, "--timeout", "2")
    assert rc == 1 and "is not a painhelm helmet: a MicroPython REPL answered" in err

    with SerialTransport(helmet.port) as t:
        rc, _, err = run(capsys, "info", "--port", helmet.port, "--timeout", "1")
        assert rc == 1 and "in use by another program" in err
        rc, _, err = run(capsys, "flash", "--port", helmet.port, "--dry-run")
        assert rc == 1 and "in use by another program" in err
        # firmware that speaks another protocol: its frames carry another version byte
        src = open(os.path.join(os.path.dirname(wire.__file__), "wire.py")).read()
        other = src.replace(f"PROTOCOL_VERSION = const({wire.PROTOCOL_VERSION})", "PROTOCOL_VERSION = const(9)")
        files = {"/" + n: d for n, d in firmware_files().items()}
        flash(t, dict(files, **{"/wire.py": other.encode()}))
    rc, _, err = run(capsys, "info", "--port", helmet.port, "--timeout", "3")
    assert rc == 1 and "sends frames of protocol version 9, this painhelm speaks v1" in err
    assert "Traceback" not in err


def test_flash_user_mistakes_are_caught_before_the_port(tmp_path, tiny_bundle, capsys):
    """Bad bundles and settings are reported before the (here missing) port is opened."""
    port = tmp_path / "ttyUSB3"
    rc, _, err = run(capsys, "flash", "--port", port, "--bundle", tmp_path)
    assert rc == 1 and "is not a painhelm bundle folder" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"link": "wifi"}')
    rc, _, err = run(capsys, "flash", "--port", port, "--bundle", tiny_bundle["bundle"], "--config", bad)
    assert rc == 1 and "setting 'link' must be 'serial' or 'ble'" in err
    rc, _, err = run(capsys, "flash", "--port", port, "--bundle", tiny_bundle["bundle"])
    assert rc == 1 and "no such port" in err and "Traceback" not in err
