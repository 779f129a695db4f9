"""Minimal int8 TFLite interpreter in pure (Micro)Python for the helmet.

Reads the .tflite FlatBuffer directly with struct.unpack_from, keeps weights as
memoryview slices of the model bytes (no copy), preallocates every activation buffer
once at load (a greedy-planned arena, reused across invocations) and runs the int8
kernels of TFLite's reference implementation:

- CONV_2D / FULLY_CONNECTED / ADD / MUL / SUM / QUANTIZE: int32 accumulators and
  fixed-point multipliers (QuantizeMultiplier at load, MultiplyByQuantizedMultiplier
  with the double-rounding path at run time), bit-exact with TFLite's integer kernels.
- LOGISTIC / TANH / SOFTMAX: the 256-entry float-built lookup tables that LiteRT's
  (optimized, host) kernels use, built at load with float32-rounded math.

Runs under CPython and MicroPython (no numpy, no typing, no f-strings).
"""

import gc
import math
import struct
from array import array

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# The viper kernel lives in its own module: a port built without the viper emitter cannot
# compile it (SyntaxError), and CPython has no `micropython` (ImportError). `micropython.viper`
# is compile-time syntax, not an attribute, so it cannot be probed with hasattr.
try:
    from . import interp_viper as _viper
except (ImportError, SyntaxError):
    try:
        import interp_viper as _viper
    except (ImportError, SyntaxError):
        _viper = None

# TFLite BuiltinOperator codes (schema.fbs).
OP_ADD = const(0)
OP_CONCATENATION = const(2)
OP_CONV_2D = const(3)
OP_FULLY_CONNECTED = const(9)
OP_LOGISTIC = const(14)
OP_MAX_POOL_2D = const(17)
OP_MUL = const(18)
OP_RESHAPE = const(22)
OP_SOFTMAX = const(25)
OP_TANH = const(28)
OP_TRANSPOSE = const(39)
OP_SLICE = const(65)
OP_SUM = const(74)
OP_QUANTIZE = const(114)

OP_NAMES = {
    0: "ADD", 1: "AVERAGE_POOL_2D", 2: "CONCATENATION", 3: "CONV_2D", 4: "DEPTHWISE_CONV_2D",
    6: "DEQUANTIZE", 9: "FULLY_CONNECTED", 14: "LOGISTIC", 17: "MAX_POOL_2D", 18: "MUL",
    19: "RELU", 22: "RESHAPE", 25: "SOFTMAX", 28: "TANH", 34: "PAD", 39: "TRANSPOSE",
    40: "MEAN", 41: "SUB", 45: "STRIDED_SLICE", 49: "SPLIT", 65: "SLICE", 74: "SUM",
    83: "PACK", 114: "QUANTIZE",
}

# TensorType codes.
T_FLOAT32 = const(0)
T_INT32 = const(2)
T_INT64 = const(4)
T_INT8 = const(9)

# Padding and fused activation codes.
PAD_SAME = const(0)
ACT_NONE = const(0)
ACT_RELU = const(1)
ACT_RELU_N1_TO_1 = const(2)
ACT_RELU6 = const(3)

INT32_MIN = const(-2147483648)
INT32_MAX = const(2147483647)

_F32 = array("f", [0.0])


def f32(x):
    """Round a Python float to float32, as C++ float arithmetic does."""
    _F32[0] = x
    return _F32[0]


def tf_round(x):
    """std::round: half away from zero; returns int."""
    if x >= 0:
        return int(math.floor(x + 0.5))
    return -int(math.floor(-x + 0.5))


def quantize_value(x, scale, zero_point):
    """The shared input quantization rule (helmet and host):

    q = clamp(floor(x / scale + 0.5) + zero_point, -128, 127)
    """
    q = int(math.floor(x / scale + 0.5)) + zero_point
    if q < -128:
        return -128
    if q > 127:
        return 127
    return q


# ---------------------------------------------------------------- fixed point math


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


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul for int32 a, b."""
    if a == INT32_MIN and b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    if ab >= 0:
        return (ab + 1073741824) >> 31
    # C++ integer division truncates toward zero.
    return -((-(ab + (1 - 1073741824))) >> 31)


def rounding_divide_by_pot(x, exponent):
    """RoundingDivideByPOT: x / 2**exponent rounded half away from zero."""
    if exponent == 0:
        return x
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def mbqm(x, quantized_multiplier, shift):
    """MultiplyByQuantizedMultiplier (double-rounding path, TFLite's default)."""
    if shift > 0:
        x = x * (1 << shift)
        if x > INT32_MAX:  # int32 wrap as in C++ (never happens for sane scales)
            x = ((x + 2147483648) & 0xFFFFFFFF) - 2147483648
        return rounding_divide_by_pot(srdhm(x, quantized_multiplier), 0)
    return rounding_divide_by_pot(srdhm(x, quantized_multiplier), -shift)


def mbqm_single(x, quantized_multiplier, shift):
    """Single-rounding MultiplyByQuantizedMultiplier: round(x * m * 2**(shift - 31)), ties up.

    TFLite's per-channel FULLY_CONNECTED reference kernel rounds this way (verified
    value-by-value against LiteRT's BUILTIN_REF kernels); the other kernels use mbqm.
    """
    total_shift = 31 - shift
    return (x * quantized_multiplier + (1 << (total_shift - 1))) >> total_shift


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


# ---------------------------------------------------------------- FlatBuffer reader


class _FB:
    """Just enough of a FlatBuffer table reader for the TFLite schema."""

    def __init__(self, buf):
        self.buf = buf

    def u8(self, p):
        return self.buf[p]

    def i32(self, p):
        return struct.unpack_from("<i", self.buf, p)[0]

    def u32(self, p):
        return struct.unpack_from("<I", self.buf, p)[0]

    def field(self, table, fid):
        """Absolute position of field `fid` of the table at `table`, or 0 if absent."""
        vt = table - self.i32(table)
        vt_size = struct.unpack_from("<H", self.buf, vt)[0]
        off = 4 + 2 * fid
        if off >= vt_size:
            return 0
        o = struct.unpack_from("<H", self.buf, vt + off)[0]
        return table + o if o else 0

    def scalar(self, table, fid, fmt, default):
        p = self.field(table, fid)
        if not p:
            return default
        return struct.unpack_from(fmt, self.buf, p)[0]

    def ref(self, table, fid):
        """Position of the table/vector/string a field points to, or 0."""
        p = self.field(table, fid)
        return p + self.u32(p) if p else 0

    def vec_len(self, v):
        return self.u32(v) if v else 0

    def vec_tables(self, table, fid):
        v = self.ref(table, fid)
        out = []
        for i in range(self.vec_len(v)):
            q = v + 4 + 4 * i
            out.append(q + self.u32(q))
        return out

    def vec_scalars(self, table, fid, fmt, size, typecode="i"):
        """A vector of scalars as a compact array (no per-element heap objects)."""
        v = self.ref(table, fid)
        n = self.vec_len(v)
        out = array(typecode)
        for i in range(n):
            out.append(struct.unpack_from(fmt, self.buf, v + 4 + size * i)[0])
        return out

    def vec_bytes(self, table, fid):
        v = self.ref(table, fid)
        n = self.vec_len(v)
        return self.buf[v + 4:v + 4 + n] if n else None


_EMPTY_F = array("f")
_EMPTY_I = array("i")


class _Tensor:
    """Shape, type, quantization and (for constants) data of one tensor."""

    def __init__(self, shape, ttype, scale, zero_point, qdim, data):
        self.shape = shape
        self.type = ttype
        self.scale = scale  # list of float (per-channel) or []
        self.zero_point = zero_point  # list of int
        self.qdim = qdim
        self.data = data  # memoryview into the model bytes (constants) or None
        self.size = 1
        for d in shape:
            self.size *= d
        self.buf = None  # activation storage (array('b') or memoryview of the arena)

    def s(self):
        return self.scale[0] if self.scale else 0.0

    def z(self):
        return self.zero_point[0] if self.zero_point else 0


def _read_tensor(fb, t, buffers):
    shape = tuple(fb.vec_scalars(t, 0, "<i", 4))
    ttype = fb.scalar(t, 1, "<b", 0)
    bidx = fb.scalar(t, 2, "<I", 0)
    scale, zp, qdim = _EMPTY_F, _EMPTY_I, 0
    q = fb.ref(t, 4)
    if q:
        scale = fb.vec_scalars(q, 2, "<f", 4, "f")
        zp = fb.vec_scalars(q, 3, "<q", 8)
        qdim = fb.scalar(q, 6, "<i", 0)
    data = buffers[bidx] if bidx < len(buffers) else None
    return _Tensor(shape, ttype, scale, zp, qdim, data)


def _read_buffers(fb, model):
    out = []
    for b in fb.vec_tables(model, 4):
        data = fb.vec_bytes(b, 0)
        off = fb.scalar(b, 1, "<Q", 0)
        if data is None and off > 1:  # large-model layout: data stored after the FlatBuffer
            size = fb.scalar(b, 2, "<Q", 0)
            data = fb.buf[off:off + size]
        out.append(data)
    return out


def _const_ints(t):
    """Values of a constant int32/int64 tensor (shapes, axes, begins...)."""
    if t.type == T_INT32:
        return [struct.unpack_from("<i", t.data, 4 * i)[0] for i in range(t.size)]
    if t.type == T_INT64:
        return [struct.unpack_from("<q", t.data, 8 * i)[0] for i in range(t.size)]
    raise ValueError("expected an int32/int64 constant tensor")


def _strides(shape):
    st = [1] * len(shape)
    for k in range(len(shape) - 2, -1, -1):
        st[k] = st[k + 1] * shape[k + 1]
    return st


# ---------------------------------------------------------------- generic movement


def _gather(src, base, strides, out_shape, dst):
    """dst[i] = src[base + sum(idx_k * strides[k])] over the odometer of out_shape."""
    n = len(out_shape)
    idx = [0] * n
    off = base
    total = len(dst)
    last = n - 1
    for o in range(total):
        dst[o] = src[off]
        k = last
        while k >= 0:
            idx[k] += 1
            off += strides[k]
            if idx[k] < out_shape[k]:
                break
            off -= strides[k] * out_shape[k]
            idx[k] = 0
            k -= 1


def _broadcast_strides(in_shape, out_shape):
    """Strides of `in_shape` laid over `out_shape` (0 on broadcast dims)."""
    n = len(out_shape)
    shape = [1] * (n - len(in_shape)) + list(in_shape)
    st = _strides(shape)
    return [0 if shape[k] == 1 and out_shape[k] != 1 else st[k] for k in range(n)]


def _broadcast_offsets(shape1, shape2, out_shape):
    """Per-output-element offsets into both inputs (None, None if shapes match)."""
    if tuple(shape1) == tuple(out_shape) and tuple(shape2) == tuple(out_shape):
        return None, None
    total = 1
    for d in out_shape:
        total *= d
    kind = "H" if total < 65536 else "i"
    o1 = array(kind, bytes(total * (2 if kind == "H" else 4)))
    o2 = array(kind, bytes(len(o1) * (2 if kind == "H" else 4)))
    if total:
        st1 = _broadcast_strides(shape1, out_shape)
        st2 = _broadcast_strides(shape2, out_shape)
        n1 = 1
        for d in shape1:
            n1 *= d
        n2 = 1
        for d in shape2:
            n2 *= d
        _gather(array("i", range(n1)), 0, st1, out_shape, o1)
        _gather(array("i", range(n2)), 0, st2, out_shape, o2)
    return o1, o2


# ---------------------------------------------------------------- kernels
# Each builtin has prepare_X(interp, op) -> params and eval_X(params); the parameter
# names follow TFLite's (input_offset, output_offset, output_multiplier, ...).


def _dot_plain(x, xo, w, wo, n, input_offset):
    """sum((x[xo+i] + input_offset) * s8(w[wo+i])); w holds raw (unsigned) model bytes."""
    acc = 0
    for i in range(n):
        wv = w[wo + i]
        if wv > 127:
            wv -= 256
        acc += (x[xo + i] + input_offset) * wv
    return acc


_dot = _viper.dot if _viper is not None else _dot_plain


def _use_plain_dot():
    """Force the plain-Python dot kernel (tests compare both)."""
    global _dot
    _dot = _dot_plain


def _read_bias(t):
    if t is None:
        return None
    if t.type == T_INT32:
        return [struct.unpack_from("<i", t.data, 4 * i)[0] for i in range(t.size)]
    if t.type == T_INT64:
        return [struct.unpack_from("<q", t.data, 8 * i)[0] for i in range(t.size)]
    raise ValueError("unsupported bias type %d" % t.type)


def _channel_multipliers(inp, filt, out, n_out, per_tensor_float_product):
    """Per-output-channel (multiplier, shift) as TFLite's Prepare computes them."""
    mults = array("i", [0] * n_out)
    shifts = array("i", [0] * n_out)
    s_in, s_out = inp.s(), out.s()
    for c in range(n_out):
        s_w = filt.scale[c] if len(filt.scale) > 1 else filt.scale[0]
        if per_tensor_float_product and len(filt.scale) == 1:
            # GetQuantizedConvolutionMultipler: float product, then double division.
            real = f32(s_in * s_w) / s_out
        else:
            real = s_in * s_w / s_out
        m, sh = quantize_multiplier(real)
        mults[c] = m
        shifts[c] = sh
    return mults, shifts


def _same_padding(in_size, filt, stride, dilation, padding):
    eff = (filt - 1) * dilation + 1
    if padding == PAD_SAME:
        out = (in_size + stride - 1) // stride
    else:
        out = (in_size - eff + stride) // stride
    pad = max(((out - 1) * stride + eff - in_size) // 2, 0)
    return out, pad


def prepare_conv_2d(it, op):
    fb, o = it._fb, op["opts"]
    padding = fb.scalar(o, 0, "<b", 0) if o else 0
    stride_w = fb.scalar(o, 1, "<i", 1) if o else 1
    stride_h = fb.scalar(o, 2, "<i", 1) if o else 1
    act = fb.scalar(o, 3, "<b", 0) if o else 0
    dil_w = fb.scalar(o, 4, "<i", 1) if o else 1
    dil_h = fb.scalar(o, 5, "<i", 1) if o else 1
    inp, filt, out = op["in"][0], op["in"][1], op["out"][0]
    bias = op["in"][2] if len(op["in"]) > 2 else None
    batches, in_h, in_w, in_c = inp.shape
    out_c, fh, fw, fc = filt.shape
    if fc != in_c:
        raise ValueError("grouped CONV_2D is not supported")
    out_h, pad_h = _same_padding(in_h, fh, stride_h, dil_h, padding)
    out_w, pad_w = _same_padding(in_w, fw, stride_w, dil_w, padding)
    mults, shifts = _channel_multipliers(inp, filt, out, out_c, False)
    lo, hi = activation_range(act, out.s(), out.z())
    return (inp, filt.data, _read_bias(bias), out, batches, in_h, in_w, in_c, out_h, out_w, out_c,
            fh, fw, stride_h, stride_w, dil_h, dil_w, pad_h, pad_w, -inp.z(), out.z(),
            mults, shifts, lo, hi)


def eval_conv_2d(p):
    (inp, filt, bias, out, batches, in_h, in_w, in_c, out_h, out_w, out_c, fh, fw, stride_h,
     stride_w, dil_h, dil_w, pad_h, pad_w, input_offset, output_offset, output_multiplier,
     output_shift, act_min, act_max) = p
    x, y = inp.buf, out.buf
    dot = _dot
    fstride = fh * fw * in_c
    o = 0
    for b in range(batches):
        for oy in range(out_h):
            iy0 = oy * stride_h - pad_h
            for ox in range(out_w):
                ix0 = ox * stride_w - pad_w
                # Valid taps of this window: (input offset, filter offset) pairs.
                taps = []
                for ky in range(fh):
                    iy = iy0 + dil_h * ky
                    if iy < 0 or iy >= in_h:
                        continue
                    for kx in range(fw):
                        ix = ix0 + dil_w * kx
                        if ix < 0 or ix >= in_w:
                            continue
                        taps.append((((b * in_h + iy) * in_w + ix) * in_c, (ky * fw + kx) * in_c))
                for oc in range(out_c):
                    acc = bias[oc] if bias else 0
                    fo = oc * fstride
                    for xo, wo in taps:
                        acc += dot(x, xo, filt, fo + wo, in_c, input_offset)
                    acc = mbqm(acc, output_multiplier[oc], output_shift[oc]) + output_offset
                    y[o] = act_min if acc < act_min else (act_max if acc > act_max else acc)
                    o += 1


def prepare_fully_connected(it, op):
    fb, o = it._fb, op["opts"]
    act = fb.scalar(o, 0, "<b", 0) if o else 0
    if o and fb.scalar(o, 1, "<b", 0) != 0:
        raise ValueError("FULLY_CONNECTED: shuffled weights format is not supported")
    inp, filt, out = op["in"][0], op["in"][1], op["out"][0]
    bias = op["in"][2] if len(op["in"]) > 2 else None
    out_depth, accum_depth = filt.shape
    batches = inp.size // accum_depth
    mults, shifts = _channel_multipliers(inp, filt, out, out_depth, True)
    lo, hi = activation_range(act, out.s(), out.z())
    requant = mbqm_single if len(filt.scale) > 1 else mbqm
    return (inp, filt.data, _read_bias(bias), out, batches, out_depth, accum_depth, -inp.z(),
            out.z(), mults, shifts, lo, hi, requant)


def eval_fully_connected(p):
    (inp, filt, bias, out, batches, out_depth, accum_depth, input_offset, output_offset,
     output_multiplier, output_shift, act_min, act_max, requant) = p
    x, y = inp.buf, out.buf
    dot = _dot
    o = 0
    for b in range(batches):
        xo = b * accum_depth
        for oc in range(out_depth):
            acc = dot(x, xo, filt, oc * accum_depth, accum_depth, input_offset)
            if bias:
                acc += bias[oc]
            acc = requant(acc, output_multiplier[oc], output_shift[oc]) + output_offset
            y[o] = act_min if acc < act_min else (act_max if acc > act_max else acc)
            o += 1


def prepare_max_pool_2d(it, op):
    fb, o = it._fb, op["opts"]
    padding = fb.scalar(o, 0, "<b", 0)
    stride_w = fb.scalar(o, 1, "<i", 1)
    stride_h = fb.scalar(o, 2, "<i", 1)
    filter_w = fb.scalar(o, 3, "<i", 1)
    filter_h = fb.scalar(o, 4, "<i", 1)
    act = fb.scalar(o, 5, "<b", 0)
    inp, out = op["in"][0], op["out"][0]
    batches, in_h, in_w, depth = inp.shape
    out_h, pad_h = _same_padding(in_h, filter_h, stride_h, 1, padding)
    out_w, pad_w = _same_padding(in_w, filter_w, stride_w, 1, padding)
    lo, hi = activation_range(act, out.s(), out.z())
    return (inp, out, batches, in_h, in_w, depth, out_h, out_w, filter_h, filter_w, stride_h,
            stride_w, pad_h, pad_w, lo, hi)


def eval_max_pool_2d(p):
    (inp, out, batches, in_h, in_w, depth, out_h, out_w, filter_h, filter_w, stride_h, stride_w,
     pad_h, pad_w, act_min, act_max) = p
    x, y = inp.buf, out.buf
    o = 0
    for b in range(batches):
        for oy in range(out_h):
            y0 = max(oy * stride_h - pad_h, 0)
            y1 = min(oy * stride_h - pad_h + filter_h, in_h)
            for ox in range(out_w):
                x0 = max(ox * stride_w - pad_w, 0)
                x1 = min(ox * stride_w - pad_w + filter_w, in_w)
                for c in range(depth):
                    m = -128
                    for iy in range(y0, y1):
                        base = ((b * in_h + iy) * in_w) * depth + c
                        for ix in range(x0, x1):
                            v = x[base + ix * depth]
                            if v > m:
                                m = v
                    y[o] = act_min if m < act_min else (act_max if m > act_max else m)
                    o += 1


def prepare_reshape(it, op):
    inp, out = op["in"][0], op["out"][0]
    if inp.size != out.size:
        raise ValueError("RESHAPE size mismatch")
    return (inp, out)


def eval_copy(p):
    inp, out = p
    out.buf[0:out.size] = inp.buf[0:inp.size]


def prepare_transpose(it, op):
    inp, perm_t, out = op["in"][0], op["in"][1], op["out"][0]
    perm = _const_ints(perm_t)
    st = _strides(inp.shape)
    return (inp, out, [st[k] for k in perm], list(out.shape))


def eval_transpose(p):
    inp, out, strides, out_shape = p
    _gather(inp.buf, 0, strides, out_shape, out.buf)


def prepare_slice(it, op):
    inp, out = op["in"][0], op["out"][0]
    begin = _const_ints(op["in"][1])
    st = _strides(inp.shape)
    base = 0
    for k in range(len(begin)):
        base += begin[k] * st[k]
    return (inp, out, base, st, list(out.shape))


def eval_slice(p):
    inp, out, base, strides, out_shape = p
    _gather(inp.buf, base, strides, out_shape, out.buf)


def _requant_params(inp, out):
    m, sh = quantize_multiplier(inp.s() / out.s())
    return m, sh


def prepare_concatenation(it, op):
    fb, o = it._fb, op["opts"]
    axis = fb.scalar(o, 0, "<i", 0) if o else 0
    act = fb.scalar(o, 1, "<b", 0) if o else 0
    out = op["out"][0]
    if axis < 0:
        axis += len(out.shape)
    outer = 1
    for d in out.shape[:axis]:
        outer *= d
    parts = []
    for t in op["in"]:
        inner = 1
        for d in t.shape[axis:]:
            inner *= d
        same = t.s() == out.s() and t.z() == out.z()
        parts.append((t, inner, same, -t.z()) + _requant_params(t, out))
    lo, hi = activation_range(act, out.s(), out.z())
    return (out, outer, parts, out.z(), lo, hi)


def eval_concatenation(p):
    out, outer, parts, output_offset, act_min, act_max = p
    y = out.buf
    o = 0
    for b in range(outer):
        for t, inner, same, input_offset, m, sh in parts:
            x = t.buf
            xo = b * inner
            if same:
                y[o:o + inner] = x[xo:xo + inner]
            else:  # ConcatenationWithScaling: requantize this input
                for i in range(inner):
                    v = mbqm(x[xo + i] + input_offset, m, sh) + output_offset
                    y[o + i] = act_min if v < act_min else (act_max if v > act_max else v)
            o += inner


def prepare_quantize(it, op):
    inp, out = op["in"][0], op["out"][0]
    if inp.type != T_INT8 or out.type != T_INT8:
        raise ValueError("QUANTIZE: only int8 -> int8 requantization is supported")
    m, sh = quantize_multiplier(inp.s() / out.s())
    return (inp, out, inp.z(), out.z(), m, sh)


def eval_quantize(p):
    inp, out, input_zero_point, output_zero_point, m, sh = p
    x, y = inp.buf, out.buf
    for i in range(out.size):
        v = mbqm(x[i] - input_zero_point, m, sh) + output_zero_point
        y[i] = -128 if v < -128 else (127 if v > 127 else v)


def prepare_add(it, op):
    fb, o = it._fb, op["opts"]
    act = fb.scalar(o, 0, "<b", 0) if o else 0
    in1, in2, out = op["in"][0], op["in"][1], op["out"][0]
    left_shift = 20
    s1, s2 = in1.s(), in2.s()
    twice_max_input_scale = 2.0 * max(s1, s2)
    input1_multiplier, input1_shift = quantize_multiplier(s1 / twice_max_input_scale)
    input2_multiplier, input2_shift = quantize_multiplier(s2 / twice_max_input_scale)
    output_multiplier, output_shift = quantize_multiplier(
        twice_max_input_scale / ((1 << left_shift) * out.s()))
    lo, hi = activation_range(act, out.s(), out.z())
    off1, off2 = _broadcast_offsets(in1.shape, in2.shape, out.shape)
    return (in1, in2, out, -in1.z(), -in2.z(), out.z(), left_shift, input1_multiplier,
            input1_shift, input2_multiplier, input2_shift, output_multiplier, output_shift,
            lo, hi, off1, off2)


def eval_add(p):
    (in1, in2, out, input1_offset, input2_offset, output_offset, left_shift, input1_multiplier,
     input1_shift, input2_multiplier, input2_shift, output_multiplier, output_shift, act_min,
     act_max, off1, off2) = p
    a, b, y = in1.buf, in2.buf, out.buf
    scale = 1 << left_shift
    for i in range(out.size):
        i1 = off1[i] if off1 is not None else i
        i2 = off2[i] if off2 is not None else i
        v1 = mbqm((a[i1] + input1_offset) * scale, input1_multiplier, input1_shift)
        v2 = mbqm((b[i2] + input2_offset) * scale, input2_multiplier, input2_shift)
        v = mbqm(v1 + v2, output_multiplier, output_shift) + output_offset
        y[i] = act_min if v < act_min else (act_max if v > act_max else v)


def prepare_mul(it, op):
    fb, o = it._fb, op["opts"]
    act = fb.scalar(o, 0, "<b", 0) if o else 0
    in1, in2, out = op["in"][0], op["in"][1], op["out"][0]
    # mul.cc computes the real multiplier in float arithmetic.
    real = f32(f32(in1.s() * in2.s()) / out.s())
    output_multiplier, output_shift = quantize_multiplier(real)
    lo, hi = activation_range(act, out.s(), out.z())
    off1, off2 = _broadcast_offsets(in1.shape, in2.shape, out.shape)
    return (in1, in2, out, -in1.z(), -in2.z(), out.z(), output_multiplier, output_shift, lo, hi,
            off1, off2)


def eval_mul(p):
    (in1, in2, out, input1_offset, input2_offset, output_offset, output_multiplier, output_shift,
     act_min, act_max, off1, off2) = p
    a, b, y = in1.buf, in2.buf, out.buf
    for i in range(out.size):
        i1 = off1[i] if off1 is not None else i
        i2 = off2[i] if off2 is not None else i
        v = mbqm((a[i1] + input1_offset) * (b[i2] + input2_offset), output_multiplier,
                 output_shift) + output_offset
        y[i] = act_min if v < act_min else (act_max if v > act_max else v)


def _build_lut(inp, out, fn):
    """LiteRT's LUTPopulate<int8_t>: 256 entries from float32 math, index = uint8(q)."""
    lut = array("b", bytes(256))
    in_scale, in_zp = inp.s(), inp.z()
    inverse_scale = f32(1.0 / out.s())
    out_zp = out.z()
    for val in range(-128, 128):
        dequantized = f32(in_scale * (val - in_zp))
        transformed = fn(dequantized)
        q = tf_round(f32(transformed * inverse_scale)) + out_zp
        lut[val & 255] = -128 if q < -128 else (127 if q > 127 else q)
    return lut


def _sigmoid_f32(v):
    if -v > 88.0:  # expf overflows to inf -> 1/(1+inf) = 0
        return 0.0
    return f32(1.0 / f32(1.0 + f32(math.exp(-v))))


def _tanh_f32(v):
    return f32(math.tanh(v))


def prepare_logistic(it, op):
    inp, out = op["in"][0], op["out"][0]
    return (inp, out, _build_lut(inp, out, _sigmoid_f32))


def prepare_tanh(it, op):
    inp, out = op["in"][0], op["out"][0]
    return (inp, out, _build_lut(inp, out, _tanh_f32))


def eval_lut(p):
    inp, out, lut = p
    x, y = inp.buf, out.buf
    for i in range(out.size):
        y[i] = lut[x[i] & 255]


def prepare_softmax(it, op):
    fb, o = it._fb, op["opts"]
    beta = fb.scalar(o, 0, "<f", 1.0) if o else 1.0
    inp, out = op["in"][0], op["out"][0]
    # PopulateSoftmaxLookupTable: table[255 - v] = expf(-input_scale * beta * v).
    scale = f32(-inp.s() * beta)
    table = array("f", [0.0] * 256)
    for val in range(256):
        table[255 - val] = math.exp(f32(scale * val))
    depth = inp.shape[-1]
    return (inp, out, table, depth, inp.size // depth, out.s(), out.z())


def eval_softmax(p):
    inp, out, table, depth, outer, out_scale, out_zp = p
    x, y = inp.buf, out.buf
    for b in range(outer):
        base = b * depth
        max_val = -128
        for j in range(depth):
            if x[base + j] > max_val:
                max_val = x[base + j]
        off = 255 - max_val
        sum_exp = 0.0
        for j in range(depth):
            sum_exp = f32(sum_exp + table[off + x[base + j]])
        inv_sum_exp = f32(1.0 / f32(sum_exp * out_scale))
        for j in range(depth):
            q = tf_round(f32(table[off + x[base + j]] * inv_sum_exp)) + out_zp
            y[base + j] = -128 if q < -128 else (127 if q > 127 else q)


def prepare_sum(it, op):
    fb, o = it._fb, op["opts"]
    inp, axis_t, out = op["in"][0], op["in"][1], op["out"][0]
    n = len(inp.shape)
    axes = []
    for a in _const_ints(axis_t):
        a = a + n if a < 0 else a
        if a not in axes:
            axes.append(a)
    # Output element of each input element: drop the reduced dims.
    kept = [k for k in range(n) if k not in axes]
    kept_shape = [inp.shape[k] for k in kept]
    kst = _strides(kept_shape)
    st_full = [0] * n
    for j, k in enumerate(kept):
        st_full[k] = kst[j]
    n_out = 1
    for d in kept_shape:
        n_out *= d
    n_red = inp.size // max(n_out, 1)
    kind = "H" if inp.size < 65536 else "i"
    out_index = array(kind, bytes(inp.size * (2 if kind == "H" else 4)))
    _gather(array("i", range(n_out)) if n_out else array("i"), 0, st_full, list(inp.shape),
            out_index)
    same = inp.s() == out.s() and inp.z() == out.z()
    m, sh = quantize_multiplier(inp.s() / out.s())
    return (inp, out, out_index, n_red, inp.z(), out.z(), m, sh, same)


def eval_sum(p):
    inp, out, out_index, n_red, input_zero_point, output_zero_point, m, sh, same = p
    x, y = inp.buf, out.buf
    acc = [0] * out.size
    for i in range(inp.size):
        acc[out_index[i]] += x[i]
    for j in range(out.size):
        if same:
            v = acc[j]
        else:
            v = mbqm(acc[j] - input_zero_point * n_red, m, sh) + output_zero_point
        y[j] = -128 if v < -128 else (127 if v > 127 else v)


KERNELS = {
    OP_ADD: (prepare_add, eval_add),
    OP_CONCATENATION: (prepare_concatenation, eval_concatenation),
    OP_CONV_2D: (prepare_conv_2d, eval_conv_2d),
    OP_FULLY_CONNECTED: (prepare_fully_connected, eval_fully_connected),
    OP_LOGISTIC: (prepare_logistic, eval_lut),
    OP_MAX_POOL_2D: (prepare_max_pool_2d, eval_max_pool_2d),
    OP_MUL: (prepare_mul, eval_mul),
    OP_RESHAPE: (prepare_reshape, eval_copy),
    OP_SOFTMAX: (prepare_softmax, eval_softmax),
    OP_TANH: (prepare_tanh, eval_lut),
    OP_TRANSPOSE: (prepare_transpose, eval_transpose),
    OP_SLICE: (prepare_slice, eval_slice),
    OP_SUM: (prepare_sum, eval_sum),
    OP_QUANTIZE: (prepare_quantize, eval_quantize),
}


# ---------------------------------------------------------------- interpreter


def _plan_arena(sizes, first, last):
    """Greedy offsets (largest first) so tensors alive at the same time never overlap."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    placed = []  # (offset, size, first, last)
    offsets = [0] * len(sizes)
    total = 0
    for i in order:
        busy = sorted((o, o + s) for o, s, f, l in placed if not (l < first[i] or last[i] < f))
        off = 0
        for a, b in busy:
            if off + sizes[i] <= a:
                break
            if b > off:
                off = b
        offsets[i] = off
        placed.append((off, sizes[i], first[i], last[i]))
        if off + sizes[i] > total:
            total = off + sizes[i]
    return offsets, total


class Interpreter:
    """int8 TFLite interpreter: Interpreter(model_bytes).invoke(x); .output(i)."""

    def __init__(self, model_bytes, share_arena=True):
        # MicroPython collects only when the heap is full, which scatters the long-lived
        # parse results over the whole heap and leaves no room for the arena: collect
        # often while loading instead.
        old_threshold = gc.threshold() if hasattr(gc, "threshold") else None
        if old_threshold is not None:
            gc.collect()
            gc.threshold(4096)
        try:
            self._load(model_bytes, share_arena)
        finally:
            if old_threshold is not None:
                gc.threshold(old_threshold)
        gc.collect()

    def _load(self, model_bytes, share_arena):
        buf = memoryview(model_bytes)
        fb = self._fb = _FB(buf)
        model = fb.u32(0)
        codes = []
        for c in fb.vec_tables(model, 1):
            dep = fb.scalar(c, 0, "<b", 0)
            code = fb.scalar(c, 3, "<i", 0)
            codes.append(max(dep, code))
        subgraphs = fb.vec_tables(model, 2)
        if len(subgraphs) != 1:
            raise ValueError("expected 1 subgraph, got %d" % len(subgraphs))
        sg = subgraphs[0]
        buffers = _read_buffers(fb, model)
        tensors = [_read_tensor(fb, t, buffers) for t in fb.vec_tables(sg, 0)]
        self._tensors = tensors
        inputs = fb.vec_scalars(sg, 1, "<i", 4)
        outputs = fb.vec_scalars(sg, 2, "<i", 4)
        if len(inputs) != 1:
            raise ValueError("expected 1 input, got %d" % len(inputs))
        ops = []
        for o in fb.vec_tables(sg, 3):
            code = codes[fb.scalar(o, 0, "<I", 0)]
            if code not in KERNELS:
                raise ValueError("unsupported operator %s (builtin code %d)"
                                 % (OP_NAMES.get(code, "?"), code))
            ins = [tensors[i] if i >= 0 else None for i in fb.vec_scalars(o, 1, "<i", 4)]
            while ins and ins[-1] is None:
                ins.pop()
            outs = [tensors[i] for i in fb.vec_scalars(o, 2, "<i", 4)]
            ops.append({"code": code, "in": ins, "out": outs, "opts": fb.ref(o, 4),
                        "in_idx": list(fb.vec_scalars(o, 1, "<i", 4)),
                        "out_idx": list(fb.vec_scalars(o, 2, "<i", 4))})
        self.op_codes = [op["code"] for op in ops]
        gc.collect()  # defragment before the arena's one large allocation
        self._allocate(ops, list(inputs), list(outputs), share_arena)
        # Prepare after allocation: params tuples hold the tensors (their .buf is set).
        self._plan = []
        for op in ops:
            for t in op["in"]:
                if t is not None and t.type != T_INT8 and t.data is None:
                    raise ValueError("non-int8 activation in %s" % OP_NAMES.get(op["code"], "?"))
            prep, ev = KERNELS[op["code"]]
            self._plan.append((ev, prep(self, op)))
        inp = tensors[inputs[0]]
        self._input = inp
        self._outputs = [tensors[i] for i in outputs]
        self.input_shape = inp.shape
        self.input_scale = inp.s()
        self.input_zero_point = inp.z()
        self.outputs = [{"shape": t.shape, "scale": t.s(), "zero_point": t.z()}
                        for t in self._outputs]
        self.arena_size = self._arena_size

    def _allocate(self, ops, inputs, outputs, share_arena):
        """Dedicated buffers for the graph input/outputs, one planned arena for the rest."""
        tensors = self._tensors
        first, last = {}, {}
        for k, op in enumerate(ops):
            for i in op["in_idx"] + op["out_idx"]:
                if i >= 0 and tensors[i].data is None:
                    first.setdefault(i, k)
                    last[i] = len(ops) if not share_arena else k
        for i in inputs + outputs:
            tensors[i].buf = array("b", bytes(tensors[i].size))
        ids = [i for i in first if tensors[i].buf is None and tensors[i].data is None]
        offsets, total = _plan_arena([tensors[i].size for i in ids], [first[i] for i in ids],
                                     [last[i] for i in ids])
        self._arena = array("b", bytes(total))
        mv = memoryview(self._arena)
        for i, off in zip(ids, offsets):
            tensors[i].buf = mv[off:off + tensors[i].size]
        self._arena_size = total

    def invoke(self, input_int8):
        """Run the graph on one int8 input (array('b'), bytes or bytearray of input size)."""
        dst = self._input.buf
        n = self._input.size
        if len(input_int8) != n:
            raise ValueError("input has %d values, expected %d" % (len(input_int8), n))
        if isinstance(input_int8, array):
            dst[0:n] = input_int8
        else:  # raw bytes: reinterpret as int8
            for i in range(n):
                v = input_int8[i]
                dst[i] = v - 256 if v > 127 else v
        for ev, params in self._plan:
            ev(params)

    def output(self, i):
        """int8 array of output i (valid until the next invoke)."""
        return self._outputs[i].buf
