"""The decision stage: integer softmax, smoothing and hysteresis, the gates and their reasons,
the OOD score, the host calibration and its place in the bundle; MicroPython equals CPython and
keeps its heap flat."""

import json
import math
import subprocess
import sys
from array import array

import numpy as np
import pytest

from painhelm.compress import decisions as D
from painhelm.firmware import decide, quality, wire
from painhelm.firmware.decide import REASON_LOW_CONFIDENCE, REASON_OOD, REASON_QUALITY, Decider

from .mpy import FIRMWARE, run_micropython

SCALE = 0.1  # output scale of the int8 logits in these tests
SMOOTH = {"alpha": 0.5, "margin": 0.2, "hold": 3, "reset_after": 3}


def _q(*v):
    return array("b", v)


def _feed(d, level_q, location_q=(0, 0), ok=True, ood=0.0):
    return d.update(_q(*level_q), SCALE, 0, _q(*location_q), SCALE, 0, ok, ood)


STRONG = {0: (60, 0, 0, 0), 1: (0, 60, 0, 0), 2: (0, 0, 60, 0)}  # p(top) = 0.9926 at scale 0.1


def test_exp_table_equals_float_exp():
    """The integer-built table equals round(16384 exp(-d scale)) for float32 scales of any size."""
    for s in (1e-5, 0.0123, 0.0523, 0.1, 0.25, 1.0, 3.7, 40.0):
        s = float(np.float32(s))
        t = decide.exp_table(s, array("H", [0] * 256))
        assert list(t) == [round(16384 * math.exp(-d * s)) for d in range(256)], s
    with pytest.raises(ValueError, match="output scale must be a positive finite number, got 0.0"):
        decide.exp_table(0.0, array("H", [0] * 256))


def test_softmax_q15():
    """Q15 probabilities sum to 1 within rounding, follow exp(scale * logit), argmax takes the first tie."""
    t = decide.exp_table(SCALE, array("H", [0] * 256))
    out = array("i", [0] * 4)
    assert decide.softmax_q15(_q(10, -20, 10, 3), 4, t, out) == 0
    p = np.exp(SCALE * np.array([10, -20, 10, 3]))
    p /= p.sum()
    assert np.allclose(np.array(out) / decide.ONE, p, atol=2e-4) and abs(sum(out) - decide.ONE) <= 2
    assert decide.softmax_q15(_q(-128, 127), 2, t, out) == 1 and out[1] == decide.ONE


def test_no_decision_section_means_argmax_per_window():
    """Without a decision section: no smoothing, no gates (quality and OOD ignored), the
    confidence is the window's own softmax probability."""
    d = Decider(4, 2, None)
    assert d.gate_quality is False and d.ood_threshold is None and d.ood_mean is None and d.ood_of([1.0]) == 0.0
    assert _feed(d, STRONG[2], (5, 0), ok=False, ood=1e9) == 0 and (d.level, d.location) == (2, 0)
    assert _feed(d, STRONG[1], (0, 30), ok=False) == 0 and (d.level, d.location) == (1, 1)
    p = np.exp(SCALE * np.array([0, 30]))
    assert d.location_conf == round(255 * p[1] / p.sum()) and d.level_conf == round(255 * 0.99261)
    assert Decider(4, 2, {}).gate_quality is False


def test_smoothing_and_hysteresis_margin():
    """After a change of class the report follows once the new class leads by the margin."""
    d = Decider(4, 2, {"smoothing": dict(SMOOTH, hold=0)})
    for _ in range(5):
        _feed(d, STRONG[0])
    assert d.level == 0 and d.level_conf == 253
    _feed(d, STRONG[1])  # smoothed: 0.50 vs 0.50 -> still 0
    assert d.level == 0
    _feed(d, STRONG[1])  # 0.25 vs 0.74: leads by more than 0.2
    assert d.level == 1 and 185 < d.level_conf < 192


def test_hysteresis_hold():
    """With a margin that is never reached, the report changes after `hold` windows as argmax."""
    d = Decider(4, 2, {"smoothing": dict(SMOOTH, margin=1.0, hold=3)})
    for _ in range(3):
        _feed(d, STRONG[0])
    levels = []
    for _ in range(5):
        _feed(d, STRONG[2])
        levels.append(d.level)
    # window 1: tie (0 stays argmax); windows 2, 3, 4: class 2 is argmax -> reported at the 3rd
    assert levels == [0, 0, 0, 2, 2]
    # a one-window blip does not change the report
    _feed(d, STRONG[1])
    assert d.level == 2


def test_gated_window_leaves_the_smoother_untouched():
    """A quality- or OOD-gated window reports UNCERTAIN with its reasons and confidence 0, and
    the next clean window continues as if it had not been there."""
    cfg = {"quality": {}, "ood": {"mean": [0.0], "std": [1.0], "threshold": 2.0},
           "smoothing": dict(SMOOTH, reset_after=5)}
    a, b = Decider(4, 2, cfg), Decider(4, 2, cfg)
    for d in (a, b):
        _feed(d, STRONG[0])
        _feed(d, STRONG[1])
    assert _feed(a, STRONG[2], ok=False) == REASON_QUALITY
    assert (a.level, a.location, a.level_conf, a.location_conf) == (wire.UNCERTAIN, wire.UNCERTAIN, 0, 0)
    assert _feed(a, STRONG[2], ood=5.0) == REASON_OOD and a.ood == 5.0
    assert _feed(a, STRONG[2], ok=False, ood=float("nan")) == REASON_QUALITY | REASON_OOD
    assert decide.reason_names(a.reasons) == ["quality", "ood"]
    _feed(a, STRONG[1])
    _feed(b, STRONG[1])
    assert (a.level, a.level_conf, a.location_conf) == (b.level, b.level_conf, b.location_conf)
    assert list(a._level.s) == list(b._level.s)


def test_reset_after_a_long_gap():
    """After reset_after gated windows in a row the smoother starts afresh from the next window."""
    d = Decider(4, 2, {"quality": {}, "smoothing": SMOOTH})
    for _ in range(4):
        _feed(d, STRONG[0])
    for _ in range(2):
        _feed(d, STRONG[0], ok=False)
    _feed(d, STRONG[1])  # gap of 2 < 3: smoothed with the old state, still class 0
    assert d.level == 0
    for _ in range(3):
        _feed(d, STRONG[0], ok=False)
    _feed(d, STRONG[1])  # gap of 3: fresh start, the window alone decides
    assert d.level == 1 and d.level_conf == 253


def test_low_confidence_per_head():
    """A head whose smoothed top probability is below its min_confidence says UNCERTAIN alone,
    with its confidence still shown; the other head is reported."""
    d = Decider(4, 2, {"min_confidence": {"level": 0.6, "location": 0.55}})
    assert _feed(d, (10, 8, 0, 0), (40, 0)) == REASON_LOW_CONFIDENCE
    assert d.level == wire.UNCERTAIN and 0 < d.level_conf < 0.6 * 255 and d.location == 0
    assert _feed(d, (40, 8, 0, 0), (40, 0)) == 0 and d.level == 0


def test_heads_without_classes():
    """A head with no classes is NO_HEAD on every window, gated or not, and never gates."""
    d = Decider(0, 2, {"quality": {}, "min_confidence": {"level": 0.99, "location": 0.0}})
    assert _feed(d, (0,), (0, 40)) == 0 and d.level == wire.NO_HEAD and d.level_conf == 0 and d.location == 1
    assert _feed(d, (0,), (0, 40), ok=False) == REASON_QUALITY
    assert d.level == wire.NO_HEAD and d.location == wire.UNCERTAIN
    d = Decider(3, 0, None)
    _feed(d, (0, 9, 1), (0,))
    assert (d.level, d.location) == (1, wire.NO_HEAD)


def test_bad_settings_are_refused():
    """Settings the helmet cannot use are refused with the name and the value."""
    with pytest.raises(ValueError, match="smoothing alpha must be in \\(0, 1\\], got 0.0"):
        Decider(4, 2, {"smoothing": {"alpha": 0.0}})
    with pytest.raises(ValueError, match="ood has a threshold but no mean/std"):
        Decider(4, 2, {"ood": {"threshold": 1.0}})


def test_ood_score_in_and_out_of_distribution():
    """Band powers drawn from the training distribution score about 1, shifted ones much more,
    a non-finite band power gives OOD_NONFINITE; numpy's batch version agrees."""
    rng = np.random.default_rng(0)
    n_frames, n_bands, n_ch = 4, 3, 8
    mean = rng.normal(1.0, 0.5, (n_bands, n_ch)).astype(np.float32)
    std = rng.uniform(0.1, 0.3, (n_bands, n_ch)).astype(np.float32)
    d = Decider(4, 2, {"ood": {"mean": mean.ravel().tolist(), "std": std.ravel().tolist(), "threshold": 2.0}})
    inside = mean + std * rng.standard_normal((200, n_frames, n_bands, n_ch))
    scores = [d.ood_of(array("f", w.astype(np.float32).ravel())) for w in inside]
    assert 0.85 < np.mean(scores) < 1.15 and np.quantile(scores, 0.99) < 2.0
    shifted = [d.ood_of(array("f", (w + 3 * std).astype(np.float32).ravel())) for w in inside[:20]]
    assert min(shifted) > 5.0
    assert np.allclose(D.ood_scores(inside.astype(np.float32), mean, std), scores, rtol=1e-6)
    bad = inside[0].astype(np.float32).ravel()
    bad[5] = np.nan
    assert d.ood_of(array("f", bad)) == decide.OOD_NONFINITE
    assert _feed(d, STRONG[0], ood=d.ood_of(array("f", bad))) == REASON_OOD


# ---------------------------------------------------------------- host calibration


@pytest.fixture(scope="module")
def small_trials():
    """3 synthetic subjects, 2 windows per class: quick to calibrate on."""
    from painhelm.train.synthetic import make_synthetic

    return make_synthetic(n_subjects=3, windows_per_class=2, seed=4)


def test_tail_limit_and_session_order():
    """The tail rule lies factor times as far from the median as the quantile (on the log);
    session_order keeps each label's windows together, one session per group."""
    v = np.exp(np.random.default_rng(0).normal(0.0, 1.0, 20000))
    assert D._tail_limit(v, 0.95, 3.0) == pytest.approx(math.exp(3 * 1.645), rel=0.05)
    labels = np.array([1, 2, 1, 2, 3, 3, 1, 1])
    groups = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    order, sessions = D.session_order(labels, groups, seed=1)
    assert sorted(order.tolist()) == list(range(8)) and sessions.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    played = labels[order].tolist()
    assert sum(played[i] != played[i + 1] for i in range(7)) == 3  # 2 blocks in a, 2 in b


def test_calibrate_makes_a_section_the_firmware_takes(small_trials):
    """calibrate() gives quality limits, OOD statistics and threshold, confidence limits and
    smoothing that Quality and Decider accept; the record says how; training windows pass."""
    from painhelm.train.features import Preprocessing

    tr = small_trials
    pre = Preprocessing.for_trials(tr, n_frames=4, image_size=16)
    rng = np.random.default_rng(0)
    n_val = 16
    logits = {"level": (rng.integers(-60, 60, (n_val, 4)).astype(np.int8), 0.08),
              "location": (rng.integers(-60, 60, (n_val, 2)).astype(np.int8), 0.05)}
    dec, rec = D.calibrate(pre, tr, dataset="physionet-mi", val_logits=logits,
                           val_labels=np.repeat(np.arange(4), 4), val_groups=np.zeros(n_val), val_source="test")
    assert set(dec) == {"version", "quality", "ood", "min_confidence", "smoothing"}
    q = dec["quality"]
    assert q["line_freq"] == 60.0 and len(q["artifact_ptp_uv"]) == len(tr.ch_names) == len(q["artifact_jump_uv"])
    assert 0 < q["flat_uv"] < min(q["artifact_ptp_uv"]) and q["stuck_samples"] >= 3
    assert len(dec["ood"]["mean"]) == len(pre.bands) * len(tr.ch_names) and dec["ood"]["threshold"] > 1
    assert 0 < dec["min_confidence"]["level"] < 1 and dec["smoothing"] == D.SMOOTHING
    assert rec["quality"]["training_windows_withheld"] <= 0.05 and "leave-one-out over 3" in rec["ood"]["scores_from"]
    assert rec["min_confidence"]["level"]["withheld"] <= 0.1
    json.dumps(dec), json.dumps(rec)  # both go into JSON files
    Quality = quality.Quality(len(tr.ch_names), tr.data.shape[2], tr.sfreq, q)
    d = Decider(4, 2, dec)
    ok = 0
    for w in tr.data:
        x = array("f")
        x.frombytes(np.ascontiguousarray(w, "<f4").tobytes())
        Quality.check(x)
        ok += Quality.ok
    assert ok >= 0.95 * len(tr.data)
    assert d.gate_quality and d.ood_threshold == dec["ood"]["threshold"]
    # no validation windows: the confidence gate is off; an unknown setting is refused
    dec2, rec2 = D.calibrate(pre, tr, dataset="synthetic-pain")
    assert dec2["min_confidence"] == {"level": 0.0, "location": 0.0} and dec2["quality"]["line_freq"] == 50.0
    assert "confidence gate is off" in rec2["min_confidence"]["windows"]
    with pytest.raises(ValueError, match="ood_quantile must be in \\[0.5, 1.0\\), got 1.5"):
        D.calibrate(pre, tr, settings=D.DecisionSettings(ood_quantile=1.5))


def test_bundle_carries_the_section(tiny_bundle, small_trials, tmp_path):
    """write_bundle puts the section into preproc.json, the helmet's loader reads it back into a
    working Quality and Decider; without one no section is written (no gates)."""
    from painhelm.compress.bundle import write_bundle
    from painhelm.firmware import bundle as fw_bundle

    pre, tb = tiny_bundle["pre"], tiny_bundle
    dec, _ = D.calibrate(pre, tb["test"], dataset="synthetic-pain")
    b = write_bundle(tmp_path / "with", tb["tflite"], pre, ["a", "b", "c", "d"], ["l", "r"],
                     tb["runner"].input_scale, tb["runner"].input_zero_point, decision=dec)
    loaded, *_ = fw_bundle.load(str(b))
    assert loaded["decision"] == json.loads(json.dumps(dec)) and "thresholds" not in loaded
    d = Decider(4, 2, loaded["decision"])
    qc = quality.Quality(len(pre.ch_names), pre.n_times, pre.sfreq, loaded["decision"]["quality"])
    assert d.ood_threshold > 0 and qc.line_freq == 50.0
    b2 = write_bundle(tmp_path / "without", tb["tflite"], pre, ["a", "b", "c", "d"], ["l", "r"],
                      tb["runner"].input_scale, tb["runner"].input_zero_point)
    assert "decision" not in fw_bundle.load(str(b2))[0]


# ---------------------------------------------------------------- MicroPython

_SCRIPT = """
from array import array
import decide, wire
cfg = {'quality': {}, 'ood': {'mean': [0.5, 1.0, 1.5], 'std': [0.2, 0.25, 0.3], 'threshold': 2.5},
       'min_confidence': {'level': 0.55, 'location': 0.6},
       'smoothing': {'alpha': 0.4, 'margin': 0.15, 'hold': 2, 'reset_after': 4}}
d = decide.Decider(4, 2, cfg)
state = [777]
def rnd(k):
    state[0] = (1103515245 * state[0] + 12345) % 2147483648
    return state[0] % k
lq = array('b', [0] * 4)
cq = array('b', [0] * 2)
logbp = array('f', [0.0] * 12)
for w in range(300):
    cls = (w // 17) % 4
    for i in range(4):
        lq[i] = rnd(90) - 45 + (50 if i == cls else 0)
    for i in range(2):
        cq[i] = rnd(70) - 35 + (30 if i == (w // 23) % 2 else 0)
    for i in range(12):
        logbp[i] = 0.5 * (1 + i % 3) + (rnd(1000) - 500) / 1000.0 * (3.0 if w % 29 == 0 else 0.6)
    ood = d.ood_of(logbp)
    r = d.update(lq, 0.0625, -3, cq, 0.0371, 5, rnd(13) != 0, ood)
    print(w, r, d.level, d.location, d.level_conf, d.location_conf, d.level_p, d.location_p, repr(ood)[:12])
    if w == 150:
        d.reset()
"""


def test_micropython_equals_cpython():
    """300 windows of logits, gates and OOD inputs give the same reports on both interpreters."""
    mpy = run_micropython(_SCRIPT).strip().splitlines()
    cpy = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=str(FIRMWARE), capture_output=True, text=True,
                         env={"PYTHONPATH": str(FIRMWARE)}, check=True).stdout.strip().splitlines()
    assert len(mpy) == 300 and [line.split()[:8] for line in mpy] == [line.split()[:8] for line in cpy]
    ood = [(float(a.split()[8]), float(b.split()[8])) for a, b in zip(mpy, cpy)]
    assert all(abs(a - b) <= 1e-9 * max(1.0, b) for a, b in ood)
    reasons = {int(line.split()[1]) for line in cpy}
    assert {0, REASON_QUALITY, REASON_OOD, REASON_LOW_CONFIDENCE} <= reasons  # every path was taken


_HEAP = """
import gc
from array import array
import decide, quality
n_ch, n_times = 4, 64
q = quality.Quality(n_ch, n_times, 128.0, {'flat_uv': 1.0, 'stuck_samples': 4, 'line_ratio': 0.2,
                                           'artifact_ptp_uv': 200.0, 'artifact_hf_uv': 50.0})
d = decide.Decider(4, 2, {'quality': {}, 'ood': {'mean': [1.0] * 12, 'std': [0.5] * 12, 'threshold': 3.0},
                          'min_confidence': {'level': 0.5, 'location': 0.5},
                          'smoothing': {'alpha': 0.5, 'margin': 0.2, 'hold': 3, 'reset_after': 5}})
good = array('f', [(i * 37 % 23) - 11.0 for i in range(n_ch * n_times)])
bad = array('f', good)
for t in range(n_times):
    bad[t] = 0.0
logbp = array('f', [1.0 + (i % 5) * 0.1 for i in range(48)])
lqs = (array('b', [40, 0, -10, 5]), array('b', [0, 42, 3, -7]))
cqs = (array('b', [30, -30]), array('b', [-5, 20]))

def step(i):
    q.check(bad if i % 7 == 0 else good)
    ood = d.ood_of(logbp)
    d.update(lqs[(i // 9) % 2], 0.1, 0, cqs[(i // 13) % 2], 0.08, 0, q.ok, ood)

for i in range(200):
    step(i)
gc.collect()
f0 = gc.mem_free()
for i in range(2000):
    step(i)
gc.collect()
print(f0 - gc.mem_free())
"""


def test_micropython_heap_does_not_grow():
    """2000 windows of quality checks, OOD scores and decisions leave the heap where it was."""
    grown = int(run_micropython(_HEAP, heapsize="256K").strip().splitlines()[-1])
    assert grown <= 0, f"heap grew by {grown} bytes over 2000 windows"
