"""Model loading for ``interp``: FlatBuffer reader, graph rewrites, arena plan, prepare.

Imported by ``interp.Interpreter`` while it loads a model, and dropped from
``sys.modules`` afterwards on MicroPython so that its code leaves the heap. Nothing the
interpreter keeps for ``invoke`` refers to this module.

prepare_X(ld, op) returns (kernel name, a, b, c, d, p): the buffers and params array of
one ``fn(a, b, c, d, p)`` call (layouts: ``interp_plain``). Everything TFLM computes at
Prepare is computed here the same way (QuantizeMultiplier on doubles, the fixed-point
LOGISTIC / TANH / SOFTMAX constants), including TFLM's refusals.
"""

import gc
import math
import struct
from array import array

try:
    from . import interp as _I
    from .interp_plain import (INT32_MAX, INT32_MIN, mbqm, one_over_one_plus_x_for_x_in_0_1,
                               rounding_divide_by_pot, sat_mul_pot, srdhm, wrap32, newton_reciprocal)
except ImportError:
    import interp as _I
    from interp_plain import (INT32_MAX, INT32_MIN, mbqm, one_over_one_plus_x_for_x_in_0_1,
                              rounding_divide_by_pot, sat_mul_pot, srdhm, wrap32, newton_reciprocal)

OP_ADD = 0
OP_CONCATENATION = 2
OP_CONV_2D = 3
OP_FULLY_CONNECTED = 9
OP_LOGISTIC = 14
OP_MAX_POOL_2D = 17
OP_MUL = 18
OP_RESHAPE = 22
OP_SOFTMAX = 25
OP_TANH = 28
OP_TRANSPOSE = 39
OP_MEAN = 40
OP_SLICE = 65
OP_SUM = 74
OP_QUANTIZE = 114

T_INT32 = 2
T_INT64 = 4
T_INT8 = 9

PAD_SAME = 0
ACT_NONE = 0
ACT_RELU = 1
ACT_RELU_N1_TO_1 = 2
ACT_RELU6 = 3

_F32 = array("f", [0.0])


def _collect():
    """gc.collect on MicroPython (keeps the heap unfragmented while loading); a no-op on a
    host, where a full collection of a big process costs tens of milliseconds."""
    if _I._on_micropython():
        gc.collect()


def f32(x):
    """Round a Python float to float32, as C++ float arithmetic does."""
    _F32[0] = x
    return _F32[0]


def tf_round(x):
    """std::round: half away from zero; returns int."""
    if x >= 0:
        return int(math.floor(x + 0.5))
    return -int(math.floor(-x + 0.5))


def quantize_multiplier(real_multiplier):
    """TFLite QuantizeMultiplier: real -> (int32 significand in Q31, shift)."""
    if real_multiplier == 0.0:
        return 0, 0
    q, shift = math.frexp(real_multiplier)
    q_fixed = tf_round(q * 2147483648.0)
    if q_fixed == 2147483648:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift = 0
        q_fixed = 0
    if shift > 30:  # TFLite clamps huge multipliers the same way
        shift = 30
        q_fixed = INT32_MAX
    return q_fixed, shift


def activation_range(act, scale, zero_point):
    """CalculateActivationRangeQuantized for int8 outputs."""
    lo, hi = -128, 127
    if act == ACT_RELU:
        lo = max(lo, zero_point)
    elif act == ACT_RELU6:
        lo = max(lo, zero_point)
        hi = min(hi, zero_point + tf_round(f32(6.0 / scale)))
    elif act == ACT_RELU_N1_TO_1:
        lo = max(lo, zero_point + tf_round(f32(-1.0 / scale)))
        hi = min(hi, zero_point + tf_round(f32(1.0 / scale)))
    elif act != ACT_NONE:
        raise ValueError("unsupported fused activation %d" % act)
    return lo, hi


def _input_radius(int_bits, left_shift, total_bits=31):
    """TFLite CalculateInputRadius."""
    m = 1.0 * ((1 << int_bits) - 1) * (1 << (total_bits - int_bits))
    if left_shift >= 0:
        m = m / (1 << left_shift)
    else:
        m = m * (1 << -left_shift)
    return int(math.floor(m))


# ---------------------------------------------------------------- gemmlowp fixed point


def _exp_on_interval(a):
    """gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl (Q0.31 -> Q0.31)."""
    x = wrap32(a + (1 << 28))  # a + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    t = sat_mul_pot(wrap32(srdhm(wrap32(sat_mul_pot(x4, -2) + x3), 715827883) + x2), -1)
    return wrap32(1895147668 + srdhm(1895147668, wrap32(x + t)))


# exp(-2**e) in Q0.31, for the barrel shifter of exp_on_negative_values
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def exp_on_negative_values(a, int_bits):
    """gemmlowp exp_on_negative_values: a <= 0 in Q(int_bits).(31 - int_bits) -> Q0.31."""
    frac_bits = 31 - int_bits
    quarter = 1 << (frac_bits - 2)
    a_mod = wrap32((a & (quarter - 1)) - quarter)
    result = _exp_on_interval(sat_mul_pot(a_mod, int_bits))  # Rescale<0>
    remainder = wrap32(a_mod - a)
    for e, mult in _EXP_BARREL:
        if int_bits > e and remainder & (1 << (frac_bits + e)):
            result = srdhm(result, mult)
    if int_bits > 5 and a < -(1 << (36 - int_bits)):  # below -32
        result = 0
    if a == 0:
        result = INT32_MAX
    return result


def one_minus_x_over_one_plus_x_for_x_in_0_1(a):
    """gemmlowp: (1 - a) / (1 + a), Q0.31 -> Q0.31."""
    return sat_mul_pot(wrap32(newton_reciprocal(a) - (1 << 29)), 2)


def fx_logistic(a, int_bits):
    """gemmlowp logistic: Q(int_bits) -> Q0.31."""
    if a == 0:
        return 1 << 30
    if a > 0:
        return one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(wrap32(-a), int_bits))
    return wrap32(INT32_MAX - one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(a, int_bits)))


def fx_tanh(a, int_bits):
    """gemmlowp tanh: Q(int_bits) -> Q0.31 (exp runs on 2|a| with one more integer bit)."""
    if a == 0:
        return 0
    n = a if a < 0 else wrap32(-a)
    t = one_minus_x_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(n, int_bits + 1))
    return -t if a < 0 else t


def lut_logistic_tanh(scale, zero_point, tanh):
    """TFLM's int8 LOGISTIC / TANH for all 256 inputs; index: the input's byte (v & 255).

    Prepare: input_multiplier / input_left_shift from frexp(scale * 2**27) (Q4.27 input),
    input_range_radius = CalculateInputRadius(4, shift); Eval: gemmlowp on Q4.27, then
    RoundingDivideByPOT(., 23) - 128 (logistic) or RoundingDivideByPOT(., 24) (tanh).
    """
    q, left_shift = math.frexp(scale * float(1 << 27))
    mult = tf_round(q * 2147483648.0)
    if mult == 2147483648:  # static_cast<int32_t>, as TFLM stores it
        mult = INT32_MIN
    radius = _input_radius(4, left_shift)
    table = bytearray(256)
    for v in range(-128, 128):
        x = v - zero_point
        if x <= -radius:
            r = -128
        elif x >= radius:
            r = 127
        else:
            q4 = mbqm(x, mult, left_shift)
            if tanh:
                r = rounding_divide_by_pot(fx_tanh(q4, 4), 24)
            else:
                r = rounding_divide_by_pot(fx_logistic(q4, 4), 23) - 128
            r = -128 if r < -128 else (127 if r > 127 else r)
        table[v & 255] = r & 255
    return table


# ---------------------------------------------------------------- FlatBuffer reader


class _FB:
    """Just enough of a FlatBuffer table reader for the TFLite schema."""

    def __init__(self, buf):
        self.buf = buf

    def u32(self, p):
        return struct.unpack_from("<I", self.buf, p)[0]

    def field(self, table, fid):
        """Absolute position of field `fid` of the table at `table`, or 0 if absent."""
        vt = table - struct.unpack_from("<i", self.buf, table)[0]
        off = 4 + 2 * fid
        if off >= struct.unpack_from("<H", self.buf, vt)[0]:
            return 0
        o = struct.unpack_from("<H", self.buf, vt + off)[0]
        return table + o if o else 0

    def scalar(self, table, fid, fmt, default):
        p = self.field(table, fid) if table else 0
        if not p:
            return default
        return struct.unpack_from(fmt, self.buf, p)[0]

    def ref(self, table, fid):
        """Position of the table/vector/string a field points to, or 0."""
        p = self.field(table, fid)
        return p + self.u32(p) if p else 0

    def vec_len(self, v):
        return self.u32(v) if v else 0

    def vec_table(self, v, i):
        """Position of table i of the vector at v."""
        q = v + 4 + 4 * i
        return q + self.u32(q)

    def vec_tables(self, table, fid):
        v = self.ref(table, fid)
        return [self.vec_table(v, i) for i in range(self.vec_len(v))]

    def vec_scalars(self, table, fid, fmt, size, typecode="i"):
        """A vector of scalars as a compact array (no per-element heap objects)."""
        v = self.ref(table, fid)
        out = array(typecode)
        for i in range(self.vec_len(v)):
            out.append(struct.unpack_from(fmt, self.buf, v + 4 + size * i)[0])
        return out


class _Tensor:
    """Load-time view of one tensor: shape, type, quantization, constant data."""

    def __init__(self, fb, buffers, tpos):
        self.shape = tuple(fb.vec_scalars(tpos, 0, "<i", 4))
        self.type = fb.scalar(tpos, 1, "<b", 0)
        size = 1
        for d in self.shape:
            size *= d
        self.size = size
        q = fb.ref(tpos, 4)
        self.scale = fb.vec_scalars(q, 2, "<f", 4, "f") if q else array("f")
        self.zero_point = fb.vec_scalars(q, 3, "<q", 8) if q else array("i")
        self.data = None
        bidx = fb.scalar(tpos, 2, "<I", 0)
        if bidx and bidx < fb.vec_len(buffers):
            b = fb.vec_table(buffers, bidx)
            v = fb.ref(b, 0)
            n = fb.vec_len(v)
            if n:
                self.data = fb.buf[v + 4:v + 4 + n]
            else:  # large-model layout: data stored after the FlatBuffer
                off = fb.scalar(b, 1, "<Q", 0)
                if off > 1:
                    self.data = fb.buf[off:off + fb.scalar(b, 2, "<Q", 0)]

    def s(self):
        return self.scale[0] if len(self.scale) else 0.0

    def z(self):
        return self.zero_point[0] if len(self.zero_point) else 0

    def ints(self):
        """Values of a constant int32/int64 tensor (shapes, axes, begins, biases)."""
        if self.type == T_INT32:
            return [struct.unpack_from("<i", self.data, 4 * i)[0] for i in range(self.size)]
        if self.type == T_INT64:
            return [struct.unpack_from("<q", self.data, 8 * i)[0] for i in range(self.size)]
        raise ValueError("expected an int32/int64 constant tensor")


def _strides(shape):
    st = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        st[k] = st[k + 1] * shape[k + 1]
    return st


def _contiguous_slice(shape, begin, out_shape):
    """Element offset of a slice that is one contiguous run of its input, else -1."""
    n = len(shape)
    if len(out_shape) != n:
        return -1
    for k in range(n):
        if all(out_shape[j] == 1 for j in range(k)) and all(
                out_shape[j] == shape[j] and begin[j] == 0 for j in range(k + 1, n)):
            st = _strides(shape)
            return sum(begin[j] * st[j] for j in range(n))
    return -1


def _pad_out(in_size, filt, stride, dilation, padding):
    eff = (filt - 1) * dilation + 1
    if padding == PAD_SAME:
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size - eff + stride) // stride
    pad = max(((out - 1) * stride + eff - in_size) // 2, 0)
    return out, pad


def _pool_opts(fb, o):
    """(padding, stride_w, stride_h, filter_w, filter_h, activation) of a Pool2DOptions."""
    return (fb.scalar(o, 0, "<b", 0), fb.scalar(o, 1, "<i", 1), fb.scalar(o, 2, "<i", 1),
            fb.scalar(o, 3, "<i", 1), fb.scalar(o, 4, "<i", 1), fb.scalar(o, 5, "<b", 0))


# ---------------------------------------------------------------- prepare


def _params(ld, fields, extra=0):
    """array('i'): the word-size header, then fields, then `extra` zero slots."""
    p = array("i", bytes(4 * (2 + len(fields) + extra)))
    p[0] = _I.WORD_BITS - 32
    p[1] = 1 if ld.wide else 0
    for i, v in enumerate(fields):
        p[2 + i] = v
    return p


def _mult(real):
    m, sh = quantize_multiplier(real)
    return m, sh


def _channel_mults(inp, filt, out, n_out, float_product):
    """Per output channel (multiplier, shift) as TFLM's Prepare computes them."""
    s_in, s_out = inp.s(), out.s()
    per_channel = len(filt.scale) > 1
    out_m = []
    for c in range(n_out):
        s_w = filt.scale[c] if per_channel else filt.scale[0]
        if float_product and not per_channel:
            # GetQuantizedConvolutionMultipler: float product, then double division.
            real = f32(s_in * s_w) / s_out
        else:
            real = s_in * s_w / s_out
        out_m.append(quantize_multiplier(real))
    return out_m


def _bias(ld, op):
    if len(op[1]) > 2 and op[1][2] >= 0:
        b = ld.t(op[1][2])
        if b.type != T_INT32:
            raise ValueError("%s: only int32 biases are supported" % _I.OP_NAMES[op[0]])
        return b.ints()
    return None


def _check_weights(op, filt):
    if filt.type != T_INT8 or filt.data is None:
        raise ValueError("%s: only constant int8 weights are supported" % _I.OP_NAMES[op[0]])
    if any(z != 0 for z in filt.zero_point):
        raise ValueError("%s: int8 weights must be symmetric (zero point 0)" % _I.OP_NAMES[op[0]])


def prepare_conv_2d(ld, op):
    fb, o, extra = ld.fb, op[3], op[4] or {}
    padding = fb.scalar(o, 0, "<b", 0)
    stride_w = fb.scalar(o, 1, "<i", 1)
    stride_h = fb.scalar(o, 2, "<i", 1)
    act = fb.scalar(o, 3, "<b", 0)
    dil_w = fb.scalar(o, 4, "<i", 1)
    dil_h = fb.scalar(o, 5, "<i", 1)
    inp, filt = ld.t(extra.get("t_in", op[1][0])), ld.t(op[1][1])
    out = ld.t(extra.get("conv_out", op[2][0]))
    bias = _bias(ld, op)
    B, H, W, C = inp.shape
    OC, KH, KW, FC = filt.shape
    _check_weights(op, filt)
    if FC != C:
        raise ValueError("grouped CONV_2D is not supported")
    OH, PH = _pad_out(H, KH, stride_h, dil_h, padding)
    OW, PW = _pad_out(W, KW, stride_w, dil_w, padding)
    # input layout: NHWC, or the input of a TRANSPOSE folded into this op
    x = op[1][0]
    st = _strides(ld.t(x).shape)
    perm = extra.get("perm", (0, 1, 2, 3))
    K = KH * KW * C
    K4 = (K + 3) & ~3
    KHC = KH * C
    off = -inp.z()
    # filters in offset binary (v = w + 128), kx-major ([oc][kx][ky][c], as the kernel's
    # window columns), rows padded with zeros to K4 bytes
    wv = bytearray(OC * K4)
    src = filt.data
    cst = []
    for oc in range(OC):
        sv = 0
        for ky in range(KH):
            for kx in range(KW):
                i = ((oc * KH + ky) * KW + kx) * C
                j = oc * K4 + (kx * KH + ky) * C
                for c in range(C):
                    v = src[i + c] ^ 128
                    wv[j + c] = v
                    sv += v
        cst.append((bias[oc] if bias else 0) + (off - 128) * sv - 128 * (off - 128) * K)
    lo, hi = activation_range(act, out.s(), out.z())
    pool = extra.get("pool")
    if pool:  # a tiled MAX_POOL_2D fused in: (filter_h, filter_w, act) and its output tensor
        FH, FW, pact, pout = pool
        pt = ld.t(pout)
        plo, phi = activation_range(pact, pt.s(), pt.z())
        POH, POW = OH // FH, OW // FW
    else:
        FH = FW = 1
        plo, phi = -128, 127
        POH, POW = OH, OW
    NCOL = (OW - 1) * stride_w + (KW - 1) * dil_w + 1  # columns of one strip (padding included)
    SB = ((NCOL * KHC + 3) & ~3) + 4  # bytes per strip; the 4 spare cover the K4 over-read
    p = _params(ld, (B, H, W, C, OC, KH, KW, stride_h, stride_w, dil_h, dil_w, PH, PW, K4,
                     128 - off, out.z(), lo, hi, st[perm[0]], st[perm[1]], st[perm[2]],
                     st[perm[3]], POH, POW, FH, FW, plo, phi, NCOL, SB), 3 * OC)
    q = 32
    for oc, (m, sh) in enumerate(_channel_mults(inp, filt, out, OC, False)):
        p[q] = cst[oc]
        p[q + 1] = m
        p[q + 2] = sh
        q += 3
    # scratch (interp_viper.conv): strips, window, column sums, accumulators, pooling maxima
    scratch = bytearray(FH * SB + K4 + 4 * FH * NCOL + 5 * OC)
    return ("conv", ld.view(x), wv, ld.view(op[2][0]), scratch, p)


def prepare_fully_connected(ld, op):
    fb, o = ld.fb, op[3]
    act = fb.scalar(o, 0, "<b", 0)
    if fb.scalar(o, 1, "<b", 0) != 0:
        raise ValueError("FULLY_CONNECTED: shuffled weights format is not supported")
    inp, filt, out = ld.t(op[1][0]), ld.t(op[1][1]), ld.t(op[2][0])
    _check_weights(op, filt)
    OC, K = filt.shape
    B = inp.size // K
    off = -inp.z()
    w = filt.data
    # bias + the offset-binary terms, shared by the ops that use the same weights and input
    key = (op[1][1], op[1][2] if len(op[1]) > 2 else -1, off)
    cst = ld.shared.get(key)
    if cst is None:
        bias = _bias(ld, op)
        cst = array("i", bytes(4 * OC))
        for oc in range(OC):
            sv = 0
            for i in range(oc * K, oc * K + K):
                sv += w[i] ^ 128
            cst[oc] = (bias[oc] if bias else 0) + (off - 128) * sv - 128 * (off - 128) * K
        ld.shared[key] = cst
    lo, hi = activation_range(act, out.s(), out.z())
    # per channel (multiplier, shift), then room for the window (K bytes) at the end
    p = _params(ld, (B, OC, K, out.z(), lo, hi), 2 * OC + (K + 3) // 4)
    q = 8
    for m, sh in _channel_mults(inp, filt, out, OC, True):
        p[q] = m
        p[q + 1] = sh
        q += 2
    return ("fc", ld.view(op[1][0]), w, ld.view(op[2][0]), cst, p)


def prepare_max_pool_2d(ld, op):
    padding, stride_w, stride_h, filter_w, filter_h, act = _pool_opts(ld.fb, op[3])
    inp, out = ld.t(op[1][0]), ld.t(op[2][0])
    B, H, W, C = inp.shape
    OH, PH = _pad_out(H, filter_h, stride_h, 1, padding)
    OW, PW = _pad_out(W, filter_w, stride_w, 1, padding)
    lo, hi = activation_range(act, out.s(), out.z())
    p = _params(ld, (B, H, W, C, OH, OW, filter_h, filter_w, stride_h, stride_w, PH, PW, lo, hi))
    return ("max_pool", ld.view(op[1][0]), 0, ld.view(op[2][0]), 0, p)


def _broadcast_steps(ld, op):
    """Index steps (s1, s2) of two inputs: 1 elementwise, 0 a single broadcast value."""
    t1, t2, out = ld.t(op[1][0]), ld.t(op[1][1]), ld.t(op[2][0])
    steps = []
    for t in (t1, t2):
        if t.size == out.size:
            steps.append(1)
        elif t.size == 1:
            steps.append(0)
        else:
            raise ValueError("%s: broadcasting %s to %s is not supported"
                             % (_I.OP_NAMES[op[0]], t.shape, out.shape))
    return t1, t2, out, steps[0], steps[1]


def prepare_add(ld, op):
    act = ld.fb.scalar(op[3], 0, "<b", 0)
    in1, in2, out, s1, s2 = _broadcast_steps(ld, op)
    a, b = in1.s(), in2.s()
    twice_max = 2.0 * max(a, b)
    lo, hi = activation_range(act, out.s(), out.z())
    p = _params(ld, (out.size, s1, s2, -in1.z(), -in2.z(), out.z())
                + _mult(a / twice_max) + _mult(b / twice_max)
                + _mult(twice_max / ((1 << 20) * out.s())) + (lo, hi))
    return ("add", ld.view(op[1][0]), ld.view(op[1][1]), ld.view(op[2][0]), 0, p)


def prepare_mul(ld, op):
    act = ld.fb.scalar(op[3], 0, "<b", 0)
    in1, in2, out, s1, s2 = _broadcast_steps(ld, op)
    lo, hi = activation_range(act, out.s(), out.z())
    # TFLM: double(s1) * double(s2) / double(s_out)
    p = _params(ld, (out.size, s1, s2, -in1.z(), -in2.z(), out.z())
                + _mult(in1.s() * in2.s() / out.s()) + (lo, hi))
    return ("mul", ld.view(op[1][0]), ld.view(op[1][1]), ld.view(op[2][0]), 0, p)


def _prepare_lut(ld, op, tanh):
    inp, out = ld.t(op[1][0]), ld.t(op[2][0])
    if not tanh and out.z() != -128:
        raise ValueError("LOGISTIC: int8 output zero point must be -128 (as TFLM requires)")
    key = (tanh, inp.s(), inp.z())
    table = ld.shared.get(key)
    if table is None:
        table = ld.shared[key] = lut_logistic_tanh(inp.s(), inp.z(), tanh)
    return ("lut", ld.view(op[1][0]), table, ld.view(op[2][0]), 0, _params(ld, (out.size,)))


def prepare_logistic(ld, op):
    return _prepare_lut(ld, op, False)


def prepare_tanh(ld, op):
    return _prepare_lut(ld, op, True)


def prepare_softmax(ld, op):
    beta = ld.fb.scalar(op[3], 0, "<f", 1.0)
    inp, out = ld.t(op[1][0]), ld.t(op[2][0])
    if out.z() != -128:
        raise ValueError("SOFTMAX: int8 output zero point must be -128 (as TFLM requires)")
    # PreprocessSoftmaxScaling(beta, input_scale, 5 integer bits), CalculateInputRadius(5, .)
    real = min(beta * inp.s() * float(1 << 26), float((1 << 31) - 1))
    mult, left_shift = quantize_multiplier(real)
    diff_min = -_input_radius(5, left_shift)
    table = array("i", bytes(4 * 256))  # exp(-k * beta * scale) in Q0.31, k = 0..255
    for k in range(256):
        if -k >= diff_min:
            table[k] = exp_on_negative_values(srdhm(wrap32(-k * (1 << left_shift)), mult), 5)
    depth = inp.shape[-1]
    p = _params(ld, (inp.size // depth, depth, diff_min))
    return ("softmax", ld.view(op[1][0]), table, ld.view(op[2][0]), 0, p)


def prepare_quantize(ld, op):
    inp, out = ld.t(op[1][0]), ld.t(op[2][0])
    if inp.type != T_INT8 or out.type != T_INT8:
        raise ValueError("QUANTIZE: only int8 -> int8 requantization is supported")
    p = _params(ld, (out.size, inp.z(), out.z()) + _mult(inp.s() / out.s()))
    return ("quantize", ld.view(op[1][0]), 0, ld.view(op[2][0]), 0, p)


def _gather_params(ld, base, strides, out_shape):
    # the viper kernel keeps its odometer counters in the len(out_shape) slots at the end
    return _params(ld, [len(out_shape), base] + list(out_shape) + list(strides), len(out_shape))


def prepare_transpose(ld, op):
    inp, out = ld.t(op[1][0]), ld.t(op[2][0])
    perm = ld.t(op[1][1]).ints()
    st = _strides(inp.shape)
    p = _gather_params(ld, 0, [st[k] for k in perm], out.shape)
    return ("gather", ld.view(op[1][0]), 0, ld.view(op[2][0]), 0, p)


def prepare_slice(ld, op):
    # contiguous slices are views (see _Loader._alias); this is the strided case
    inp, out = ld.t(op[1][0]), ld.t(op[2][0])
    begin = ld.t(op[1][1]).ints()
    st = _strides(inp.shape)
    base = sum(begin[k] * st[k] for k in range(len(begin)))
    p = _gather_params(ld, base, st, out.shape)
    return ("gather", ld.view(op[1][0]), 0, ld.view(op[2][0]), 0, p)


def prepare_reduce(ld, op):
    inp, axis_t, out = ld.t(op[1][0]), ld.t(op[1][1]), ld.t(op[2][0])
    n = len(inp.shape)
    axes = []
    for a in axis_t.ints():
        a = a + n if a < 0 else a
        if a not in axes:
            axes.append(a)
    kept = [k for k in range(n) if k not in axes]
    kst = _strides([inp.shape[k] for k in kept])
    st_full = [0] * n
    for j, k in enumerate(kept):
        st_full[k] = kst[j]
    n_out = out.size
    n_red = inp.size // max(n_out, 1)
    index = array("H" if n_out < 65536 else "i", bytes(inp.size * (2 if n_out < 65536 else 4)))
    _I._plain().gather(array("i", range(n_out)), 0, index, 0,
                       array("i", [0, 0, n, 0] + list(inp.shape) + st_full))
    m, sh = quantize_multiplier(inp.s() / out.s())
    if op[0] == OP_MEAN and n_red > 0:
        # TFLM folds 1 / n into the multiplier: shift = floor(log2 n), capped
        shift = -1
        t = n_red
        while t:
            t >>= 1
            shift += 1
        shift = min(shift, 32, 31 + sh)
        m = (m << shift) // n_red
        sh -= shift
    p = _params(ld, (inp.size, n_out, inp.z(), out.z(), m, sh))
    return ("reduce", ld.view(op[1][0]), index, ld.view(op[2][0]), 0, p)


PREPARE = {
    OP_ADD: prepare_add,
    OP_CONV_2D: prepare_conv_2d,
    OP_FULLY_CONNECTED: prepare_fully_connected,
    OP_LOGISTIC: prepare_logistic,
    OP_MAX_POOL_2D: prepare_max_pool_2d,
    OP_MUL: prepare_mul,
    OP_SOFTMAX: prepare_softmax,
    OP_TANH: prepare_tanh,
    OP_TRANSPOSE: prepare_transpose,
    OP_SLICE: prepare_slice,
    OP_SUM: prepare_reduce,
    OP_MEAN: prepare_reduce,
    OP_QUANTIZE: prepare_quantize,
}
# RESHAPE and CONCATENATION are views or copies, handled by the loader.
SUPPORTED = tuple(PREPARE) + (OP_RESHAPE, OP_CONCATENATION)


# ---------------------------------------------------------------- loader


def _plan_arena(sizes, first, last):
    """Greedy offsets (largest first) so buffers alive at the same time never overlap."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    placed = []  # (offset, end, first, last)
    offsets = [0] * len(sizes)
    total = 0
    for i in order:
        busy = sorted((o, e) for o, e, f, l in placed if not (l < first[i] or last[i] < f))
        off = 0
        for a, b in busy:
            if off + sizes[i] <= a:
                break
            if b > off:
                off = b
        offsets[i] = off
        placed.append((off, off + sizes[i], first[i], last[i]))
        if off + sizes[i] > total:
            total = off + sizes[i]
    return offsets, total


class Loader:
    """Everything needed while loading one model; dropped once the plan is built.

    Operators stay in the FlatBuffer and are read on demand (``op(k)``: code, inputs,
    outputs, options position, extras); the rewrites live in ``over``: a TRANSPOSE feeding
    a CONV_2D becomes the conv's input strides, a tiled MAX_POOL_2D after a CONV_2D runs
    inside the conv (``dead`` marks the ops they replace). Tensors: ``parent``/``poff``
    say which tensor a view lives in (and where); ``offset`` is each one's arena place.
    """

    def __init__(self, model_bytes, wide, share_arena=True, fuse=True):
        self.fb = fb = _FB(memoryview(model_bytes))
        self.wide = wide
        self.shared = {}  # tables and constants shared between ops
        model = fb.u32(0)
        codes = bytearray()
        for c in fb.vec_tables(model, 1):
            code = max(fb.scalar(c, 0, "<b", 0), fb.scalar(c, 3, "<i", 0))
            codes.append(code if code in SUPPORTED else 255)
            if code not in SUPPORTED:
                self.unsupported = code
        sgs = fb.ref(model, 2)
        if fb.vec_len(sgs) != 1:
            raise ValueError("expected 1 subgraph, got %d" % fb.vec_len(sgs))
        sg = fb.vec_table(sgs, 0)
        self.buffers = fb.ref(model, 4)
        self.tensors = fb.ref(sg, 0)
        self.inputs = list(fb.vec_scalars(sg, 1, "<i", 4))
        self.outputs = list(fb.vec_scalars(sg, 2, "<i", 4))
        if not self.inputs:
            raise ValueError("the model has no input")
        ops = fb.ref(sg, 3)
        n_ops = fb.vec_len(ops)
        self.op_pos = array("i", bytes(4 * n_ops))
        self.op_codes = bytearray(n_ops)
        for k in range(n_ops):
            o = fb.vec_table(ops, k)
            self.op_pos[k] = o
            code = codes[fb.scalar(o, 0, "<I", 0)]
            if code == 255:
                raise ValueError("unsupported operator %s (builtin code %d)"
                                 % (_I.OP_NAMES.get(self.unsupported, "?"), self.unsupported))
            self.op_codes[k] = code
        self.dead = bytearray(n_ops)  # replaced by a fused op
        self.is_view = bytearray(n_ops)  # RESHAPE / SLICE whose output is a view
        self.over = {}  # op index -> (inputs, outputs, extras) after a rewrite
        n = fb.vec_len(self.tensors)
        self._cache = {}
        self.size = array("i", bytes(4 * n))
        self.const = bytearray(n)
        for i in range(n):
            t = _Tensor(fb, self.buffers, fb.vec_table(self.tensors, i))
            self.size[i] = t.size
            self.const[i] = 1 if t.data is not None else 0
            if t.data is None and t.type != T_INT8:
                raise ValueError("non-int8 activation tensor %d (type %d)" % (i, t.type))
        self.parent = array("i", [-1] * n)
        self.poff = array("i", bytes(4 * n))
        self.copies = {}  # op index -> [(input, element offset in output)]: run-time copies
        self._views = {}
        if fuse:
            self._fuse()
        self._alias()
        self._allocate(share_arena)

    def op(self, k):
        """(code, inputs, outputs, options position, extras) of op k."""
        o = self.op_pos[k]
        r = self.over.get(k)
        if r:
            return (self.op_codes[k], r[0], r[1], self.fb.ref(o, 4), r[2])
        return (self.op_codes[k], tuple(self.fb.vec_scalars(o, 1, "<i", 4)),
                tuple(self.fb.vec_scalars(o, 2, "<i", 4)), self.fb.ref(o, 4), None)

    def live_ops(self):
        return [k for k in range(len(self.op_pos)) if not self.dead[k]]

    def t(self, i):
        """Load-time _Tensor i (cached while one op is prepared)."""
        t = self._cache.get(i)
        if t is None:
            t = self._cache[i] = _Tensor(self.fb, self.buffers, self.fb.vec_table(self.tensors, i))
        return t

    def _fuse(self):
        readers = {}
        producer = {}
        for k in range(len(self.op_pos)):
            code, ins, outs, opts, extra = self.op(k)
            for i in ins:
                if i >= 0:
                    readers.setdefault(i, []).append(k)
            for i in outs:
                producer[i] = k
        for k in range(len(self.op_pos)):
            if self.op_codes[k] != OP_CONV_2D or self.dead[k]:
                continue
            code, ins, outs, opts, extra = self.op(k)
            extra = {}
            i = ins[0]
            pk = producer.get(i)
            if pk is not None and not self.dead[pk] and self.op_codes[pk] == OP_TRANSPOSE and \
                    readers.get(i) == [k] and i not in self.outputs and len(self.t(i).shape) == 4:
                t_ins = self.op(pk)[1]
                extra["t_in"] = i  # the transposed tensor: shape and quantization
                extra["perm"] = tuple(self.t(t_ins[1]).ints())
                ins = (t_ins[0],) + ins[1:]  # read the transpose's input
                self.dead[pk] = 1
            o = outs[0]
            rk = readers.get(o)
            if rk and len(rk) == 1 and o not in self.outputs and not self.dead[rk[0]] \
                    and self.op_codes[rk[0]] == OP_MAX_POOL_2D:
                pool = self.op(rk[0])
                padding, sw, sh, fw, fh, act = _pool_opts(self.fb, pool[3])
                OH, OW = self.t(o).shape[1:3]
                if pool[1][0] == o and fh == sh and fw == sw and \
                        (padding != PAD_SAME or (OH % fh == 0 and OW % fw == 0)):
                    extra["pool"] = (fh, fw, act, pool[2][0])
                    extra["conv_out"] = o
                    outs = pool[2]
                    self.dead[rk[0]] = 1
            if extra:
                self.over[k] = (ins, outs, extra)
            self._cache = {}

    def root(self, i):
        off = 0
        while self.parent[i] >= 0:
            off += self.poff[i]
            i = self.parent[i]
        return i, off

    def _free(self, i):
        """Can tensor i become a view into another buffer?"""
        return (self.parent[i] < 0 and not self.const[i] and i not in self.inputs
                and i not in self.outputs)

    def _alias(self):
        """RESHAPE and contiguous SLICE outputs view their input; CONCATENATION inputs view
        their part of a single-row output where nothing else claims them."""
        for k in self.live_ops():
            code = self.op_codes[k]
            if code == OP_RESHAPE or code == OP_SLICE:
                code, ins, outs, opts, extra = self.op(k)
                i, o = ins[0], outs[0]
                off = 0 if code == OP_RESHAPE else _contiguous_slice(
                    self.t(i).shape, self.t(ins[1]).ints(), self.t(o).shape)
                if off >= 0 and self._free(o) and self.root(i)[0] != o:
                    self.parent[o] = i
                    self.poff[o] = off
                    self.is_view[k] = 1
                elif code == OP_RESHAPE:
                    self.copies[k] = [(i, 0)]
            elif code == OP_CONCATENATION:
                code, ins, outs, opts, extra = self.op(k)
                out = self.t(outs[0])
                for i in ins:
                    t = self.t(i)
                    if t.s() != out.s() or t.z() != out.z():
                        raise ValueError("CONCATENATION: inputs must have the output's scale "
                                         "and zero point (as TFLM requires)")
                axis = self.fb.scalar(opts, 0, "<i", 0)
                if axis < 0:
                    axis += len(out.shape)
                outer = 1
                for d in out.shape[:axis]:
                    outer *= d
                parts = []
                pos = 0
                seen = []
                for i in ins:
                    if outer == 1 and self._free(i) and i not in seen \
                            and self.root(outs[0])[0] != i:
                        self.parent[i] = outs[0]
                        self.poff[i] = pos
                    else:
                        parts.append((i, pos))
                    seen.append(i)
                    pos += self.size[i] // outer
                if parts:
                    if outer != 1:  # interleaved rows: every input is copied row by row
                        parts = [(i, -1) for i in ins]
                    self.copies[k] = parts
            self._cache = {}

    def _allocate(self, share_arena):
        """One arena: every root buffer gets an offset; views follow their roots."""
        live = self.live_ops()
        n_ops = len(live)
        first, last = {}, {}

        def use(i, k):
            r = self.root(i)[0]
            if r not in first:
                first[r] = k
            last[r] = max(last.get(r, k), k)

        for i in self.inputs:
            use(i, -1)
        for j, k in enumerate(live):
            code, ins, outs, opts, extra = self.op(k)
            for i in ins + outs:
                if i >= 0 and not self.const[i]:
                    use(i, j)
        for i in self.outputs:
            use(i, n_ops)
        roots = list(first)
        if not share_arena:
            for r in roots:
                first[r], last[r] = -1, n_ops
        offsets, total = _plan_arena([self.size[r] for r in roots], [first[r] for r in roots],
                                     [last[r] for r in roots])
        self.offset = array("i", [-1] * len(self.size))
        for r, off in zip(roots, offsets):
            self.offset[r] = off
        for i in range(len(self.size)):
            if self.parent[i] >= 0:
                r, off = self.root(i)
                if self.offset[r] >= 0:
                    self.offset[i] = self.offset[r] + off
        self.arena_size = total
        del first, last, roots, offsets, live
        _collect()  # defragment before the arena's one large allocation
        self.arena = array("b", bytes(total))
        self.mv = memoryview(self.arena)

    def view(self, i):
        """int8 view of tensor i in the arena (one object per tensor)."""
        v = self._views.get(i)
        if v is None:
            off = self.offset[i]
            v = self._views[i] = self.mv[off:off + self.size[i]]
        return v

    def plan(self, table):
        """[(kernel, a, b, c, d, p)] and the op code of each step."""
        plan = []
        codes = bytearray()
        for k in self.live_ops():
            code = self.op_codes[k]
            if code in PREPARE and not self.is_view[k]:
                e = PREPARE[code](self, self.op(k))
                plan.append((table[e[0]],) + e[1:])
                codes.append(code)
            if k in self.copies:
                op = self.op(k)
                for i, pos in self.copies[k]:
                    for e in self._copy_entries(op, i, pos):
                        plan.append((table["copy"],) + e)
                        codes.append(code)
            self._cache = {}
            _collect()
        return plan, codes

    def _copy_entries(self, op, i, pos):
        """Run-time copies of input i into output op[2][0] (element offset pos; -1: rows)."""
        o = op[2][0]
        src = self.view(i)
        dst = self.view(o)
        if pos >= 0:
            return [(src, 0, dst[pos:pos + len(src)], 0, _params(self, (len(src),)))]
        out = self.t(o)
        axis = self.fb.scalar(op[3], 0, "<i", 0)
        if axis < 0:
            axis += len(out.shape)
        outer = 1
        for d in out.shape[:axis]:
            outer *= d
        row = out.size // outer
        before = 0
        for j in op[1]:
            if j == i:
                break
            before += self.size[j] // outer
        inner = self.size[i] // outer
        p = _params(self, (inner,))
        return [(src[r * inner:(r + 1) * inner], 0,
                 dst[r * row + before:r * row + before + inner], 0, p) for r in range(outer)]


def build(it, model_bytes, share_arena, kernels, wide, fuse=True):
    """Load model_bytes into the Interpreter `it` (sets everything invoke needs)."""
    ld = Loader(model_bytes, wide, share_arena, fuse)
    it._arena = ld.arena
    it.arena_size = ld.arena_size
    it._plan, it.plan_codes = ld.plan(kernels)
    it.op_codes = ld.op_codes
    if not share_arena:  # debugging: every tensor keeps its values (Interpreter.tensor)
        it._mv = ld.mv
        it._offset = ld.offset
        it._size = ld.size
    inp = ld.t(ld.inputs[0])
    it._input = ld.view(ld.inputs[0])
    it._inputs = [ld.view(i) for i in ld.inputs]  # every graph input (tests feed them all)
    it._p_in = _params(ld, (inp.size,))
    it._outputs = [ld.view(i) for i in ld.outputs]
    it.input_shape = inp.shape
    it.input_scale = inp.s()
    it.input_zero_point = inp.z()
    it.outputs = []
    for i in ld.outputs:
        t = ld.t(i)
        it.outputs.append({"shape": t.shape, "scale": t.s(), "zero_point": t.z()})
    # MicroPython's collector is conservative: a stale pointer to `ld` left on the stack
    # would keep everything it holds alive, so let go of it all explicitly.
    for name in ("fb", "shared", "op_pos", "op_codes", "dead", "is_view", "over", "_cache",
                 "size", "const", "parent", "poff", "copies", "_views", "offset", "arena", "mv",
                 "inputs", "outputs"):
        setattr(ld, name, None)
