"""The decision stage: int8 logits of each window -> a reported class, or "uncertain".

Per window, in this order:

1. Gates on the window itself. ``quality_ok`` False (``quality.Quality``: too many bad
   channels) sets ``REASON_QUALITY``; an out-of-distribution score ``ood`` above the
   bundle's threshold (or not a number) sets ``REASON_OOD``. The score is ``ood_score`` of
   the window's log band powers with the bundle's OOD statistics, ``Decider.ood_mean`` /
   ``ood_inv_std`` (not the model's input normalisation): ``Decider.ood_of(logbp)``. Either one makes both heads
   ``wire.UNCERTAIN`` with confidence 0, and the window does **not** enter the smoother: a
   corrupted window must not pull the estimate. After ``reset_after`` gated windows in a
   row the smoother forgets its state (the wearer's pain may have changed meanwhile), and
   the next good window starts it afresh.
2. Per head: softmax of the int8 logits, in integers (below); exponential moving average
   ``s += alpha * (p - s)`` of the probabilities over windows (``alpha`` 1 = no smoothing);
   hysteresis on the reported class: it changes to the smoothed argmax only when that
   class leads the reported one by ``margin``, or has been the argmax for ``hold``
   windows in a row.
3. Per head: when the smoothed probability of the reported class is below that head's
   ``min_confidence``, the head says ``wire.UNCERTAIN`` and ``REASON_LOW_CONFIDENCE`` is
   set; its confidence still shows that probability.

``update`` returns ``reasons`` (0: both heads certain). A head with no classes is always
``wire.NO_HEAD`` with confidence 0 and never gates.

Determinism. The host reproduces the device's reports by running this module on its own
logits, so everything after the logits is integer arithmetic: probabilities are Q15
(32768 = 1), the smoothing factor Q8, and softmax reads ``exp(-d * scale)`` (``d`` the
int8 distance to the largest logit, 0..255) from a Q14 table that ``exp_table`` builds with
integer arithmetic only. A board with single-precision floats therefore decides exactly as
CPython does. Thresholds given as decimals with at most 3 places (as the bundle writes
them) convert to the same Q15 integers in single and double precision.

Settings: ``preproc["decision"]`` (``docs/decisions.md``); ``None`` or a missing section
means no gates and no smoothing: each window reports its own argmax, as before the
decision stage existed.
"""

from array import array

try:  # imported as painhelm.firmware.decide on a host
    from . import wire
except ImportError:  # flat on the helmet's filesystem
    import wire

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

REASON_QUALITY = const(1)
REASON_OOD = const(2)
REASON_LOW_CONFIDENCE = const(4)

REASON_NAMES = ((REASON_QUALITY, "quality"), (REASON_OOD, "ood"), (REASON_LOW_CONFIDENCE, "low_confidence"))

ONE = const(32768)  # probability 1.0 in Q15
_Q = const(40)  # fixed-point bits of the table's exp
_LN2_Q = 762123384786  # round(ln 2 * 2**40)
_INF = float("inf")
OOD_NONFINITE = 1e9  # ood_score of a window with a non-finite band power (finite: it goes on the wire)

# no gates, no smoothing: what a bundle without a "decision" section gets
SMOOTHING_OFF = {"alpha": 1.0, "margin": 0.0, "hold": 0, "reset_after": 0}


def reason_names(reasons):
    """Names of the set bits of ``reasons``, e.g. ['quality', 'ood']."""
    return [name for bit, name in REASON_NAMES if reasons & bit]


def q15(p):
    """A probability 0..1 as a Q15 integer (rounded)."""
    return int(float(p) * ONE + 0.5)


def exp_table(scale, out):
    """Fill ``out`` (array("H") of 256) with ``round(16384 * exp(-d * scale))``, d = 0..255.

    Integer arithmetic only (big integers, once per bundle), so every port builds the same
    table: ``scale`` is split exactly into ``M * 2**(E - 24)`` (a float32 value has a 24-bit
    mantissa), ``x = d * scale`` goes to Q40, ``exp(-x) = 2**-k * exp(-r)`` with
    ``r = x - k ln 2`` in [0, ln 2), and ``exp(-r)`` is its Taylor series in Q40.
    """
    if not scale > 0.0 or scale == _INF:
        raise ValueError("output scale must be a positive finite number, got %r" % (scale,))
    m, e = _frexp(scale)
    M = int(m * 16777216.0)  # m * 2**24, exact for float32 values
    sh = e + 16  # x in Q40 = d * M * 2**(e - 24 + 40)
    one = 1 << _Q
    for d in range(len(out)):
        X = d * M
        if sh >= 0:
            X <<= sh
        else:
            X = (X + (1 << (-sh - 1))) >> -sh
        k = X // _LN2_Q
        r = X - k * _LN2_Q
        s = one
        term = one
        i = 1
        while term:
            term = (term * r >> _Q) // i
            if i & 1:
                s -= term
            else:
                s += term
            i += 1
        drop = _Q - 14 + k
        out[d] = (s + (1 << (drop - 1))) >> drop if drop < 120 else 0
    return out


def _frexp(x):
    """``math.frexp`` (some ports lack it): m in [0.5, 1), x = m * 2**e, exact."""
    e = 0
    while x >= 1.0:
        x *= 0.5
        e += 1
    while x < 0.5:
        x *= 2.0
        e -= 1
    return x, e


def softmax_q15(q, n, table, out):
    """Q15 softmax of int8 logits ``q[:n]`` into ``out``; return the argmax (first of ties).

    ``table`` is ``exp_table(scale, ...)`` of the logits' output scale; the zero point
    cancels (only distances to the largest logit matter).
    """
    best = 0
    top = q[0]
    for i in range(1, n):
        if q[i] > top:
            top = q[i]
            best = i
    tot = 0
    for i in range(n):
        v = table[top - q[i]]
        out[i] = v
        tot += v
    half = tot >> 1
    for i in range(n):
        out[i] = ((out[i] << 15) + half) // tot
    return best


def ood_score(logbp, mean, inv_std, n):
    """Mean squared z-score of a window's log band powers.

    Parameters
    ----------
    logbp : array('f'), length n_frames * n_bands * n_ch
        ``dsp.BandPower.compute`` output (frame, band, channel).
    mean, inv_std : array('f'), length n = n_bands * n_ch
        Training mean and 1 / standard deviation per (band, channel); the bundle's
        ``decision["ood"]`` (``Decider.ood_mean``, ``Decider.ood_inv_std``).
    n : int
        Length of ``mean``; value ``i`` of ``logbp`` is normalised with ``mean[i % n]``.

    Returns
    -------
    score : float
        About 1 for a training-like window; ``OOD_NONFINITE`` when a band power is not finite.
    """
    acc = 0.0
    j = 0
    m = len(logbp)
    for i in range(m):
        z = (logbp[i] - mean[j]) * inv_std[j]
        acc += z * z
        j += 1
        if j == n:
            j = 0
    s = acc / m
    if s - s != 0.0:
        return OOD_NONFINITE
    return s


class _Head:
    """Smoothing and hysteresis of one output head (``n`` classes, 0 = no head)."""

    def __init__(self, n, min_conf_q):
        self.n = n
        self.min_conf_q = min_conf_q
        k = n if n > 0 else 1
        self.p = array("i", [0] * k)
        self.s = array("i", [0] * k)
        self.table = array("H", [0] * 256)  # Q14 values <= 16384
        self.scale = 0.0
        self.reset()

    def reset(self):
        self.started = False
        self.reported = -1
        self.cand = -1
        self.count = 0
        for i in range(len(self.s)):
            self.s[i] = 0

    def step(self, q, scale, alpha_q, margin_q, hold):
        """Take one window's logits; return the reported class."""
        if scale != self.scale:  # the model's output scale: built once per bundle
            exp_table(scale, self.table)
            self.scale = scale
        n = self.n
        p = self.p
        s = self.s
        softmax_q15(q, n, self.table, p)
        if not self.started:
            for i in range(n):
                s[i] = p[i]
            self.started = True
        else:
            for i in range(n):
                s[i] += ((p[i] - s[i]) * alpha_q + 128) >> 8
        best = 0
        for i in range(1, n):
            if s[i] > s[best]:
                best = i
        rep = self.reported
        if rep < 0 or best == rep:
            self.reported = best
            self.cand = -1
            self.count = 0
        elif s[best] - s[rep] >= margin_q:
            self.reported = best
            self.cand = -1
            self.count = 0
        else:
            if best == self.cand:
                self.count += 1
            else:
                self.cand = best
                self.count = 1
            if hold > 0 and self.count >= hold:
                self.reported = best
                self.cand = -1
                self.count = 0
        return self.reported


class Decider:
    """Turns each window's int8 logits and gate inputs into the reported decision.

    Parameters
    ----------
    n_levels, n_locations : int
        Classes of each head (0: the bundle has no such head).
    cfg : dict | None
        ``preproc["decision"]``; None (or {}) means no gates and no smoothing.

    After ``update``: ``level``, ``location`` (class index, ``wire.UNCERTAIN`` or
    ``wire.NO_HEAD``), ``level_conf``, ``location_conf`` (0..255), ``reasons``, ``ood``;
    ``level_p``, ``location_p`` hold the smoothed probability of the reported (or withheld)
    class in Q15, the number the confidence gate compares (0 on a gated window).
    ``ood_mean`` / ``ood_inv_std`` (array('f') of n_bands * n_ch, or None) are the
    statistics ``ood_score`` must be called with; ``ood_threshold`` is None when the bundle
    has no OOD gate.
    """

    def __init__(self, n_levels, n_locations, cfg=None):
        cfg = cfg or {}
        conf = cfg.get("min_confidence") or {}
        sm = dict(SMOOTHING_OFF)
        sm.update(cfg.get("smoothing") or {})
        alpha = float(sm["alpha"])
        if not 0.0 < alpha <= 1.0:
            raise ValueError("decision smoothing alpha must be in (0, 1], got %r" % (alpha,))
        self.alpha_q = max(1, min(256, int(alpha * 256 + 0.5)))
        self.margin_q = q15(sm["margin"])
        self.hold = int(sm["hold"])
        self.reset_after = int(sm["reset_after"])
        # a "quality" section (even {}: Quality's defaults) turns the quality gate on
        self.gate_quality = cfg.get("quality") is not None
        ood = cfg.get("ood") or {}
        thr = ood.get("threshold")
        self.ood_threshold = None if thr is None else float(thr)
        self.ood_mean = self.ood_inv_std = None
        if "mean" in ood and "std" in ood:
            self.ood_mean = array("f", ood["mean"])
            self.ood_inv_std = array("f", [1.0 / v for v in ood["std"]])
        elif self.ood_threshold is not None:
            raise ValueError("decision ood has a threshold but no mean/std")
        self._level = _Head(n_levels, q15(conf.get("level") or 0.0))
        self._location = _Head(n_locations, q15(conf.get("location") or 0.0))
        self.reset()

    def ood_of(self, logbp):
        """``ood_score`` of ``logbp`` with the bundle's OOD statistics; 0.0 without them."""
        if self.ood_mean is None:
            return 0.0
        return ood_score(logbp, self.ood_mean, self.ood_inv_std, len(self.ood_mean))

    def reset(self):
        """Forget every window seen (a new session)."""
        self._level.reset()
        self._location.reset()
        self.gap = 0
        self.ood = 0.0
        self._no_decision(0)

    def _no_decision(self, reasons):
        self.level = wire.UNCERTAIN if self._level.n else wire.NO_HEAD
        self.location = wire.UNCERTAIN if self._location.n else wire.NO_HEAD
        self.level_conf = 0
        self.location_conf = 0
        self.level_p = 0
        self.location_p = 0
        self.reasons = reasons
        return reasons

    def withhold(self, reasons):
        """Report this window as uncertain for ``reasons`` without looking at its logits
        (a gated window, or one the model cannot even be run on); returns ``reasons``."""
        self.gap += 1
        if self.reset_after and self.gap >= self.reset_after:
            self._level.reset()
            self._location.reset()
        return self._no_decision(reasons)

    def update(self, level_q, level_scale, level_zp, location_q, location_scale, location_zp,
               quality_ok, ood):
        """Decide one window; return ``reasons`` (0: certain) and set the attributes.

        ``level_q`` / ``location_q`` are the int8 logits with their output ``scale`` and
        zero point (``zp`` cancels in the softmax; it is taken for symmetry with the
        model's outputs). ``quality_ok``: ``Quality.ok``. ``ood``: ``ood_score`` of the
        window (None: not computed, no OOD gate on this window).
        """
        reasons = 0
        if self.gate_quality and not quality_ok:
            reasons |= REASON_QUALITY
        self.ood = ood
        if self.ood_threshold is not None and ood is not None and not ood <= self.ood_threshold:
            reasons |= REASON_OOD
        if reasons:
            return self.withhold(reasons)
        self.gap = 0
        if self._level.n:
            self.level, self.level_p = self._head(self._level, level_q, level_scale)
            self.level_conf = (self.level_p * 255 + 16384) >> 15
        if self._location.n:
            self.location, self.location_p = self._head(self._location, location_q, location_scale)
            self.location_conf = (self.location_p * 255 + 16384) >> 15
        if self.level == wire.UNCERTAIN or self.location == wire.UNCERTAIN:
            reasons |= REASON_LOW_CONFIDENCE
        self.reasons = reasons
        return reasons

    def _head(self, h, q, scale):
        """One head's smoothed step: ``(class or UNCERTAIN, smoothed probability in Q15)``."""
        c = h.step(q, scale, self.alpha_q, self.margin_q, self.hold)
        sc = h.s[c]
        return (wire.UNCERTAIN if sc < h.min_conf_q else c), sc
