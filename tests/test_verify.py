"""`painhelm verify` against virtual helmets: passes with the flashed model, fails with another,
takes both the INFER (512K heap) and the SAMPLES (256K heap) path, and turns user
mistakes into one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from painhelm.firmware import wire
from painhelm.host_tools.cli import main

N_WINDOWS = 48  # of the 96 held-out windows, spread evenly


def _flash(port: str, bundle, mpy: bool = False) -> None:
    """Flash firmware (and ``bundle``) and wait until it answers; leave the port closed."""
    from painhelm.host_tools.flash import flash
    from painhelm.host_tools.image import device_image
    from painhelm.host_tools.link import HelmetLink
    from painhelm.host_tools.transport import SerialTransport

    t = SerialTransport(port, wait=5.0)
    try:
        flash(t, device_image(bundle, mpy=mpy), reset=True)
        HelmetLink(t.serial).wait_ready(timeout=60.0)
    finally:
        t.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A compressed folder: a tiny painnet fitted on synthetic-pain without S05 (so S05's 96
    windows are the test set), exported to int8 TFLite with a helmet bundle."""
    from painhelm.compress.pipeline import compress_model
    from painhelm.train.datasets import load_dataset
    from painhelm.train.fit import TrainConfig, fit

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("verify")
    trials = load_dataset("synthetic-pain")
    cfg = TrainConfig(epochs=4, threads=1, patience=50, device="cpu", model_args={"lstm_hidden": 8})
    fit(trials.subset(trials.subject != "S05"), cfg, out_dir=root / "model",
        source={"dataset": "synthetic-pain", "mapping": None, "task": None})
    compress_model(root / "model", root / "compressed", formats=("tflite", "bundle"), calib_size=32, log=None)
    return root / "compressed"


@pytest.fixture(scope="module")
def helmet512(folder, tmp_path_factory):
    """A virtual helmet with a 512 KB heap running the folder's bundle: windows go as MSG_INFER."""
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    with VirtualHelmet(tmp_path_factory.mktemp("fs512"), heapsize="512K") as vh:
        _flash(vh.port, folder / "bundle")
        yield vh.port


def _verify(port, folder, out, *extra) -> int:
    return main(["verify", "--port", port, "--model", str(folder), "--out", str(out),
                 "--max-windows", str(N_WINDOWS), *extra])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("painhelm: ") and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_verify_passes_on_the_flashed_model(helmet512, folder, tmp_path, capsys):
    """Exit 0; the four rows per head; the helmet's int8 logits equal the host's (TFLM)
    bit for bit; every report file written."""
    assert _verify(helmet512, folder, tmp_path) == 0
    out = capsys.readouterr().out
    assert "PASS: device vs host int8 agreement 100.00 %" in out
    assert out.count("device vs host int8 (cross)    100.0 %") == 2
    res = json.loads((tmp_path / "verify.json").read_text())
    assert res["passed"] and res["model_matches"] and res["n_windows"] == N_WINDOWS
    assert res["throughput"]["path"] == "infer" and res["throughput"]["realtime_x"] > 1
    for head in ("level", "location"):
        h = res["heads"][head]
        rows = {r["row"]: r for r in h["rows"]}
        assert list(rows) == ["device vs truth", "host int8 vs truth", "device vs host int8 (cross)",
                              "host float vs truth"]
        assert all(r["n"] == N_WINDOWS for r in rows.values())
        assert rows["device vs host int8 (cross)"]["agree"] == 1.0 and h["logits_identical"] == 1.0
        assert rows["device vs truth"]["agree"] == rows["host int8 vs truth"]["agree"]
        assert rows["host float vs truth"]["agree"] > 0.4  # trained, if briefly (chance: 0.25 / 0.5)
        assert h["emitted"] + h["uncertain"] == N_WINDOWS
        assert np.sum(h["confusion"]["device"]) == N_WINDOWS
    assert res["per_group"]["by"] == "subject" and [g["name"] for g in res["per_group"]["rows"]] == ["S05"]
    lat = res["latency_ms"]
    assert 0 < lat["device"]["median"] < lat["round_trip"]["median"]  # the host's clock includes the link
    for name in ("report.md", "report.html", "verify.json", "confusion.png", "latency.png"):
        assert (tmp_path / name).stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    assert "| level | device vs host int8 (cross) | 100.0 % | 48 |" in md and "## per subject" in md


def test_a_different_model_on_the_helmet_flips_the_exit_status(helmet512, folder, tiny_bundle, tmp_path, capsys):
    """Another model flashed: a warning, then exit 1 with the agreement in one line; the gate
    at 0 lets it pass, so the agreement is what decides."""
    _flash(helmet512, tiny_bundle["bundle"])
    try:
        assert _verify(helmet512, folder, tmp_path) == 1
        err = capsys.readouterr().err
        assert "warning: the helmet runs model" in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("painhelm: device vs host int8 agreement ") and last.endswith(
            " % < --min-agreement 99 %"), last
        res = json.loads((tmp_path / "verify.json").read_text())
        assert not res["passed"] and not res["model_matches"] and res["min_cross"] < 0.99
        assert all(h["logits_identical"] < 0.5 for h in res["heads"].values())
        assert _verify(helmet512, folder, tmp_path, "--min-agreement", "0") == 0
    finally:
        _flash(helmet512, folder / "bundle")


def test_samples_path_on_a_256k_helmet_restores_its_settings(folder, tmp_path_factory, tmp_path, capsys):
    """With a 256 KB heap the helmet cannot take a whole INFER window: verify streams the
    windows as MSG_SAMPLES (hop set to the window length), gets the same bit-exact logits,
    and leaves the helmet acquiring with its own hop, as it found it."""
    from painhelm.host_tools.connect import open_helmet
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    with VirtualHelmet(tmp_path_factory.mktemp("fs256"), heapsize="256K") as vh:
        _flash(vh.port, folder / "bundle", mpy=True)
        with open_helmet(vh.port) as h:
            assert h.info["max_payload"] < 8 + 4 * 16 * h.info["n_times"]  # no room for an INFER window
            h.link.command(wire.CMD_CONFIG, {"hop": 64})
            h.link.command(wire.CMD_START)
        assert _verify(vh.port, folder, tmp_path) == 0
        res = json.loads((tmp_path / "verify.json").read_text())
        assert res["throughput"]["path"] == "samples"
        assert all(h["logits_identical"] == 1.0 for h in res["heads"].values())
        assert "was acquiring" in capsys.readouterr().out
        with open_helmet(vh.port) as h:
            assert h.info["state"] == wire.STATE_STREAMING and h.info["hop"] == 64


def test_user_mistakes_are_one_line(helmet512, folder, tmp_path_factory, tmp_path, capsys):
    """No such port, a port in use, bad options, a board without painhelm firmware, a helmet
    without a bundle: one line each, exit 1, before anything is streamed."""
    from painhelm.host_tools.connect import open_port
    from painhelm.host_tools.virtual_helmet import VirtualHelmet

    assert _verify("/dev/ttyNOSUCH9", folder, tmp_path) == 1
    assert "no such port" in _one_line_error(capsys)
    for bad in ("1.5", "-0.1"):
        assert _verify(helmet512, folder, tmp_path, "--min-agreement", bad) == 1
        assert "--min-agreement must be between 0 and 1" in _one_line_error(capsys)
    assert _verify(helmet512, tmp_path / "nothing", tmp_path) == 1
    assert "no such folder" in _one_line_error(capsys)
    assert _verify(helmet512, folder.parent / "model", tmp_path) == 1
    assert "has no helmet bundle" in _one_line_error(capsys)
    held = open_port(helmet512)
    try:
        assert _verify(helmet512, folder, tmp_path) == 1
        assert "in use by another program" in _one_line_error(capsys)
    finally:
        held.close()
    assert _verify(helmet512, folder, tmp_path, "--test-subject", "S99") == 1
    assert "unknown subject(s) ['S99']" in _one_line_error(capsys)

    with VirtualHelmet(tmp_path_factory.mktemp("bare"), heapsize="512K") as vh:
        assert _verify(vh.port, folder, tmp_path, "--timeout", "2") == 1
        assert "is not a painhelm helmet: a MicroPython REPL answered" in _one_line_error(capsys)
        _flash(vh.port, None)  # firmware, but no bundle
        assert _verify(vh.port, folder, tmp_path) == 1
        line = _one_line_error(capsys)
        assert "the helmet has no usable bundle (no bundle on the device" in line and "painhelm flash" in line


def test_data_that_do_not_fit_the_bundle_are_named(helmet512):
    """check_fit / check_model on the helmet's own description: other channels, rate, window
    length or classes are each named in one sentence."""
    from painhelm.host_tools.connect import open_helmet
    from painhelm.host_tools.verify import VerifyError, check_fit, check_model

    with open_helmet(helmet512) as h:
        info = h.info
    ch, sfreq, n_times = info["ch_names"], info["sfreq"], info["n_times"]
    check_fit(info, ch, sfreq, n_times)  # the folder's own data fit
    with pytest.raises(VerifyError, match=r"channel 1 is 'O2', on the helmet 'Fp1'"):
        check_fit(info, ch[::-1], sfreq, n_times)
    with pytest.raises(VerifyError, match=r"15 channels, the helmet's bundle 16"):
        check_fit(info, ch[:-1], sfreq, n_times)
    with pytest.raises(VerifyError, match=r"sampled at 256 Hz, the bundle expects 128 Hz"):
        check_fit(info, ch, 256.0, n_times)
    with pytest.raises(VerifyError, match=r"windows of 128 samples, the bundle takes 256"):
        check_fit(info, ch, sfreq, 128)
    names = {"level": info["level_names"], "location": info["location_names"]}
    assert check_model(info, names) == []
    with pytest.raises(VerifyError, match=r"location classes \['left_hand', 'right_hand'\], the folder's \['feet'\]"):
        check_model(info, {**names, "location": ["feet"]})
