"""Bad bundles and settings written straight to the helmet's filesystem (past the host's
pre-flight checks, as a buggy tool or a corrupted transfer would leave them) are refused at
boot with the firmware's reason, and the helmet keeps the bundle it had and keeps reporting."""

from __future__ import annotations

import json

import pytest

from hw_tests.helmets import Rig, bundle_files, flashed_rig, restamp, write_pending
from painhelm.firmware import bundle as fmt
from painhelm.firmware import slots, wire


@pytest.fixture(scope="module")
def rig(board_port, bundle_a, tmp_path_factory, request):
    yield from flashed_rig(board_port, bundle_a, tmp_path_factory.mktemp("bad") / "fs", request)


def _wrong_hash(f):
    m = bytearray(f[fmt.MODEL_FILE])
    m[len(m) // 2] ^= 0xFF  # same size, other bytes: only the SHA-256 can tell
    return dict(f, **{fmt.MODEL_FILE: bytes(m)})


def _wrong_shape(f):
    pre = json.loads(f[fmt.PREPROC_FILE])
    pre["n_frames"] += 1  # the images no longer match the model's input
    return restamp(dict(f, **{fmt.PREPROC_FILE: json.dumps(pre).encode()}), fmt.PREPROC_FILE)


def _truncated(f):
    return restamp(dict(f, **{fmt.MODEL_FILE: f[fmt.MODEL_FILE][: len(f[fmt.MODEL_FILE]) // 2]}), fmt.MODEL_FILE)


def _unknown_version(f):
    man = json.loads(f[fmt.MANIFEST_FILE])
    man["bundle_version"] = 99
    return dict(f, **{fmt.MANIFEST_FILE: json.dumps(man).encode()})


CASES = {  # damage -> words the firmware's reason must contain
    "wrong-hash": (_wrong_hash, "sha-256"),
    "wrong-model-shape": (_wrong_shape, "model input"),
    "truncated-tflite": (_truncated, ""),  # the interpreter's own words; any clear refusal
    "unknown-version": (_unknown_version, "version"),
}


def _still_reporting(rig: Rig, bundle: dict, link) -> None:
    """The kept bundle still turns samples into a report."""
    n = link.info["n_times"]
    link.send_samples(bundle["data"][:, :n], 0, max_samples=wire.SAMPLES_PER_FRAME)
    assert link.next_report(timeout=30.0)["sample_index"] == n
    link.command(2)  # CMD_STOP: idle again for the next case


@pytest.mark.parametrize("case", list(CASES))
def test_bad_bundle_is_refused_and_the_old_one_kept(rig, bundle_a, bundle_b, case, record_figure):
    damage, words = CASES[case]
    write_pending(rig.transport(), damage(bundle_files(bundle_b["bundle"])))
    rig.reset()
    link = rig.link(timeout=60.0)
    info = link.info
    refused = info.get("bundle_refused", "")
    record_figure("reason", refused)
    assert refused and slots.PENDING in refused and words in refused.lower(), info
    assert info["bundle"] == slots.ACTIVE and info["model_sha256"] == bundle_a["sha"], info
    assert "bundle_error" not in info
    announced = [(s, text) for s, code, text in link.device_errors if code == wire.ERR_BUNDLE_REFUSED]
    assert len(announced) == 1 and announced[0][0] == 0, link.device_errors  # the boot's error frame
    assert announced[0][1] and refused.startswith(announced[0][1]), announced  # the reason (up to MAX_TEXT)
    _still_reporting(rig, bundle_a, link)


@pytest.mark.parametrize("text,words", [("{not json", "config.json"), ('{"hop": "x"}', "hop")],
                         ids=["not-json", "bad-value"])
def test_bad_config_is_reported_and_the_defaults_used(rig, bundle_a, text, words, record_figure):
    t = rig.transport()
    t.enter_raw_repl()
    t.fs_writefile("/config.json", text.encode())
    try:
        rig.reset()
        link = rig.link(timeout=20.0)
        info = link.info
        record_figure("reason", info.get("config_error"))
        assert words in (info.get("config_error") or ""), info
        assert info["model_sha256"] == bundle_a["sha"] and "bundle_error" not in info
        _still_reporting(rig, bundle_a, link)
    finally:
        t = rig.transport()
        t.enter_raw_repl()
        t.fs_remove("/config.json", missing_ok=True)
