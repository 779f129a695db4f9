"""Signal-quality checks per channel, on the raw window before cleaning.

One pass over each channel's samples gives six numbers, kept per channel in
``Quality.ptp``, ``.absmax``, ``.hf``, ``.jump``, ``.line`` and ``.stuck``:

- ``ptp``: peak-to-peak amplitude, µV;
- ``absmax``: largest ``|x|``, µV (the amplifier's input range is absolute, offset included);
- ``hf``: RMS of the first difference ``x[t] - x[t-1]``, µV. Differencing weighs a
  frequency ``f`` by ``2 sin(pi f / sfreq)``, so the 1/f EEG gives little and muscle
  activity (broadband, above 20 Hz) a lot;
- ``jump``: the largest ``|x[t] - x[t-1]|``, µV: an electrode pop or a step moves the
  signal further in one sample than EEG does;
- ``line``: power at the mains frequency over the channel's total power (variance). The
  mains power is one Hann-windowed DFT coefficient at exactly ``line_freq`` (Goertzel), so
  it needs no FFT and the line need not sit on a bin; a sinusoid of amplitude A gives
  ``|X| = A n / 4`` there, so its power ``A^2 / 2`` is ``8 |X|^2 / n^2``;
- ``stuck``: the longest run of identical consecutive samples (a clipped amplifier, or a
  link that repeats its last value).

A channel's flags (``QF_*``), in this order:

- ``QF_NONFINITE``: a NaN or inf sample (no other check is made);
- ``QF_FLAT``: ``ptp < flat_uv`` (no other check is made: a constant has no spectrum);
- ``QF_SATURATED``: ``absmax >= saturation_uv`` or ``stuck >= stuck_samples``;
- ``QF_LINE_NOISE``: ``line > line_ratio``;
- ``QF_ARTIFACT``: ``ptp > artifact_ptp_uv[ch]``, ``hf > artifact_hf_uv[ch]`` or
  ``jump > artifact_jump_uv[ch]``.

A threshold of 0 turns its check off. The settings come from the bundle
(``preproc["decision"]["quality"]``, calibrated on the training data by
``painhelm.compress.decisions``); without them, :data:`DEFAULTS` hold lenient physical
limits. ``docs/decisions.md`` describes the calibration.

Pure Python for MicroPython and CPython: every buffer is made in ``__init__``; ``check``
allocates nothing but float temporaries (and, above channel 29 on a 32-bit port, the
``bad`` bit mask as a long int). The per-channel loop is compiled with the native emitter
(as ``clean.apply_matrix``): 1.3x faster than bytecode on the unix port, 3.4 ms for 16
channels x 256 samples and 30 ms for 64 x 560 (floats stay boxed, so viper would gain little
without a fixed-point rewrite like ``dsp_viper``).
"""

import math
from array import array

try:
    import micropython
    from micropython import const
except ImportError:  # CPython: on MicroPython the decorator is compile-time syntax, not an attribute
    class micropython:
        @staticmethod
        def native(f):
            return f

    def const(x):
        return x

QF_FLAT = const(1)
QF_SATURATED = const(2)
QF_LINE_NOISE = const(4)
QF_ARTIFACT = const(8)
QF_NONFINITE = const(16)

FLAG_NAMES = ((QF_FLAT, "flat"), (QF_SATURATED, "saturated"), (QF_LINE_NOISE, "line_noise"),
              (QF_ARTIFACT, "artifact"), (QF_NONFINITE, "nonfinite"))

# Used where the bundle has no calibrated settings: lenient limits that only catch a dead,
# clipped or swamped channel. "stuck_samples" None means 50 ms of samples (at least 3).
DEFAULTS = {
    "flat_uv": 0.5,
    "saturation_uv": 0.0,
    "stuck_samples": None,
    "line_freq": 50.0,
    "line_ratio": 0.5,
    "artifact_ptp_uv": 500.0,
    "artifact_hf_uv": 0.0,
    "artifact_jump_uv": 0.0,
    "max_bad_channels": 0,
}


def flag_names(flags):
    """Names of the set bits of ``flags`` (for logs and host reports), e.g. ['flat', 'artifact']."""
    return [name for bit, name in FLAG_NAMES if flags & bit]


def _per_channel(value, n_ch, name):
    """array('f') of n_ch thresholds from a number or a list of n_ch numbers."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_ch:
            raise ValueError("quality %s has %d values, expected one or n_ch = %d" % (name, len(value), n_ch))
        return array("f", [float(v) for v in value])
    return array("f", [float(value or 0.0)] * n_ch)


def line_omega(line_freq, sfreq):
    """Angular frequency (rad/sample) at which the mains appears, folded below Nyquist."""
    f = line_freq % sfreq
    if f > sfreq / 2:
        f = sfreq - f
    return 2.0 * math.pi * f / sfreq


class Quality:
    """Per-channel signal-quality flags of one raw window.

    Parameters
    ----------
    n_ch, n_times : int
        Window shape.
    sfreq : float
        Sampling frequency in Hz.
    cfg : dict | None
        ``preproc["decision"]["quality"]``; missing keys (or None) take :data:`DEFAULTS`.

    After ``check(x)``: ``flags`` (OR over channels), ``ch_flags`` (bytearray, per
    channel), ``bad`` (bit i set: channel i has a flag), ``n_bad``, and ``ok``
    (``n_bad <= max_bad_channels``); the per-channel numbers are in ``ptp``, ``absmax``,
    ``hf``, ``jump``, ``line``, ``stuck``.
    """

    def __init__(self, n_ch, n_times, sfreq, cfg=None):
        if n_ch < 1 or n_times < 2:
            raise ValueError("quality needs n_ch >= 1 and n_times >= 2, got %d and %d" % (n_ch, n_times))
        c = dict(DEFAULTS)
        if cfg:
            for k in cfg:
                if k in c:
                    c[k] = cfg[k]
        self.n_ch = n_ch
        self.n_times = n_times
        self.sfreq = sfreq
        self.flat_uv = float(c["flat_uv"] or 0.0)
        self.saturation_uv = float(c["saturation_uv"] or 0.0)
        stuck = c["stuck_samples"]
        if stuck is None:
            stuck = max(3, int(math.ceil(0.05 * sfreq)))
        self.stuck_samples = int(stuck)
        self.line_freq = float(c["line_freq"] or 0.0)
        self.line_ratio = float(c["line_ratio"] or 0.0)
        self.max_bad_channels = int(c["max_bad_channels"])
        self.artifact_ptp_uv = _per_channel(c["artifact_ptp_uv"], n_ch, "artifact_ptp_uv")
        self.artifact_hf_uv = _per_channel(c["artifact_hf_uv"], n_ch, "artifact_hf_uv")
        self.artifact_jump_uv = _per_channel(c["artifact_jump_uv"], n_ch, "artifact_jump_uv")
        w = self.line_freq and line_omega(self.line_freq, sfreq)
        self._line_on = self.line_ratio > 0.0 and w > 0.0
        self._coef = 2.0 * math.cos(w) if self._line_on else 0.0
        # periodic Hann window (as dsp.hann), float32 like every shared table
        self._win = array("f", [0.5 - 0.5 * math.cos(2.0 * math.pi * i / n_times) for i in range(n_times)])
        self._line_scale = 8.0 / (n_times * n_times)
        self.ptp = array("f", [0.0] * n_ch)
        self.absmax = array("f", [0.0] * n_ch)
        self.hf = array("f", [0.0] * n_ch)
        self.jump = array("f", [0.0] * n_ch)
        self.line = array("f", [0.0] * n_ch)
        self.stuck = array("H", [0] * n_ch)
        self.ch_flags = bytearray(n_ch)
        self.flags = 0
        self.bad = 0
        self.n_bad = 0
        self.ok = True

    def check(self, x):
        """Check window ``x`` (array('f'), channel-major n_ch * n_times, raw µV); return the flags.

        Sets ``flags``, ``ch_flags``, ``bad``, ``n_bad`` and ``ok`` (see the class).
        """
        if len(x) != self.n_ch * self.n_times:
            raise ValueError("window has %d samples, quality expects n_ch * n_times = %d"
                             % (len(x), self.n_ch * self.n_times))
        flags = 0
        bad = 0
        n_bad = 0
        n = self.n_times
        for ch in range(self.n_ch):
            f = self._channel(x, ch, ch * n)
            self.ch_flags[ch] = f
            if f:
                flags |= f
                bad |= 1 << ch
                n_bad += 1
        self.flags = flags
        self.bad = bad
        self.n_bad = n_bad
        self.ok = n_bad <= self.max_bad_channels
        return flags

    @micropython.native
    def _channel(self, x, ch, off):
        """Statistics and flags of one channel whose samples start at ``x[off]``."""
        n = self.n_times
        win = self._win
        coef = self._coef
        line_on = self._line_on
        x0 = x[off]
        lo = x0
        hi = x0
        last = x0
        run = 0
        longest = 0
        s1 = 0.0  # sums of v = x - x0: shifted, so a large offset does not cancel the variance
        s2 = 0.0
        d2 = 0.0
        dmax = 0.0
        dmin = 0.0
        prev = 0.0
        g1 = 0.0  # Goertzel state
        g2 = 0.0
        for t in range(n):
            xt = x[off + t]
            v = xt - x0
            s1 += v
            s2 += v * v
            d = v - prev
            d2 += d * d
            if d > dmax:
                dmax = d
            elif d < dmin:
                dmin = d
            prev = v
            if xt > hi:
                hi = xt
            elif xt < lo:
                lo = xt
            if xt == last:
                run += 1
            else:
                if run > longest:
                    longest = run
                run = 1
                last = xt
            if line_on:
                g0 = v * win[t] + coef * g1 - g2
                g2 = g1
                g1 = g0
        if run > longest:
            longest = run
        if s2 - s2 != 0.0 or d2 - d2 != 0.0:  # a NaN or inf sample reached the sums
            self.ptp[ch] = self.absmax[ch] = self.hf[ch] = self.jump[ch] = self.line[ch] = _NAN
            self.stuck[ch] = 0
            return QF_NONFINITE
        ptp = hi - lo
        absmax = hi if hi > -lo else -lo
        mean = s1 / n
        var = s2 / n - mean * mean
        hf = math.sqrt(d2 / (n - 1))  # d at t = 0 is 0: n - 1 differences
        if -dmin > dmax:
            dmax = -dmin
        line = 0.0
        if line_on and var > 0.0:
            line = (g1 * g1 + g2 * g2 - coef * g1 * g2) * self._line_scale / var
        self.ptp[ch] = ptp
        self.absmax[ch] = absmax
        self.hf[ch] = hf
        self.jump[ch] = dmax
        self.line[ch] = line
        self.stuck[ch] = longest if longest < 65535 else 65535
        if ptp < self.flat_uv:
            return QF_FLAT
        f = 0
        if (self.saturation_uv > 0.0 and absmax >= self.saturation_uv) or \
                (self.stuck_samples > 0 and longest >= self.stuck_samples):
            f |= QF_SATURATED
        if line_on and line > self.line_ratio:
            f |= QF_LINE_NOISE
        lim = self.artifact_ptp_uv[ch]
        if lim > 0.0 and ptp > lim:
            f |= QF_ARTIFACT
        lim = self.artifact_hf_uv[ch]
        if lim > 0.0 and hf > lim:
            f |= QF_ARTIFACT
        lim = self.artifact_jump_uv[ch]
        if lim > 0.0 and dmax > lim:
            f |= QF_ARTIFACT
        return f


_NAN = float("nan")
