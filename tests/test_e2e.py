"""End to end, in miniature: train -> export -> flash a virtual helmet -> stream -> compare."""

import json

import numpy as np
import pytest

from painhelm.firmware import wire
from painhelm.host_tools.cli import main
from painhelm.host_tools.flash import flash
from painhelm.host_tools.image import device_image
from painhelm.host_tools.link import HelmetLink, LinkError
from painhelm.host_tools.transport import SerialTransport
from painhelm.host_tools.virtual_helmet import VirtualHelmet

pytestmark = pytest.mark.e2e


def test_flashed_helmet_answers_like_host_int8(tiny_bundle, tmp_path):
    """Flashed over the raw REPL, the MicroPython helmet's int8 logits equal LiteRT's."""
    (tmp_path / "fs").mkdir()
    with VirtualHelmet(tmp_path / "fs", heapsize="512K") as helmet:
        t = SerialTransport(helmet.port, wait=5.0)
        try:
            image = device_image(tiny_bundle["bundle"])
            first = flash(t, image, reset=True)
            assert sorted(first["written"]) == sorted("/" + p for p in image)
            link = HelmetLink(t.serial, timeout=60.0)
            info = link.wait_ready(timeout=60.0)
            assert info["protocol"] == wire.PROTOCOL_VERSION and "bundle_error" not in info and info["impl"] == "micropython"
            test = tiny_bundle["test"]
            for i in range(6):
                r = link.infer(test.data[i], tiny_bundle["sfreq"])
                assert r["level_q"] == tiny_bundle["level_q"][i].tolist()
                assert r["location_q"] == tiny_bundle["location_q"][i].tolist()
            # a window of the wrong shape is answered with an error frame, and the link lives on
            with pytest.raises(LinkError, match="bundle expects"):
                link.infer(test.data[0][:8], tiny_bundle["sfreq"])
            assert link.ping()["firmware"]
            # flashing the same image again changes nothing (SHA-256 compared on the device)
            again = flash(t, image, reset=True)
            assert again["written"] == [] and len(again["skipped"]) == len(image)
        finally:
            t.close()
    # the helmet's filesystem holds exactly what was flashed
    assert (tmp_path / "fs" / "model_bundle" / "manifest.json").read_bytes() == image["model_bundle/manifest.json"]


def test_demo_command_in_miniature(tmp_path, capsys):
    """`painhelm demo` runs the whole chain and reports device == host int8 on every window."""
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--seconds", "4", "--subjects", "3", "--windows-per-class", "4",
               "--max-windows", "8"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "device vs int8 host (cross)" in text and str(out) in text
    rep = json.loads((out / "report.json").read_text())
    cross = {h: [r for r in rows if r["row"].startswith("device vs int8")][0] for h, rows in rep["heads"].items()}
    assert all(c["agree"] == 1.0 and c["n"] == 8 for c in cross.values())
    for name in ("model/model.pt", "export/model_int8.tflite", "export/model_int8.onnx", "bundle/manifest.json",
                 "report.md", "report.html", "confusion.png"):
        assert (out / name).exists(), name
