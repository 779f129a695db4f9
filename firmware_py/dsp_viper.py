"""Fixed-point viper kernel of ``dsp.BandPower`` (MicroPython with the viper emitter only).

Viper has machine-word integers but no fast floats, so per Welch segment:

1. ``prep`` reads the float32 samples' bits (``ptr32``), block-scales the segment to
   integers with one shared exponent (exact for samples within about 2**(bd - 24) of the
   largest), removes the mean in integers and rescales so that ``|v| <= 2**bq``. It
   returns the exponent ``p`` with ``sample - mean = v * 2**p`` (or ``NONFINITE``).
2. ``dft_word`` / ``dft_split`` evaluate the *unwindowed* DFT ``X_k`` of ``v`` with a
   Q(bc) cos/sin table, only at the band bins and their neighbours, and apply the periodic
   Hann window exactly in the frequency domain, where it is the 3-tap
   ``4 X_w[k] = 2 X[k] - X[k-1] - X[k+1]``, in integers. No window pass, no window table,
   and no rounding from it. They write ``Y = 4 X_w`` as ``hi * 2**split + lo`` pairs,
   which ``dsp`` turns into floats (a handful of float operations per bin).

Word size. A 64-bit word (x64, aarch64) accumulates ``v * c`` directly (``dft_word``:
bq = 27, bc = 25 at n_per_seg <= 256). A 32-bit word cannot hold those sums, so
``dft_split`` takes bq = 15, bc = 14 and carries the low 15 bits of each accumulator into
a second word every step. ``widths`` picks the numbers; each bound is noted where it is used.

Loads and signs. A ``ptr32`` load zero-extends on a 64-bit port (array('i') -1 reads as
4294967295) and is the signed word on a 32-bit port. So every word this kernel reads back
is stored non-negative: ``q = v + 2**bq``, table ``= c + 2**bc``, ``par[4] = sum(v) + n``;
the table bias is removed after the loop as ``sum(v) * 2**bc`` (tiny, the mean is gone),
so the inner loop does one subtraction more than a signed kernel. The float32 bit fields
are read with shifts and masks that give the same bits on either word size, and no
constant exceeds 2**30 (a bigger literal is not a viper int on a 32-bit port).

``par`` (array('i')): [bd, bq, bc, n_runs, sum(v) + n (written by prep), split].
"""

import micropython
from micropython import const

NONFINITE = const(0x7FFF)  # prep's answer for a segment with a NaN or inf sample


def widths(word_bits, n):
    """Fixed-point widths ``(bd, bq, bc, split)`` for a word of ``word_bits`` and segment n."""
    L = 0  # n <= 2**L
    while (1 << L) < n:
        L += 1
    bd = word_bits - 4 - L  # decoded samples < 2**bd, so 2 * sum + n stays in the word
    if word_bits >= 64:
        # |v| <= 2**bq, |c| <= 2**bc, n <= 2**L. The biased sums stay <= 2**(L+bq+bc+1),
        # and |Y| = |sum v (2 c_k - c_k-1 - c_k+1)| <= n 2**(bq+bc+1) (1 + 2**-bc) since the
        # 3-tap of the table is 2**(bc+2) w_i, rounding aside. With L+bq+bc = 60 both stay
        # below 2**62 and Y >> 31 fits the int32 store. The split (27, 25 at L = 8) was
        # the best measured on real EEG, ahead of (28, 24) and (26, 26).
        bc = min(29, (60 - L) // 2 - 1)
        bq = min(29, 60 - L - bc)
        split = 31
        if bq < 16:
            raise ValueError("n_per_seg %d is too long for the viper kernel (%d-bit word)" % (n, word_bits))
    else:
        # |v * (c + 2**bc)| <= 2**15 * 2**15 = 2**30; plus a 15-bit remainder fits int32.
        # The sum's high part grows by at most n * 2**15: Y's stays below 2**30 for L <= 12.
        bq = 15
        bc = 14
        split = 15
        if L > 12:
            raise ValueError("n_per_seg %d is too long for the viper kernel (%d-bit word)" % (n, word_bits))
    return bd, bq, bc, split


@micropython.viper
def prep(x: ptr32, off: int, n: int, q: ptr32, par: ptr32) -> int:
    """Block-scale ``x[off:off+n]`` (float32) to ``q`` (v + 2**bq); return p (or NONFINITE)."""
    bd = par[0]
    bq = par[1]
    # pass 1: the largest biased exponent (255: NaN or inf)
    emax = 1
    for i in range(n):
        e = (x[off + i] >> 23) & 0xFF
        if e > emax:
            emax = e
    if emax == 255:
        return NONFINITE
    sh = bd - 24 - emax  # a sample of exponent e is shifted by e + sh: |decoded| < 2**bd
    # pass 2: decode; sum, min, max
    big = 1 << (bd + 1)
    s = 0
    lo = big
    hi = 0 - big
    for i in range(n):
        u = x[off + i]
        e = (u >> 23) & 0xFF
        m = u & 0x7FFFFF
        if e:
            m |= 0x800000
        else:
            e = 1  # subnormal
        t = e + sh
        if t >= 0:
            d = m << t
        elif t > -26:
            d = (m + (1 << (0 - t - 1))) >> (0 - t)
        else:
            d = 0
        if (u >> 31) & 1:
            d = 0 - d
        s += d
        if d > hi:
            hi = d
        if d < lo:
            lo = d
    m1 = (s + s + n) // (n + n)  # rounded mean
    rr = s - n * m1  # what is left of the sum, |rr| <= n / 2
    a = hi - m1
    if m1 - lo > a:
        a = m1 - lo
    nb = 0  # |sample - m1| < 2**nb
    while (a >> nb) != 0:
        nb += 1
    r = nb - bq  # scale down to |v| <= 2**bq (rounding can reach 2**bq, not pass it)
    if r <= 0:
        r += 1  # scaling up adds adj below: keep a spare bit for it
    half = 0
    s3 = 0
    adj = 0
    if r > 0:
        half = 1 << (r - 1)
    else:
        # scaling up: remove the rest of the mean at the finer scale, so sum(v) stays small
        s3 = 0 - r
        adj = ((rr << s3) * 2 + n) // (n + n)
    bias = 1 << bq
    sv = 0
    # pass 3: decode again (cheaper than a second buffer), centre, scale, store biased
    for i in range(n):
        u = x[off + i]
        e = (u >> 23) & 0xFF
        m = u & 0x7FFFFF
        if e:
            m |= 0x800000
        else:
            e = 1
        t = e + sh
        if t >= 0:
            d = m << t
        elif t > -26:
            d = (m + (1 << (0 - t - 1))) >> (0 - t)
        else:
            d = 0
        if (u >> 31) & 1:
            d = 0 - d
        d -= m1
        if r > 0:
            v = (d + half) >> r
        else:
            v = (d << s3) - adj
        sv += v
        q[i] = v + bias
    par[4] = sv + n  # |sv| <= n: stored non-negative
    # x_i - mean = v_i * 2**p; a float32 of exponent e is m * 2**(e - 150)
    return emax - 126 - bd + r


@micropython.viper
def dft_word(q: ptr32, n: int, cs: ptr32, runs: ptr32, y: ptr32, par: ptr32):
    """Y = 2 X[k] - X[k-1] - X[k+1] at the run bins, 64-bit accumulators."""
    bias = 1 << par[1]
    bc = par[2]
    n_runs = par[3]
    corr = (par[4] - n) << bc  # sum(v) * 2**bc: the table bias
    split = par[5]
    mask = (1 << split) - 1
    n2 = n + n
    j = 0
    for rn in range(n_runs):
        a = runs[rn + rn]
        b = runs[rn + rn + 1]
        k = a - 1
        p1r = 0
        p1i = 0
        p2r = 0
        p2i = 0
        while k <= b + 1:
            kk = k
            if kk < 0:
                kk += n
            elif kk >= n:
                kk -= n
            st = kk + kk
            re = 0
            im = 0
            m = 0  # 2 * (k * i mod n), stepped
            for i in range(n):
                v = q[i] - bias
                re += v * cs[m]
                im += v * cs[m + 1]
                m += st
                if m >= n2:
                    m -= n2
            re -= corr
            im -= corr
            if k > a:  # p1 is X[k-1], the bin to emit; p2 = X[k-2], re/im = X[k]
                yr = p1r + p1r - p2r - re
                yi = p1i + p1i - p2i - im
                y[j] = yr >> split
                y[j + 1] = yr & mask
                y[j + 2] = yi >> split
                y[j + 3] = yi & mask
                j += 4
            p2r = p1r
            p2i = p1i
            p1r = re
            p1i = im
            k += 1


@micropython.viper
def dft_split(q: ptr32, n: int, cs: ptr32, runs: ptr32, y: ptr32, par: ptr32):
    """As ``dft_word`` for a 32-bit word: each accumulator is hi * 2**split + lo."""
    bias = 1 << par[1]
    bc = par[2]
    n_runs = par[3]
    corr = (par[4] - n) << bc  # |corr| <= n * 2**14
    split = par[5]
    mask = (1 << split) - 1
    n2 = n + n
    j = 0
    for rn in range(n_runs):
        a = runs[rn + rn]
        b = runs[rn + rn + 1]
        k = a - 1
        p1h = 0
        p1l = 0
        p1H = 0
        p1L = 0
        p2h = 0
        p2l = 0
        p2H = 0
        p2L = 0
        while k <= b + 1:
            kk = k
            if kk < 0:
                kk += n
            elif kk >= n:
                kk -= n
            st = kk + kk
            rh = 0
            rl = 0
            ih = 0
            il = 0
            m = 0
            for i in range(n):
                v = q[i] - bias
                rl += v * cs[m]  # |v * c| < 2**30, 0 <= rl < 2**15 before: fits int32
                rh += rl >> split
                rl &= mask
                il += v * cs[m + 1]
                ih += il >> split
                il &= mask
                m += st
                if m >= n2:
                    m -= n2
            rl -= corr
            rh += rl >> split
            rl &= mask
            il -= corr
            ih += il >> split
            il &= mask
            if k > a:
                y[j] = p1h + p1h - p2h - rh
                y[j + 1] = p1l + p1l - p2l - rl
                y[j + 2] = p1H + p1H - p2H - ih
                y[j + 3] = p1L + p1L - p2L - il
                j += 4
            p2h = p1h
            p2l = p1l
            p2H = p1H
            p2L = p1L
            p1h = rh
            p1l = rl
            p1H = ih
            p1L = il
            k += 1
