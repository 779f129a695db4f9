"""Band powers of EEG frames: the reference DSP definition shared by helmet and host.

Pure Python, runs on MicroPython and CPython. The host's vectorised version
(``painhelm.train.dsp``) imports the constants below and computes the same numbers.

Definition, per frame (``n_times // n_frames`` consecutive samples) and channel:
the frame mean is removed, a periodic Hann window applied, and the one-sided power
spectral density ``2 |X_k|^2 / (sfreq * sum(w^2))`` summed over the bins whose frequency
lies in ``[l_freq, h_freq)`` and multiplied by the bin width; the result is
``log10(power + LOG_EPS)`` (power in µV²).
"""

import math
from array import array

BANDS = ((4.0, 8.0), (8.0, 13.0), (13.0, 30.0))
BAND_NAMES = ("theta", "alpha", "beta")
LOG_EPS = 1e-12


def band_bins(n_per_frame, sfreq, bands=BANDS):
    """Return, per band, the list of FFT bin indices whose frequency is in [l_freq, h_freq)."""
    df = sfreq / n_per_frame
    out = []
    for l_freq, h_freq in bands:
        ks = [k for k in range(1, n_per_frame // 2 + 1) if l_freq <= k * df < h_freq]
        if not ks:
            raise ValueError("band %s-%s Hz has no FFT bin at sfreq=%s and %d samples per frame"
                             % (l_freq, h_freq, sfreq, n_per_frame))
        out.append(ks)
    return out


def hann(n):
    """Periodic Hann window of length n (as scipy.signal.get_window('hann', n))."""
    return [0.5 - 0.5 * math.cos(2.0 * math.pi * i / n) for i in range(n)]


class BandPower:
    """Log band powers of one window, computed with preallocated DFT tables.

    Only the bins inside the bands are evaluated (a direct DFT), which is cheaper than a
    full FFT for the handful of bins a 0.5 s frame has between 4 and 30 Hz.
    """

    def __init__(self, n_ch, n_times, n_frames, sfreq, bands=BANDS):
        if n_times % n_frames:
            raise ValueError("n_times (%d) must be a multiple of n_frames (%d)" % (n_times, n_frames))
        self.n_ch = n_ch
        self.n_times = n_times
        self.n_frames = n_frames
        self.n_bands = len(bands)
        n = n_times // n_frames
        self.n_per_frame = n
        self.bins = band_bins(n, sfreq, bands)
        w = hann(n)
        scale = 2.0 / (sfreq * sum(v * v for v in w)) * (sfreq / n)  # psd scaling * bin width
        self.scale = scale
        ks = [k for band in self.bins for k in band]
        self._ks = ks
        # window folded into the DFT tables: one row of n values per evaluated bin
        self._cos = array("f", [w[i] * math.cos(2.0 * math.pi * k * i / n) for k in ks for i in range(n)])
        self._sin = array("f", [w[i] * math.sin(2.0 * math.pi * k * i / n) for k in ks for i in range(n)])
        self._pow = array("f", [0.0] * len(ks))

    def compute(self, x, out):
        """Fill ``out`` with log band powers of window ``x``.

        Parameters
        ----------
        x : array of float, length n_ch * n_times
            The window, channel-major (``x[ch * n_times + t]``), in µV.
        out : array('f'), length n_frames * n_bands * n_ch
            Written as ``out[(frame * n_bands + band) * n_ch + ch]``.
        """
        n = self.n_per_frame
        n_ch = self.n_ch
        n_bands = self.n_bands
        cos_t = self._cos
        sin_t = self._sin
        pw = self._pow
        n_k = len(self._ks)
        for fr in range(self.n_frames):
            for ch in range(n_ch):
                base = ch * self.n_times + fr * n
                mean = 0.0
                for i in range(n):
                    mean += x[base + i]
                mean /= n
                for j in range(n_k):
                    re = 0.0
                    im = 0.0
                    row = j * n
                    for i in range(n):
                        v = x[base + i] - mean
                        re += v * cos_t[row + i]
                        im += v * sin_t[row + i]
                    pw[j] = re * re + im * im
                j = 0
                for b in range(n_bands):
                    acc = 0.0
                    for _ in self.bins[b]:
                        acc += pw[j]
                        j += 1
                    out[(fr * n_bands + b) * n_ch + ch] = math.log10(acc * self.scale + LOG_EPS)
        return out
