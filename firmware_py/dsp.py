"""Band powers of EEG frames: the one DSP definition shared by helmet and host.

Pure Python, runs on MicroPython and CPython. The host's vectorised version
(``painhelm.train.dsp``) imports the constants and helpers below and computes the same
numbers; ``tests/test_dsp.py`` holds both to ``scipy.signal.welch``.

Definition (Welch), per channel and frame. A window of ``n_times`` samples is cut into
``n_frames`` frames of ``n_per_frame = n_times // n_frames`` consecutive samples. Each frame
is cut into segments of ``n_per_seg`` samples (default: the whole frame, i.e. one
periodogram); with more than one segment they overlap by ``n_per_seg // 2`` (step
``n_per_seg - n_per_seg // 2``) and trailing samples that fill no segment are dropped.
Each segment has its mean removed and a periodic Hann window ``w`` applied; its one-sided
power spectral density at bin ``k`` (frequency ``k * sfreq / n_per_seg``) is
``c_k |X_k|^2 / (sfreq * sum(w^2))`` with ``c_k = 1`` at DC and, for even ``n_per_seg``, at
Nyquist, else ``c_k = 2`` (exactly as ``scipy.signal.welch(..., window='hann',
detrend='constant', scaling='density')``). The PSDs are averaged over the segments. The
power of band ``[l_freq, h_freq)`` is the sum of the PSD over the bins with
``l_freq <= k * sfreq / n_per_seg < h_freq`` times the bin width ``sfreq / n_per_seg``, and
the output is ``log10(power + LOG_EPS)`` (power in µV² for input in µV). A segment with a
non-finite sample gives NaN for its frame.

Kernels. ``"plain"`` is the pure-Python reference (direct DFT of the windowed segment over
the band bins, one cos/sin table of ``n_per_seg`` values). ``"viper"`` (``dsp_viper``,
MicroPython with the viper emitter) computes the same numbers in fixed point, about
about 40 times faster; ``"auto"`` picks it where it exists. See ``dsp_viper`` for its arithmetic.
"""

import math
import sys
from array import array

# A MicroPython built without the viper emitter cannot compile dsp_viper (SyntaxError);
# CPython has no `micropython` module (ImportError) or, with a shim, no viper (the rest).
_NO_VIPER = (ImportError, SyntaxError, NameError, AttributeError, TypeError)
try:  # imported as painhelm.firmware.dsp on a host
    from . import dsp_viper as _viper
except _NO_VIPER:
    try:  # flat on the helmet's filesystem
        import dsp_viper as _viper
    except _NO_VIPER:
        _viper = None

BANDS = ((4.0, 8.0), (8.0, 13.0), (13.0, 30.0))
BAND_NAMES = ("theta", "alpha", "beta")
BANDS_GAMMA = BANDS + ((30.0, 45.0),)
BAND_NAMES_GAMMA = BAND_NAMES + ("gamma",)
LOG_EPS = 1e-12
KERNELS = ("auto", "plain", "viper")

_NAN = float("nan")

try:
    _ldexp = math.ldexp
except AttributeError:  # a port built without it
    def _ldexp(x, e):
        return x * 2.0 ** e


def hann(n):
    """Periodic Hann window of length n (as scipy.signal.get_window('hann', n))."""
    return [0.5 - 0.5 * math.cos(2.0 * math.pi * i / n) for i in range(n)]


def welch_segments(n_per_frame, n_per_seg=None):
    """Return ``(n_per_seg, n_segs, step)`` of the Welch segments of one frame.

    ``n_per_seg=None`` means one segment spanning the frame. Segments start every
    ``step = n_per_seg - n_per_seg // 2`` samples (50 % overlap).
    """
    if n_per_seg is None:
        return n_per_frame, 1, n_per_frame
    if not 2 <= n_per_seg <= n_per_frame:
        raise ValueError("n_per_seg is %r but must be between 2 and the frame length "
                         "n_times // n_frames = %d" % (n_per_seg, n_per_frame))
    step = n_per_seg - n_per_seg // 2
    return n_per_seg, (n_per_frame - n_per_seg) // step + 1, step


def band_bins(n_per_seg, sfreq, bands=BANDS):
    """Return, per band, the list of FFT bin indices whose frequency is in [l_freq, h_freq).

    Bin ``k`` (0 <= k <= n_per_seg // 2) is at ``k * sfreq / n_per_seg`` Hz. The test is
    written ``l_freq * n_per_seg <= k * sfreq`` so that integer-valued settings compare
    exactly, also on a board whose floats are single precision.
    """
    out = []
    for l_freq, h_freq in bands:
        ks = [k for k in range(n_per_seg // 2 + 1)
              if l_freq * n_per_seg <= k * sfreq < h_freq * n_per_seg]
        if not ks:
            raise ValueError("band %s-%s Hz has no FFT bin: bins are %s Hz apart (sfreq=%s, "
                             "n_per_seg=%d)" % (l_freq, h_freq, sfreq / n_per_seg, sfreq, n_per_seg))
        out.append(ks)
    return out


def onesided_factor(k, n_per_seg):
    """1 at DC and (even n_per_seg) at Nyquist, else 2: the one-sided PSD's fold-over."""
    return 1 if k == 0 or 2 * k == n_per_seg else 2


def _word_bits():
    """Bits in a machine word (the viper int): 64 on x64/aarch64, 32 on most boards."""
    return 64 if sys.maxsize > 0x7FFFFFFF else 32


def _pick_kernel(kernel):
    if kernel not in KERNELS:
        raise ValueError("kernel must be one of %s, got %r" % (", ".join(KERNELS), kernel))
    if kernel == "auto":
        return "viper" if _viper is not None else "plain"
    if kernel == "viper" and _viper is None:
        raise ValueError("kernel 'viper' needs MicroPython with the viper emitter "
                         "(dsp_viper could not be imported); use kernel='plain' or 'auto'")
    return kernel


class BandPower:
    """Log band powers of one window, with every buffer allocated here, once.

    Parameters
    ----------
    n_ch, n_times, n_frames : int
        Window shape; ``n_times`` must be a multiple of ``n_frames``.
    sfreq : float
        Sampling frequency in Hz.
    bands : sequence of (l_freq, h_freq)
        Half-open bands in Hz (``BANDS`` or ``BANDS_GAMMA``).
    n_per_seg : int | None
        Welch segment length; ``None`` = one segment per frame.
    kernel : "auto" | "plain" | "viper"
        ``"auto"`` is "viper" where the viper emitter exists (and the segment is not too
        long for its fixed point), else "plain". The choice is in ``self.kernel``.
    _word_bits_override : int | None
        Testing only: run the viper kernel with the widths of a 32-bit word.

    Only the bins inside the bands are evaluated (direct DFT): for the handful of bins
    between 4 and 45 Hz that is cheaper than a full FFT, and it needs one cos/sin table
    of ``n_per_seg`` values (the index ``k * i mod n_per_seg`` is stepped, not stored).
    """

    def __init__(self, n_ch, n_times, n_frames, sfreq, bands=BANDS, n_per_seg=None,
                 kernel="auto", _word_bits_override=None):
        if n_frames < 1 or n_times % n_frames:
            raise ValueError("n_times (%d) must be a multiple of n_frames (%d)" % (n_times, n_frames))
        self.kernel = _pick_kernel(kernel)
        self.n_ch = n_ch
        self.n_times = n_times
        self.n_frames = n_frames
        self.n_bands = len(bands)
        self.n_per_frame = n_times // n_frames
        nps, n_segs, step = welch_segments(self.n_per_frame, n_per_seg)
        self.n_per_seg = nps
        self.n_segs = n_segs
        self.step = step
        self.bins = band_bins(nps, sfreq, bands)
        ks = sorted(set(k for band in self.bins for k in band))
        self._ks = array("i", ks)
        n_k = len(ks)
        # band b sums unique bins _band_lo[b] <= j < _band_hi[b] (a band's bins are consecutive)
        self._band_lo = array("i", [ks.index(band[0]) for band in self.bins])
        self._band_hi = array("i", [ks.index(band[-1]) + 1 for band in self.bins])
        w = hann(nps)
        # density scaling * bin width / number of segments averaged
        scale = 1.0 / (sfreq * sum(v * v for v in w)) * (sfreq / nps) / n_segs
        self._wt = _farray([onesided_factor(k, nps) * scale for k in ks])
        self._pw = _farray([0.0] * n_k)
        word_bits = _word_bits_override or _word_bits()
        if self.kernel == "viper" and kernel == "auto":
            try:
                _viper.widths(word_bits, nps)
            except ValueError:
                self.kernel = "plain"
        if self.kernel == "plain":
            self._w = _farray(w)
            self._cos = _farray([math.cos(2.0 * math.pi * m / nps) for m in range(nps)])
            self._sin = _farray([math.sin(2.0 * math.pi * m / nps) for m in range(nps)])
            self._v = _farray([0.0] * nps)
        else:
            self._init_viper(ks, word_bits)

    def _init_viper(self, ks, word_bits):
        nps = self.n_per_seg
        bd, bq, bc, split = _viper.widths(word_bits, nps)
        self.word_bits = word_bits
        self._split = word_bits < 64
        # interleaved cos/sin in Q(bc), stored + 2**bc so that every stored word is >= 0:
        # a ptr32 load zero-extends on a 64-bit port, and the bias costs no work in the loop
        one = 1 << bc
        cs = array("i", [0] * (2 * nps))
        for m in range(nps):
            a = 2.0 * math.pi * m / nps
            cs[2 * m] = round(math.cos(a) * one) + one
            cs[2 * m + 1] = round(math.sin(a) * one) + one
        self._cs = cs
        runs = []
        for k in ks:
            if runs and runs[-1] == k - 1:
                runs[-1] = k
            else:
                runs.append(k)
                runs.append(k)
        self._runs = array("i", runs)
        self._q = array("i", [0] * nps)
        self._y = array("i", [0] * (4 * len(ks)))
        self._par = array("i", [bd, bq, bc, len(runs) // 2, 0, split])
        self._two_split = float(1 << split)
        self._exp_off = -2 - bc  # Y = 4 X_w in Q(bc)

    def compute(self, x, out):
        """Fill ``out`` with log band powers of window ``x``; return ``out``.

        Parameters
        ----------
        x : array('f'), length n_ch * n_times
            The window, channel-major (``x[ch * n_times + t]``), in µV. The plain kernel
            also takes any indexable of floats.
        out : array('f'), length n_frames * n_bands * n_ch
            Written as ``out[(frame * n_bands + band) * n_ch + ch]``.
        """
        if len(x) != self.n_ch * self.n_times or len(out) != self.n_frames * self.n_bands * self.n_ch:
            raise ValueError("x has %d values and out %d, expected %d and %d"
                             % (len(x), len(out), self.n_ch * self.n_times,
                                self.n_frames * self.n_bands * self.n_ch))
        seg = self._segment_plain if self.kernel == "plain" else self._segment_viper
        pw = self._pw
        n_k = len(pw)
        for fr in range(self.n_frames):
            for ch in range(self.n_ch):
                for j in range(n_k):
                    pw[j] = 0.0
                off = ch * self.n_times + fr * self.n_per_frame
                ok = True
                for _ in range(self.n_segs):
                    if not seg(x, off):
                        ok = False
                        break
                    off += self.step
                self._bands_out(fr, ch, ok, out)
        return out

    def _bands_out(self, fr, ch, ok, out):
        pw = self._pw
        wt = self._wt
        n_bands = self.n_bands
        for b in range(n_bands):
            acc = 0.0
            for j in range(self._band_lo[b], self._band_hi[b]):
                acc += pw[j] * wt[j]
            out[(fr * n_bands + b) * self.n_ch + ch] = math.log10(acc + LOG_EPS) if ok else _NAN

    def _segment_plain(self, x, off):
        """Add |X_k|^2 of the segment at ``x[off:]`` to ``self._pw``; False if non-finite."""
        n = self.n_per_seg
        v = self._v
        w = self._w
        cos_t = self._cos
        sin_t = self._sin
        ks = self._ks
        pw = self._pw
        mean = 0.0
        for i in range(n):
            mean += x[off + i]
        mean /= n
        if mean - mean != 0.0:  # NaN or inf somewhere in the segment
            return False
        for i in range(n):
            v[i] = (x[off + i] - mean) * w[i]
        for j in range(len(ks)):
            k = ks[j]
            re = 0.0
            im = 0.0
            m = 0  # k * i mod n, stepped
            for i in range(n):
                vi = v[i]
                re += vi * cos_t[m]
                im += vi * sin_t[m]
                m += k
                if m >= n:
                    m -= n
            pw[j] += re * re + im * im
        return True

    def _segment_viper(self, x, off):
        """As ``_segment_plain``, through the fixed-point viper kernel."""
        y = self._y
        pw = self._pw
        p = _viper.prep(x, off, self.n_per_seg, self._q, self._par)
        if p == _viper.NONFINITE:
            return False
        if self._split:
            _viper.dft_split(self._q, self.n_per_seg, self._cs, self._runs, y, self._par)
        else:
            _viper.dft_word(self._q, self.n_per_seg, self._cs, self._runs, y, self._par)
        f = _ldexp(1.0, p + self._exp_off)
        two = self._two_split
        j = 0
        for i in range(len(pw)):
            yr = (y[j] * two + y[j + 1]) * f
            yi = (y[j + 2] * two + y[j + 3]) * f
            pw[i] += yr * yr + yi * yi
            j += 4
        return True


def _farray(values):
    """array('d') where the port has it (unix, CPython), else array('f')."""
    try:
        return array("d", values)
    except ValueError:
        return array("f", values)
