"""Plain-Python kernels of ``interp`` and the int32 fixed-point arithmetic they share.

The reference implementation of every kernel, and the fallback on ports without the
viper emitter; ``interp_viper`` has the same kernels, computing the same integers. Each
kernel is ``fn(a, b, c, d, p)``: buffers ``a``..``d`` (int8 views of the arena, the
model's weights, a table or scratch space; 0 when unused) and ``p``, an array('i') of
parameters laid out by ``interp_load``. ``p[0]`` and ``p[1]`` are the viper kernels'
word-size settings; a shift ``sh`` in ``p`` is TFLite's (> 0: left, < 0: right).

The arithmetic is gemmlowp's / TFLite's on int32 (C++ truncating division included).
"""

INT32_MIN = -2147483648
INT32_MAX = 2147483647


def wrap32(x):
    """x as a C int32 (two's complement wrap)."""
    return ((x + 2147483648) & 0xFFFFFFFF) - 2147483648


def srdhm(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul for int32 a, b."""
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    if ab >= 0:
        return (ab + 1073741824) >> 31
    return -((1073741823 - ab) >> 31)  # C++ division truncates toward zero


def rounding_divide_by_pot(x, exponent):
    """gemmlowp RoundingDivideByPOT: x / 2**exponent rounded half away from zero."""
    if exponent == 0:
        return x
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm(x, quantized_multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier (int32, double rounding: TFLM's)."""
    x = wrap32(x)
    if shift > 0:
        return srdhm(wrap32(x << shift), quantized_multiplier)
    return rounding_divide_by_pot(srdhm(x, quantized_multiplier), -shift)


def sat_mul_pot(x, e):
    """gemmlowp SaturatingRoundingMultiplyByPOT<e> on an int32."""
    if e == 0:
        return x
    if e < 0:
        return rounding_divide_by_pot(x, -e)
    thr = (1 << (31 - e)) - 1
    if x > thr:
        return INT32_MAX
    if x < -thr:
        return INT32_MIN
    return x << e


def newton_reciprocal(a):
    """~ 2 / (1 + a) in Q2.29 for a in Q0.31 [0, 1): gemmlowp's three Newton steps."""
    hd = a + INT32_MAX  # RoundingHalfSum(a, One)
    hd = (hd + 1) >> 1 if hd >= 0 else -((1 - hd) >> 1)
    x = wrap32(1515870810 + srdhm(hd, -1010580540))  # 48/17 - 32/17 hd
    for _ in range(3):
        one_minus = wrap32((1 << 29) - srdhm(hd, x))
        x = wrap32(x + sat_mul_pot(srdhm(x, one_minus), 2))  # Rescale<2> of a Q4 product
    return x


def one_over_one_plus_x_for_x_in_0_1(a):
    """gemmlowp: 1 / (1 + a), Q0.31 -> Q0.31."""
    return sat_mul_pot(newton_reciprocal(a), 1)  # ExactMulByPot<-1>, then Rescale<0>


def _rq(acc, m, sh):
    return mbqm(acc, m, sh)


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


def conv(x, w, y, d, p):
    """CONV_2D on int8, optionally followed by a tiled MAX_POOL_2D.

    x is read with element strides (p[20:24]: batch, row, column, channel), so NHWC or a
    transposed layout. w: filters in offset binary (w + 128), kx-major ([oc][kx][ky][c]),
    rows of K4 bytes (zero padded). Per output: acc = sum(u * v) - 128 * sum(u) + cst[oc],
    u = x + 128 over the window, with out-of-image taps at u = 128 - input_offset so that
    (x + input_offset) is 0 there. Pooling takes the max of FH x FW requantized outputs,
    then clamps. (The viper kernel builds each window from per-row strips of columns.)
    """
    (B, H, W, C, OC, KH, KW, SH, SW, DH, DW, PH, PW, K4, padu, ozp, amin, amax, sb, sy,
     sxx, sc, POH, POW, FH, FW, pmin, pmax) = p[2:30]
    u = [0] * K4
    best = [0] * OC
    o = 0
    for b in range(B):
        for poy in range(POH):
            for pox in range(POW):
                for oc in range(OC):
                    best[oc] = -128
                for dy in range(FH):
                    iy0 = (poy * FH + dy) * SH - PH
                    for dx in range(FW):
                        ix0 = (pox * FW + dx) * SW - PW
                        k = 0
                        for kx in range(KW):
                            ix = ix0 + kx * DW
                            for ky in range(KH):
                                iy = iy0 + ky * DH
                                if iy < 0 or iy >= H or ix < 0 or ix >= W:
                                    for c in range(C):
                                        u[k] = padu
                                        k += 1
                                else:
                                    xi = b * sb + iy * sy + ix * sxx
                                    for c in range(C):
                                        u[k] = x[xi + c * sc] + 128
                                        k += 1
                        su = 128 * sum(u)
                        q = 32
                        for oc in range(OC):
                            wb = oc * K4
                            acc = 0
                            for i in range(k):
                                acc += u[i] * w[wb + i]
                            v = _clamp(_rq(acc - su + p[q], p[q + 1], p[q + 2]) + ozp, amin, amax)
                            if v > best[oc]:
                                best[oc] = v
                            q += 3
                for oc in range(OC):
                    y[o] = _clamp(best[oc], pmin, pmax)
                    o += 1


def fc(x, w, y, cst, p):
    """FULLY_CONNECTED: y[b, oc] = rq(sum((x + input_offset) * w[oc]) + bias[oc]).

    w: the model's int8 weights [OC, K] (raw bytes); cst[oc] = bias + the offset-binary
    terms, as in conv; p[8 + 2 oc], p[9 + 2 oc]: multiplier and shift of channel oc.
    """
    B, OC, K, ozp, amin, amax = p[2:8]
    o = 0
    for b in range(B):
        xo = b * K
        u = [x[xo + i] + 128 for i in range(K)]
        su = 128 * sum(u)
        for oc in range(OC):
            wb = oc * K
            acc = 0
            for i in range(K):
                acc += u[i] * (w[wb + i] ^ 128)
            y[o] = _clamp(_rq(acc - su + cst[oc], p[8 + 2 * oc], p[9 + 2 * oc]) + ozp, amin, amax)
            o += 1


def max_pool(x, b_, y, d, p):
    """MAX_POOL_2D on NHWC int8 (valid taps only), then the activation clamp."""
    B, H, W, C, OH, OW, FH, FW, SH, SW, PH, PW, amin, amax = p[2:16]
    o = 0
    for b in range(B):
        for oy in range(OH):
            y0 = oy * SH - PH
            y1 = min(y0 + FH, H)
            y0 = max(y0, 0)
            for ox in range(OW):
                x0 = ox * SW - PW
                x1 = min(x0 + FW, W)
                x0 = max(x0, 0)
                for c in range(C):
                    m = -128
                    for iy in range(y0, y1):
                        base = (b * H + iy) * W * C + c
                        for ix in range(x0, x1):
                            v = x[base + ix * C]
                            if v > m:
                                m = v
                    y[o] = _clamp(m, amin, amax)
                    o += 1


def add(a, b, y, d, p):
    """ADD (TFLM's int8 kernel): both inputs to a common scale << 20, sum, requantize.

    p[3], p[4]: index steps of a and b (0 broadcasts a single value).
    """
    n, s1, s2, off1, off2, ozp, m1, sh1, m2, sh2, mo, sho, amin, amax = p[2:16]
    i1 = i2 = 0
    for i in range(n):
        v1 = _rq((a[i1] + off1) << 20, m1, sh1)
        v2 = _rq((b[i2] + off2) << 20, m2, sh2)
        y[i] = _clamp(_rq(v1 + v2, mo, sho) + ozp, amin, amax)
        i1 += s1
        i2 += s2


def mul(a, b, y, d, p):
    """MUL (TFLM's int8 kernel): rq((a + off1) * (b + off2))."""
    n, s1, s2, off1, off2, ozp, m, sh, amin, amax = p[2:12]
    i1 = i2 = 0
    for i in range(n):
        y[i] = _clamp(_rq((a[i1] + off1) * (b[i2] + off2), m, sh) + ozp, amin, amax)
        i1 += s1
        i2 += s2


def lut(x, t, y, d, p):
    """y = t[x & 255] (LOGISTIC, TANH): t holds int8 results as bytes."""
    for i in range(p[2]):
        v = t[x[i] & 255]
        y[i] = v - 256 if v > 127 else v


def quantize(x, b, y, d, p):
    """QUANTIZE int8 -> int8 (TFLM Requantize)."""
    n, izp, ozp, m, sh = p[2:7]
    for i in range(n):
        y[i] = _clamp(_rq(x[i] - izp, m, sh) + ozp, -128, 127)


def gather(x, b, y, d, p):
    """y[i] = x[base + sum(idx_k * stride_k)] over the odometer of the output shape.

    p: [., ., ndim, base, shape..., strides...]: TRANSPOSE, strided SLICE.
    """
    nd = p[2]
    off = p[3]
    shape = p[4:4 + nd]
    st = p[4 + nd:4 + 2 * nd]
    idx = [0] * nd
    n = 1
    for v in shape:
        n *= v
    for o in range(n):
        y[o] = x[off]
        k = nd - 1
        while k >= 0:
            idx[k] += 1
            off += st[k]
            if idx[k] < shape[k]:
                break
            off -= st[k] * shape[k]
            idx[k] = 0
            k -= 1


def copy(x, b, y, d, p):
    """Copy p[2] int8 values (the input; CONCATENATION parts that are not views)."""
    try:
        y[0:p[2]] = x
    except TypeError:  # CPython: bytes into an int8 view
        y[0:p[2]] = memoryview(x).cast("b")


def softmax(x, table, y, d, p):
    """SOFTMAX (TFLM's int8 kernel); table[k]: exp of input difference -k in Q0.31."""
    rows, depth, diff_min = p[2:5]
    for r in range(rows):
        base = r * depth
        mx = -128
        for j in range(depth):
            if x[base + j] > mx:
                mx = x[base + j]
        s = 0
        for j in range(depth):
            dd = x[base + j] - mx
            if dd >= diff_min:
                s += rounding_divide_by_pot(table[-dd], 12)  # Rescale<12>
        # GetReciprocal(s, 12)
        hp1 = 32
        t = s
        while t:
            t >>= 1
            hp1 -= 1
        scale = one_over_one_plus_x_for_x_in_0_1(((s << hp1) & 0xFFFFFFFF) - 2147483648)
        for j in range(depth):
            dd = x[base + j] - mx
            v = -128
            if dd >= diff_min:
                v = _clamp(rounding_divide_by_pot(srdhm(scale, table[-dd]), 35 - hp1) - 128,
                           -128, 127)
            y[base + j] = v


def reduce(x, index, y, d, p):
    """SUM / MEAN: rq(sum(x - izp)) over the input elements index[i] maps to each output.

    TFLM folds MEAN's 1 / n into the multiplier at load (interp_load.prepare_reduce).
    """
    n_in, n_out, izp, ozp, m, sh = p[2:8]
    acc = [0] * n_out
    for i in range(n_in):
        acc[index[i]] += x[i] - izp
    for j in range(n_out):
        y[j] = _clamp(_rq(acc[j], m, sh) + ozp, -128, 127)


KERNELS = {"conv": conv, "fc": fc, "max_pool": max_pool, "add": add, "mul": mul, "lut": lut,
           "quantize": quantize, "gather": gather, "copy": copy, "softmax": softmax,
           "reduce": reduce}
