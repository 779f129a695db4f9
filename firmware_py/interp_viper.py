"""Viper kernels of ``interp`` (MicroPython's native-integer emitter).

Imported by ``interp`` where the port compiles viper; elsewhere ``interp`` runs the plain
kernels of ``interp_plain``, which compute the same integers. Every kernel is
``fn(a, b, c, d, p)`` with the arguments and ``p`` layout of the plain kernel of the same
name (documented there).

Loads and word size. ptr8 loads are unsigned: an int8 ``v`` is read as ``v ^ 128``, its
offset binary ``v + 128``, which keeps sums linear and comparisons ordered. A ptr32 load
zero-extends on a 64-bit port and is the signed word on a 32-bit one, so signed params are
read as ``(p[k] << sx) >> sx`` with ``sx = p[0]`` (32 or 0); the same shift wraps a value
to int32 as TFLM's C++ does. No literal reaches 2**30 (mpy-cross and 32-bit ports make
bigger ones objects, which viper cannot mix with machine ints).

Requantization (``MultiplyByQuantizedMultiplier``, double rounding) needs the 62-bit
product ``acc * m``. With ``p[1]`` set (a 64-bit word) it is one multiply; otherwise it is
built from 16-bit halves in uint words, every partial below 2**32, so the same code is
exact on a 32-bit board:

    A = |acc| <= 2**31 = ah 2**16 + al, M = m = mh 2**16 + ml: ah <= 2**15, mh < 2**15,
    al, ml < 2**16. lo = al ml < 2**32; S = ah ml + al mh + (lo >> 16) <= 2**32 - 2**16;
    (A M + c) >> 31 = 2 ah mh + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + c) >> 31),
    the last sum < 2**31 + 2**16 + 2**30. c = 2**30 (acc >= 0) or 2**30 - 1 (acc < 0: C++
    truncates the negative quotient toward zero); the sign is put back afterwards.

The block is inlined in each kernel (a viper-to-viper call costs more than the arithmetic).
"""

import micropython


@micropython.viper
def conv(x: ptr8, w: ptr8, y: ptr8, s: ptr8, p: ptr32):
    sx = int(p[0])
    wide = int(p[1])
    B = int(p[2])
    H = int(p[3])
    W = int(p[4])
    C = int(p[5])
    OC = int(p[6])
    KH = int(p[7])
    KW = int(p[8])
    SH = int(p[9])
    SW = int(p[10])
    DH = int(p[11])
    DW = int(p[12])
    PH = int(p[13])
    PW = int(p[14])
    K4 = int(p[15])
    padu = int(p[16])
    ozp = (int(p[17]) << sx) >> sx
    amin = (int(p[18]) << sx) >> sx
    amax = (int(p[19]) << sx) >> sx
    sb = int(p[20])
    sy = int(p[21])
    sxx = int(p[22])
    sc = int(p[23])
    POH = int(p[24])
    POW = int(p[25])
    FH = int(p[26])
    FW = int(p[27])
    umin = ((int(p[28]) << sx) >> sx) + 128
    umax = ((int(p[29]) << sx) >> sx) + 128
    NCOL = int(p[30])
    SB = int(p[31])
    KHC = KH * C
    # scratch: FH strips of SB bytes, the window (K4), FH x NCOL column sums, OC accumulators,
    # OC pooling maxima
    strips = int(s)
    wbuf = ptr8(strips + FH * SB)
    csums = strips + FH * SB + K4
    accs = ptr32(csums + 4 * FH * NCOL)
    best = ptr8(csums + 4 * FH * NCOL + 4 * OC)
    wbase = int(w)
    h30 = 1
    h30 = h30 << 30  # 2**30, not a literal: a 31-bit small int cannot hold it
    o = 0
    for b in range(B):
        for poy in range(POH):
            # one strip per conv row of this pooling row: column j (ix = j - PW) holds the
            # KH x C window column in offset binary (out-of-image taps at padu), and its sum
            for dy in range(FH):
                iy0 = (poy * FH + dy) * SH - PH
                st = ptr8(strips + dy * SB)
                cs = ptr32(csums + 4 * dy * NCOL)
                k = 0
                for j in range(NCOL):
                    ix = j - PW
                    tot = 0
                    for ky in range(KH):
                        iy = iy0 + ky * DH
                        if iy < 0 or iy >= H or ix < 0 or ix >= W:
                            for c in range(C):
                                st[k] = padu
                                k += 1
                            tot += padu * C
                        else:
                            xi = b * sb + iy * sy + ix * sxx
                            for c in range(C):
                                u = int(x[xi]) ^ 128
                                st[k] = u
                                tot += u
                                k += 1
                                xi += sc
                    cs[j] = tot
            for pox in range(POW):
                for oc in range(OC):
                    best[oc] = 0
                for dy in range(FH):
                    cs = ptr32(csums + 4 * dy * NCOL)
                    for dx in range(FW):
                        j0 = (pox * FW + dx) * SW
                        su = 0
                        for kx in range(KW):
                            su += int(cs[j0 + kx * DW])
                        su = su << 7
                        if DW == 1:  # the window is a run of the strip (filters are kx-major)
                            win = ptr8(strips + dy * SB + j0 * KHC)
                        else:
                            win = wbuf
                            k = 0
                            for kx in range(KW):
                                src = ptr8(strips + dy * SB + (j0 + kx * DW) * KHC)
                                for i in range(KHC):
                                    win[k] = src[i]
                                    k += 1
                        # dot products, four / two / one output channels per pass
                        oc = 0
                        while oc + 3 < OC:
                            wa = ptr8(wbase + (oc + 0) * K4)
                            wb = ptr8(wbase + (oc + 1) * K4)
                            wc = ptr8(wbase + (oc + 2) * K4)
                            wd = ptr8(wbase + (oc + 3) * K4)
                            a0 = 0
                            a1 = 0
                            a2 = 0
                            a3 = 0
                            i = 0
                            while i < K4:
                                u0 = int(win[i])
                                u1 = int(win[i + 1])
                                u2 = int(win[i + 2])
                                u3 = int(win[i + 3])
                                a0 += u0 * int(wa[i]) + u1 * int(wa[i + 1]) + u2 * int(wa[i + 2]) + u3 * int(wa[i + 3])
                                a1 += u0 * int(wb[i]) + u1 * int(wb[i + 1]) + u2 * int(wb[i + 2]) + u3 * int(wb[i + 3])
                                a2 += u0 * int(wc[i]) + u1 * int(wc[i + 1]) + u2 * int(wc[i + 2]) + u3 * int(wc[i + 3])
                                a3 += u0 * int(wd[i]) + u1 * int(wd[i + 1]) + u2 * int(wd[i + 2]) + u3 * int(wd[i + 3])
                                i += 4
                            accs[oc + 0] = a0 - su
                            accs[oc + 1] = a1 - su
                            accs[oc + 2] = a2 - su
                            accs[oc + 3] = a3 - su
                            oc += 4
                        while oc + 1 < OC:
                            wa = ptr8(wbase + (oc + 0) * K4)
                            wb = ptr8(wbase + (oc + 1) * K4)
                            a0 = 0
                            a1 = 0
                            i = 0
                            while i < K4:
                                u0 = int(win[i])
                                u1 = int(win[i + 1])
                                u2 = int(win[i + 2])
                                u3 = int(win[i + 3])
                                a0 += u0 * int(wa[i]) + u1 * int(wa[i + 1]) + u2 * int(wa[i + 2]) + u3 * int(wa[i + 3])
                                a1 += u0 * int(wb[i]) + u1 * int(wb[i + 1]) + u2 * int(wb[i + 2]) + u3 * int(wb[i + 3])
                                i += 4
                            accs[oc + 0] = a0 - su
                            accs[oc + 1] = a1 - su
                            oc += 2
                        if oc < OC:
                            wa = ptr8(wbase + (oc + 0) * K4)
                            a0 = 0
                            i = 0
                            while i < K4:
                                u0 = int(win[i])
                                u1 = int(win[i + 1])
                                u2 = int(win[i + 2])
                                u3 = int(win[i + 3])
                                a0 += u0 * int(wa[i]) + u1 * int(wa[i + 1]) + u2 * int(wa[i + 2]) + u3 * int(wa[i + 3])
                                i += 4
                            accs[oc + 0] = a0 - su
                            oc += 1
                        # requantize, clamp, keep the pooling maximum (offset binary)
                        q = 32
                        for oc in range(OC):
                            acc = int(accs[oc]) + int(p[q])
                            m = int(p[q + 1])
                            sh = (int(p[q + 2]) << sx) >> sx
                            q += 3
                            acc = (acc << sx) >> sx
                            ls = 0
                            rs = 0
                            if sh > 0:
                                ls = sh
                                acc = ((acc << ls) << sx) >> sx
                            else:
                                rs = 0 - sh
                            if wide:
                                ab = acc * m
                                if ab >= 0:
                                    r = (ab + h30) >> 31
                                else:
                                    r = 0 - ((h30 - 1 - ab) >> 31)
                            else:
                                if acc < 0:
                                    A = uint(0 - acc)
                                    cc = uint(h30 - 1)
                                else:
                                    A = uint(acc)
                                    cc = uint(h30)
                                M = uint(m)
                                ah = A >> 16
                                al = A & 0xffff
                                mh = M >> 16
                                ml = M & 0xffff
                                lo = al * ml
                                S = ah * ml + al * mh + (lo >> 16)
                                r = int(((ah * mh) << 1) + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + cc) >> 31))
                                if acc < 0:
                                    r = 0 - r
                            if rs:
                                mask = (1 << rs) - 1
                                rem = r & mask
                                thr = mask >> 1
                                if r < 0:
                                    thr += 1
                                r = r >> rs
                                if rem > thr:
                                    r += 1
                            r += ozp
                            if r < amin:
                                r = amin
                            if r > amax:
                                r = amax
                            r += 128
                            if r > int(best[oc]):
                                best[oc] = r
                for oc in range(OC):
                    r = int(best[oc])
                    if r < umin:
                        r = umin
                    if r > umax:
                        r = umax
                    y[o] = r ^ 128
                    o += 1


@micropython.viper
def fc(x: ptr8, w: ptr8, y: ptr8, cst: ptr32, p: ptr32):
    sx = int(p[0])
    wide = int(p[1])
    B = int(p[2])
    OC = int(p[3])
    K = int(p[4])
    ozp = (int(p[5]) << sx) >> sx
    amin = (int(p[6]) << sx) >> sx
    amax = (int(p[7]) << sx) >> sx
    s = ptr8(int(p) + 4 * (8 + 2 * OC))  # the window lives at the end of p
    K4 = (K >> 2) << 2
    wbase = int(w)
    h30 = 1
    h30 = h30 << 30  # 2**30, not a literal: a 31-bit small int cannot hold it
    o = 0
    for b in range(B):
        xo = b * K
        su = 0
        for i in range(K):
            u = int(x[xo + i]) ^ 128
            s[i] = u
            su += u
        su = su << 7
        q = 8
        for oc in range(OC):
            wp = ptr8(wbase + oc * K)
            acc = 0
            i = 0
            while i < K4:
                acc += int(s[i]) * (int(wp[i]) ^ 128) + int(s[i + 1]) * (int(wp[i + 1]) ^ 128) + int(s[i + 2]) * (int(wp[i + 2]) ^ 128) + int(s[i + 3]) * (int(wp[i + 3]) ^ 128)
                i += 4
            while i < K:
                acc += int(s[i]) * (int(wp[i]) ^ 128)
                i += 1
            acc = acc - su + int(cst[oc])
            m = int(p[q])
            sh = (int(p[q + 1]) << sx) >> sx
            q += 2
            acc = (acc << sx) >> sx
            ls = 0
            rs = 0
            if sh > 0:
                ls = sh
                acc = ((acc << ls) << sx) >> sx
            else:
                rs = 0 - sh
            if wide:
                ab = acc * m
                if ab >= 0:
                    r = (ab + h30) >> 31
                else:
                    r = 0 - ((h30 - 1 - ab) >> 31)
            else:
                if acc < 0:
                    A = uint(0 - acc)
                    cc = uint(h30 - 1)
                else:
                    A = uint(acc)
                    cc = uint(h30)
                M = uint(m)
                ah = A >> 16
                al = A & 0xffff
                mh = M >> 16
                ml = M & 0xffff
                lo = al * ml
                S = ah * ml + al * mh + (lo >> 16)
                r = int(((ah * mh) << 1) + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + cc) >> 31))
                if acc < 0:
                    r = 0 - r
            if rs:
                mask = (1 << rs) - 1
                rem = r & mask
                thr = mask >> 1
                if r < 0:
                    thr += 1
                r = r >> rs
                if rem > thr:
                    r += 1
            r += ozp
            if r < amin:
                r = amin
            if r > amax:
                r = amax
            y[o] = r
            o += 1


@micropython.viper
def max_pool(x: ptr8, unused: ptr8, y: ptr8, unused2: ptr8, p: ptr32):
    sx = int(p[0])
    B = int(p[2])
    H = int(p[3])
    W = int(p[4])
    C = int(p[5])
    OH = int(p[6])
    OW = int(p[7])
    FH = int(p[8])
    FW = int(p[9])
    SH = int(p[10])
    SW = int(p[11])
    PH = int(p[12])
    PW = int(p[13])
    umin = ((int(p[14]) << sx) >> sx) + 128  # the clamp in offset binary
    umax = ((int(p[15]) << sx) >> sx) + 128
    o = 0
    for b in range(B):
        for oy in range(OH):
            y0 = oy * SH - PH
            y1 = y0 + FH
            if y1 > H:
                y1 = H
            if y0 < 0:
                y0 = 0
            for ox in range(OW):
                x0 = ox * SW - PW
                x1 = x0 + FW
                if x1 > W:
                    x1 = W
                if x0 < 0:
                    x0 = 0
                for c in range(C):
                    m = 0
                    for iy in range(y0, y1):
                        base = ((b * H + iy) * W) * C + c
                        for ix in range(x0, x1):
                            v = int(x[base + ix * C]) ^ 128
                            if v > m:
                                m = v
                    if m < umin:
                        m = umin
                    if m > umax:
                        m = umax
                    y[o] = m ^ 128
                    o += 1


@micropython.viper
def add(a: ptr8, b: ptr8, y: ptr8, unused: ptr8, p: ptr32):
    sx = int(p[0])
    wide = int(p[1])
    n = int(p[2])
    s1 = int(p[3])
    s2 = int(p[4])
    off1 = ((int(p[5]) << sx) >> sx) - 128  # applied to offset-binary loads
    off2 = ((int(p[6]) << sx) >> sx) - 128
    ozp = (int(p[7]) << sx) >> sx
    amin = (int(p[14]) << sx) >> sx
    amax = (int(p[15]) << sx) >> sx
    h30 = 1
    h30 = h30 << 30  # 2**30, not a literal: a 31-bit small int cannot hold it
    i1 = 0
    i2 = 0
    for i in range(n):
        total = 0
        for side in range(3):
            if side == 0:
                acc = ((int(a[i1]) ^ 128) + off1) << 20
                m = int(p[8])
                sh = (int(p[9]) << sx) >> sx
            elif side == 1:
                acc = ((int(b[i2]) ^ 128) + off2) << 20
                m = int(p[10])
                sh = (int(p[11]) << sx) >> sx
            else:
                acc = total
                m = int(p[12])
                sh = (int(p[13]) << sx) >> sx
            acc = (acc << sx) >> sx
            ls = 0
            rs = 0
            if sh > 0:
                ls = sh
                acc = ((acc << ls) << sx) >> sx
            else:
                rs = 0 - sh
            if wide:
                ab = acc * m
                if ab >= 0:
                    r = (ab + h30) >> 31
                else:
                    r = 0 - ((h30 - 1 - ab) >> 31)
            else:
                if acc < 0:
                    A = uint(0 - acc)
                    cc = uint(h30 - 1)
                else:
                    A = uint(acc)
                    cc = uint(h30)
                M = uint(m)
                ah = A >> 16
                al = A & 0xffff
                mh = M >> 16
                ml = M & 0xffff
                lo = al * ml
                S = ah * ml + al * mh + (lo >> 16)
                r = int(((ah * mh) << 1) + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + cc) >> 31))
                if acc < 0:
                    r = 0 - r
            if rs:
                mask = (1 << rs) - 1
                rem = r & mask
                thr = mask >> 1
                if r < 0:
                    thr += 1
                r = r >> rs
                if rem > thr:
                    r += 1
            if side < 2:
                total += r
        r += ozp  # r: the output requantization of the two scaled inputs' sum
        if r < amin:
            r = amin
        if r > amax:
            r = amax
        y[i] = r
        i1 += s1
        i2 += s2


@micropython.viper
def mul(a: ptr8, b: ptr8, y: ptr8, unused: ptr8, p: ptr32):
    sx = int(p[0])
    wide = int(p[1])
    n = int(p[2])
    s1 = int(p[3])
    s2 = int(p[4])
    off1 = ((int(p[5]) << sx) >> sx) - 128
    off2 = ((int(p[6]) << sx) >> sx) - 128
    ozp = (int(p[7]) << sx) >> sx
    m = int(p[8])
    sh0 = (int(p[9]) << sx) >> sx
    amin = (int(p[10]) << sx) >> sx
    amax = (int(p[11]) << sx) >> sx
    h30 = 1
    h30 = h30 << 30  # 2**30, not a literal: a 31-bit small int cannot hold it
    i1 = 0
    i2 = 0
    for i in range(n):
        acc = ((int(a[i1]) ^ 128) + off1) * ((int(b[i2]) ^ 128) + off2)
        sh = sh0
        acc = (acc << sx) >> sx
        ls = 0
        rs = 0
        if sh > 0:
            ls = sh
            acc = ((acc << ls) << sx) >> sx
        else:
            rs = 0 - sh
        if wide:
            ab = acc * m
            if ab >= 0:
                r = (ab + h30) >> 31
            else:
                r = 0 - ((h30 - 1 - ab) >> 31)
        else:
            if acc < 0:
                A = uint(0 - acc)
                cc = uint(h30 - 1)
            else:
                A = uint(acc)
                cc = uint(h30)
            M = uint(m)
            ah = A >> 16
            al = A & 0xffff
            mh = M >> 16
            ml = M & 0xffff
            lo = al * ml
            S = ah * ml + al * mh + (lo >> 16)
            r = int(((ah * mh) << 1) + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + cc) >> 31))
            if acc < 0:
                r = 0 - r
        if rs:
            mask = (1 << rs) - 1
            rem = r & mask
            thr = mask >> 1
            if r < 0:
                thr += 1
            r = r >> rs
            if rem > thr:
                r += 1
        r += ozp
        if r < amin:
            r = amin
        if r > amax:
            r = amax
        y[i] = r
        i1 += s1
        i2 += s2


@micropython.viper
def lut(x: ptr8, t: ptr8, y: ptr8, unused: ptr8, p: ptr32):
    for i in range(int(p[2])):
        y[i] = t[x[i]]


@micropython.viper
def quantize(x: ptr8, unused: ptr8, y: ptr8, unused2: ptr8, p: ptr32):
    sx = int(p[0])
    wide = int(p[1])
    n = int(p[2])
    izp = ((int(p[3]) << sx) >> sx) + 128
    ozp = (int(p[4]) << sx) >> sx
    m = int(p[5])
    sh0 = (int(p[6]) << sx) >> sx
    h30 = 1
    h30 = h30 << 30  # 2**30, not a literal: a 31-bit small int cannot hold it
    for i in range(n):
        acc = (int(x[i]) ^ 128) - izp
        sh = sh0
        acc = (acc << sx) >> sx
        ls = 0
        rs = 0
        if sh > 0:
            ls = sh
            acc = ((acc << ls) << sx) >> sx
        else:
            rs = 0 - sh
        if wide:
            ab = acc * m
            if ab >= 0:
                r = (ab + h30) >> 31
            else:
                r = 0 - ((h30 - 1 - ab) >> 31)
        else:
            if acc < 0:
                A = uint(0 - acc)
                cc = uint(h30 - 1)
            else:
                A = uint(acc)
                cc = uint(h30)
            M = uint(m)
            ah = A >> 16
            al = A & 0xffff
            mh = M >> 16
            ml = M & 0xffff
            lo = al * ml
            S = ah * ml + al * mh + (lo >> 16)
            r = int(((ah * mh) << 1) + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + cc) >> 31))
            if acc < 0:
                r = 0 - r
        if rs:
            mask = (1 << rs) - 1
            rem = r & mask
            thr = mask >> 1
            if r < 0:
                thr += 1
            r = r >> rs
            if rem > thr:
                r += 1
        r += ozp
        if r < -128:
            r = -128
        if r > 127:
            r = 127
        y[i] = r


@micropython.viper
def gather(x: ptr8, unused: ptr8, y: ptr8, unused2: ptr8, p: ptr32):
    """Odometer over the output shape; its counters live in p after the strides."""
    nd = int(p[2])
    off = int(p[3])
    shape = ptr32(int(p) + 16)
    st = ptr32(int(p) + 16 + 4 * nd)
    idx = ptr32(int(p) + 16 + 8 * nd)
    total = 1
    for k in range(nd):
        total *= int(shape[k])
        idx[k] = 0
    n_last = int(shape[nd - 1])
    s_last = int(st[nd - 1])
    o = 0
    while o < total:
        xi = off
        for j in range(n_last):
            y[o] = x[xi]
            xi += s_last
            o += 1
        k = nd - 2
        while k >= 0:
            idx[k] += 1
            off += int(st[k])
            if int(idx[k]) < int(shape[k]):
                break
            off -= int(st[k]) * int(shape[k])
            idx[k] = 0
            k -= 1


@micropython.viper
def copy(x: ptr8, unused: ptr8, y: ptr8, unused2: ptr8, p: ptr32):
    for i in range(int(p[2])):
        y[i] = x[i]


@micropython.viper
def _srdhm(a: int, b: int, wide: int) -> int:
    """SaturatingRoundingDoublingHighMul of two int32 of any sign (softmax only)."""
    h30 = 1
    h30 = h30 << 30
    if wide:
        ab = a * b
        if ab >= 0:
            return (ab + h30) >> 31
        return 0 - ((h30 - 1 - ab) >> 31)
    neg = 0
    if a < 0:
        A = uint(0 - a)
        neg = 1
    else:
        A = uint(a)
    if b < 0:
        M = uint(0 - b)
        neg = neg ^ 1
    else:
        M = uint(b)
    if neg:
        cc = uint(h30 - 1)
    else:
        cc = uint(h30)
    ah = A >> 16
    al = A & 0xffff
    mh = M >> 16
    ml = M & 0xffff
    lo = al * ml
    S = ah * ml + al * mh + (lo >> 16)
    r = int(((ah * mh) << 1) + (S >> 15) + ((((S & 0x7fff) << 16) + (lo & 0xffff) + cc) >> 31))
    if neg:
        r = 0 - r
    return r


@micropython.viper
def _sat_shl(v: int, e: int) -> int:
    """gemmlowp SaturatingRoundingMultiplyByPOT<e> for e > 0 on an int32."""
    thr = 1
    thr = (thr << (31 - e)) - 1
    big = 1
    big = ((big << 30) - 1) * 2 + 1  # INT32_MAX
    if v > thr:
        return big
    if v < 0 - thr:
        return 0 - big - 1
    return v << e


@micropython.viper
def softmax(x: ptr8, table: ptr32, y: ptr8, unused: ptr8, p: ptr32):
    """TFLM's int8 SOFTMAX; table[k]: exp of the input difference -k in Q0.31 (>= 0)."""
    sx = int(p[0])
    wide = int(p[1])
    rows = int(p[2])
    depth = int(p[3])
    diff_min = (int(p[4]) << sx) >> sx
    h29 = 1
    h29 = h29 << 29
    c48 = h29 * 2 + 442128986  # 48/17 in Q2.29: 1515870810
    for r in range(rows):
        base = r * depth
        mx = 0
        for j in range(depth):
            u = int(x[base + j]) ^ 128
            if u > mx:
                mx = u
        s = 0
        for j in range(depth):
            d = (int(x[base + j]) ^ 128) - mx
            if d >= diff_min:
                e = int(table[0 - d])
                # RoundingDivideByPOT(e, 12), e >= 0
                s += (e >> 12) + int((e & 4095) > 2047)
        # GetReciprocal(s, 12): s in [1, 2**31)
        hp1 = 32
        t = s
        while t:
            t = t >> 1
            hp1 -= 1
        a = int((uint(s) << hp1) - (uint(h29) << 2))  # in [0, 2**31)
        # one_over_one_plus_x_for_x_in_0_1(a)
        hd = (a >> 1) + h29 * 2
        xx = c48 + int(_srdhm(hd, -1010580540, wide))
        for it in range(3):
            om = h29 - int(_srdhm(hd, xx, wide))
            xx = xx + int(_sat_shl(int(_srdhm(xx, om, wide)), 2))
        scale = int(_sat_shl(xx, 1))
        sh = 35 - hp1  # 23..34; 0 <= v < 2**31, so sh > 31 rounds every v to 0
        mask = (1 << sh) - 1
        for j in range(depth):
            d = (int(x[base + j]) ^ 128) - mx
            v = -128
            if d >= diff_min:
                v = int(_srdhm(scale, int(table[0 - d]), wide))
                if sh > 31:
                    v = 0
                else:
                    rem = v & mask
                    thr = mask >> 1
                    v = v >> sh
                    if rem > thr:
                        v += 1
                v -= 128
                if v < -128:
                    v = -128
                if v > 127:
                    v = 127
            y[base + j] = v
