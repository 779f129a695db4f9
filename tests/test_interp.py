"""The helmet's int8 interpreter against TensorFlow Lite Micro (bit-exact) and LiteRT (loosely).

Acceptance (issue): on the same .tflite and inputs, >= 99.9 % of the output values equal
TFLM's (``compress.export.TFLMRunner``) and the rest are within +-1. Full models are held
to that target (and print their figure); single operators with random quantization are
held to exact equality, under CPython (plain kernels) and under MicroPython (viper, the
viper kernels' 32-bit-word arithmetic, plain).
"""

from __future__ import annotations

import json
import struct
from array import array

import numpy as np
import pytest
import torch

from painhelm.compress import export as E
from painhelm.firmware import interp, interp_load, interp_plain
from painhelm.train.model import PainNet, PainNetConfig

from .mpy import run_micropython
from .shared_data import need

N_INPUTS = 20
TARGET = 0.999  # fraction of output values identical to TFLM's; the rest within +-1


def exactness(mine, ref) -> dict:
    d = np.abs(np.asarray(mine, int) - np.asarray(ref, int))
    return {"n": int(d.size), "identical": float((d == 0).mean()), "max_abs_diff": int(d.max())}


def assert_target(what: str, mine, ref) -> dict:
    """Print the bit-exactness figure of `mine` against TFLM's `ref`; assert the target."""
    f = exactness(mine, ref)
    print("\n%s vs TFLM: %.4f %% identical, max |diff| %d, n = %d values"
          % (what, 100 * f["identical"], f["max_abs_diff"], f["n"]))
    assert f["identical"] >= TARGET and f["max_abs_diff"] <= 1, f
    return f


def _export(calib: np.ndarray, out) -> dict:
    torch.manual_seed(0)
    return E.export_tflite(PainNet(PainNetConfig()), calib, out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export a seeded random PainNet once; return (out_dir, int8 path, int8 inputs)."""
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((64, 4, 3, 16, 16)).astype(np.float32)
    out = tmp_path_factory.mktemp("interp_export")
    info = _export(calib, out)
    x = rng.standard_normal((N_INPUTS, 4, 3, 16, 16)) * rng.uniform(0.3, 1.5, (N_INPUTS, 1, 1, 1, 1))
    xq = E.quantize_array(x, info["input_scale"], info["input_zero_point"])
    return out, info["int8"], xq


def _tflm(path, xq):
    lv, lc = E.TFLMRunner(path).predict_int8(xq)
    return np.concatenate([lv, lc], axis=1)


def _litert(path, xq):
    lv, lc = E.TFLiteRunner(path).predict_int8(xq)
    return np.concatenate([lv, lc], axis=1)


def _cpython(path, xq, **kw):
    it = interp.Interpreter(open(path, "rb").read(), **kw)
    rows = []
    for x in xq:
        it.invoke(array("b", x.tobytes()))
        rows.append(list(it.output(0)) + list(it.output(1)))
    return np.array(rows, np.int8)


_MP_RUN = """
import gc, interp
from array import array
f = open(%r, 'rb'); mb = f.read(); f.close()
for kind in %r:
    it = interp.Interpreter(mb, kernels=kind)
    x = array('b', bytes(%d))
    f = open('x.bin', 'rb')
    for k in range(%d):
        f.readinto(x)
        it.invoke(x)
        print(kind, bytes(it.output(0)).hex() + bytes(it.output(1)).hex())
    f.close()
    it = None
    gc.collect()
"""


def _micropython(path, xq, tmp_path, kinds=("viper",), heapsize="256K") -> dict:
    """Outputs of the interpreter under real MicroPython, per kernel kind."""
    (tmp_path / "x.bin").write_bytes(np.ascontiguousarray(xq).tobytes())
    out = run_micropython(_MP_RUN % (str(path), tuple(kinds), xq[0].size, len(xq)), cwd=tmp_path,
                          heapsize=heapsize)
    res = {k: [] for k in kinds}
    for line in out.splitlines():
        kind, hexrow = line.split()
        res[kind].append(np.frombuffer(bytes.fromhex(hexrow), np.int8))
    return {k: np.array(v) for k, v in res.items()}


def test_quantize_rule_numpy_matches_firmware():
    """The host's vectorised quantize_array equals the firmware's quantize_value, ties included."""
    rng = np.random.default_rng(1)
    scale, zp = 0.0365, -3
    ties = (np.arange(-140, 140) - zp + 0.5) * scale  # x/scale lands on (near) .5
    xs = np.concatenate([rng.normal(0, 3, 5000), ties, [0.0, -0.0, 1e9, -1e9]])
    ref = [interp.quantize_value(float(v), scale, zp) for v in xs]
    assert E.quantize_array(xs, scale, zp).tolist() == ref
    assert interp.quantize_value(0.5, 1.0, 0) == 1 and interp.quantize_value(-0.5, 1.0, 0) == 0


def test_cpython_matches_tflm(exported):
    """Under CPython (plain kernels) the outputs match TFLM's (synthetic inputs)."""
    _, path, xq = exported
    assert_target("synthetic, CPython plain", _cpython(path, xq), _tflm(path, xq))


def test_unfused_graph_gives_the_same_values(exported):
    """Folding TRANSPOSE and MAX_POOL_2D into the convs changes no value (and saves arena)."""
    _, path, xq = exported
    assert np.array_equal(_cpython(path, xq[:4]), _cpython(path, xq[:4], fuse=False))
    mb = open(path, "rb").read()
    assert interp.Interpreter(mb).arena_size < interp.Interpreter(mb, fuse=False).arena_size


def test_litert_agrees_loosely(exported):
    """LiteRT's reference kernels round differently (float LUTs, single-rounding per-channel
    FULLY_CONNECTED); through the LSTM that stays within a few int8 steps."""
    _, path, xq = exported
    mine, ref = _cpython(path, xq), _litert(path, xq)
    f = exactness(mine, ref)
    assert f["max_abs_diff"] <= 4 and f["identical"] >= 0.8, f


def test_micropython_kernels():
    """On the unix port the viper kernels are the ones in use, and a 64-bit word is detected."""
    out = run_micropython("import interp\nprint(interp._viper is not None, interp.WORD_BITS)")
    assert out.split() == ["True", "64"]


def test_micropython_matches_tflm(exported, tmp_path):
    """Under real MicroPython (256K heap) viper matches TFLM; so do its 32-bit-word
    arithmetic and the plain kernels (on a subset)."""
    _, path, xq = exported
    ref = _tflm(path, xq)
    got = _micropython(path, xq, tmp_path, kinds=("viper",))
    assert_target("synthetic, MicroPython viper", got["viper"], ref)
    sub = _micropython(path, xq[:3], tmp_path, kinds=("viper32", "plain"), heapsize="512K")
    for kind in ("viper32", "plain"):
        assert np.array_equal(sub[kind], ref[:3]), kind


def test_micropython_heap_and_no_allocation(exported, tmp_path):
    """In a 256K heap: the interpreter's own heap (arena included) and its load-time peak stay
    small, and invoke allocates nothing (heap locked)."""
    _, path, xq = exported
    code = """
import gc, micropython, sys
gc.collect(); f0 = gc.mem_free()
import interp
gc.collect(); f1 = gc.mem_free()
f = open(%r, 'rb'); mb = f.read(); f.close()
gc.collect(); f2 = gc.mem_free()
it = interp.Interpreter(mb)
def flush(n):  # overwrite stale stack slots: the collector is conservative
    a = b = c = d = 0
    if n:
        flush(n - 1)
flush(20)
gc.collect(); f3 = gc.mem_free()
x = bytearray(%d)
micropython.heap_lock()
try:
    it.invoke(x)
    ok = True
except MemoryError:
    ok = False
micropython.heap_unlock()
print(f0 - f1, f2 - f3, it.arena_size, ok, 'interp_load' in sys.modules)
""" % (str(path), xq[0].size)
    module, held, arena, ok, loader_kept = run_micropython(code, cwd=tmp_path, heapsize="256K").split()
    print("\ninterpreter heap: module %s B, held after load %s B (arena %s B)" % (module, held, arena))
    assert ok == "True", "invoke allocated"
    assert loader_kept == "False", "interp_load stayed in the heap"
    assert int(held) < 64 * 1024 and int(arena) <= 8 * 1024


def _replace_first_opcode(model: bytes, new_code: int) -> bytes:
    """Copy of the model with operator_codes[0].builtin_code set to new_code."""
    fb = interp_load._FB(memoryview(model))
    root = fb.u32(0)
    code0 = fb.vec_tables(root, 1)[0]
    buf = bytearray(model)
    p = fb.field(code0, 3)
    struct.pack_into("<i", buf, p, new_code)
    dep = fb.field(code0, 0)
    if dep:
        struct.pack_into("<b", buf, dep, min(new_code, 127))
    return bytes(buf)


def test_unknown_operator_raises(exported):
    """An operator the interpreter lacks fails at load with a ValueError naming it."""
    _, path, _ = exported
    bad = _replace_first_opcode(open(path, "rb").read(), 4)  # DEPTHWISE_CONV_2D
    with pytest.raises(ValueError, match="DEPTHWISE_CONV_2D"):
        interp.Interpreter(bad)


# ---------------------------------------------------------------- fixed point


def test_gemmlowp_fixed_point_matches_floats():
    """exp_on_negative_values / logistic / tanh / 1/(1+x) are the real functions to ~1e-7."""
    L = interp_load
    for a in np.linspace(-7.9, 7.9, 41):
        raw = int(round(a * 2 ** 27))
        assert abs(L.fx_logistic(raw, 4) / 2 ** 31 - 1 / (1 + np.exp(-raw / 2 ** 27))) < 2e-7
        assert abs(L.fx_tanh(raw, 4) / 2 ** 31 - np.tanh(raw / 2 ** 27)) < 2e-7
        if a <= 0:
            assert abs(L.exp_on_negative_values(raw, 4) / 2 ** 31 - np.exp(raw / 2 ** 27)) < 2e-7
    for x in np.linspace(0, 0.999, 11):
        raw = int(x * 2 ** 31)
        assert abs(interp_plain.one_over_one_plus_x_for_x_in_0_1(raw) / 2 ** 31 - 1 / (1 + x)) < 1e-8


def test_32bit_requantization_bounds():
    """The viper kernels' 32-bit SRDHM (16-bit halves) equals SaturatingRoundingDoublingHighMul,
    and every partial it forms stays below 2**32 (so a 32-bit board computes the same)."""
    rng = np.random.default_rng(3)
    edges = [0, 1, -1, 2 ** 31 - 1, -2 ** 31, 2 ** 30, -2 ** 30, 12345, -98765]
    accs = edges + list(rng.integers(-2 ** 31, 2 ** 31, 3000)) + list(rng.integers(-2 ** 20, 2 ** 20, 1000))
    for acc in accs:
        acc = int(acc)
        m = int(rng.integers(2 ** 30, 2 ** 31))
        A = -acc if acc < 0 else acc
        c = 2 ** 30 - 1 if acc < 0 else 2 ** 30
        ah, al, mh, ml = A >> 16, A & 0xFFFF, m >> 16, m & 0xFFFF
        lo = al * ml
        S = ah * ml + al * mh + (lo >> 16)
        last = ((S & 0x7FFF) << 16) + (lo & 0xFFFF) + c
        assert max(lo, S, last, (ah * mh) << 1) < 2 ** 32
        r = ((ah * mh) << 1) + (S >> 15) + (last >> 31)
        assert (-r if acc < 0 else r) == interp_plain.srdhm(acc, m)


# ---------------------------------------------------------------- single operators
# One- to three-op int8 models built here, with random shapes and quantization; each must
# give TFLM's values exactly, on CPython and on MicroPython (all kernel kinds).


def _flatbuffer(op_list, tensors, g_in, g_out) -> bytes:
    """op_list: [(builtin code, options type, options, inputs, outputs)]; tensors: dicts
    (shape, type, scale, zp, qdim, data)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as S

    m = S.ModelT()
    m.version = 3
    codes = sorted({op[0] for op in op_list})
    m.operatorCodes = []
    for c in codes:
        oc = S.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = c, min(c, 127), 1
        m.operatorCodes.append(oc)
    bufs = [S.BufferT()]
    ts = []
    for i, d in enumerate(tensors):
        t = S.TensorT()
        t.shape, t.type, t.name, t.buffer = list(d["shape"]), d.get("type", 9), b"t%d" % i, 0
        if "scale" in d:
            q = S.QuantizationParametersT()
            q.scale = [float(v) for v in d["scale"]]
            q.zeroPoint = [int(v) for v in d["zp"]]
            q.quantizedDimension = d.get("qdim", 0)
            t.quantization = q
        if d.get("data") is not None:
            b = S.BufferT()
            b.data = list(np.ascontiguousarray(d["data"]).tobytes())
            t.buffer = len(bufs)
            bufs.append(b)
        ts.append(t)
    ops = []
    for code, otype, opts, ins, outs in op_list:
        op = S.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(code), list(ins), list(outs)
        op.builtinOptionsType, op.builtinOptions = otype, opts
        ops.append(op)
    sg = S.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = ts, list(g_in), list(g_out), ops
    m.subgraphs, m.buffers = [sg], bufs
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _f32(x):
    return float(np.float32(x))


class _Case:
    """A random model and its int8 inputs; builds tensors and ops."""

    def __init__(self, rng, name):
        from ai_edge_litert import schema_py_generated as S

        self.S, self.rng, self.name = S, rng, name
        self.tensors, self.ops, self.inputs = [], [], []

    def act(self, shape, scale=None, zp=None):
        r = self.rng
        scale = _f32(np.exp(r.uniform(np.log(0.005), np.log(0.5)))) if scale is None else scale
        zp = int(r.integers(-128, 128)) if zp is None else zp
        self.tensors.append({"shape": shape, "scale": [scale], "zp": [zp]})
        return len(self.tensors) - 1

    def const(self, data, type_=2, **q):
        data = np.asarray(data)
        self.tensors.append(dict({"shape": list(data.shape), "type": type_, "data": data}, **q))
        return len(self.tensors) - 1

    def feed(self, *idx):
        """The graph inputs (random int8 values)."""
        self.inputs = [self.rng.integers(-128, 128, size=self.tensors[i]["shape"]).astype(np.int8)
                       for i in idx]
        self.g_in = list(idx)

    def op(self, code, otype, opts, ins, outs):
        self.ops.append((code, otype, opts, ins, outs))

    def model(self, out):
        return _flatbuffer(self.ops, self.tensors, self.g_in, [out])


def _act_code(rng):
    return int(rng.choice([0, 0, 1, 3]))  # NONE, RELU, RELU6


def _conv(c: _Case, x, shape, pool=False):
    """CONV_2D on tensor x (NHWC `shape`); returns its output tensor."""
    S, r = c.S, c.rng
    B, H, W, C = shape
    OC, K = int(r.integers(1, 5)), int(r.choice([1, 2, 3]))
    stride, dil = int(r.choice([1, 1, 2])), int(r.choice([1, 1, 1, 2]))
    same = bool(r.integers(0, 2)) or pool
    if pool:
        stride, dil = 1, 1
    eff = (K - 1) * dil + 1
    OH = -(-H // stride) if same else (H - eff + stride) // stride
    OW = -(-W // stride) if same else (W - eff + stride) // stride
    in_s = c.tensors[x]["scale"][0]
    w_s = np.exp(r.uniform(np.log(0.002), np.log(0.05), OC)).astype(np.float32)
    w = c.const(r.integers(-127, 128, (OC, K, K, C)).astype(np.int8), 9, scale=w_s, zp=[0] * OC, qdim=0)
    b = c.const(r.integers(-3000, 3000, OC).astype(np.int32), 2,
                scale=(w_s * np.float32(in_s)).astype(np.float32), zp=[0] * OC)
    y = c.act([B, OH, OW, OC])
    o = S.Conv2DOptionsT()
    o.padding, o.strideW, o.strideH = 0 if same else 1, stride, stride
    o.fusedActivationFunction, o.dilationWFactor, o.dilationHFactor = _act_code(r), dil, dil
    c.op(3, S.BuiltinOptions.Conv2DOptions, o, [x, w, b if r.integers(0, 4) else -1], [y])
    return y, [B, OH, OW, OC]


def _pool(c: _Case, x, shape, tiled=False):
    S, r = c.S, c.rng
    B, H, W, C = shape
    f = int(r.choice([2, 3])) if not tiled else 2
    s = f if tiled else int(r.choice([1, 2]))
    same = bool(r.integers(0, 2)) and not tiled
    OH = -(-H // s) if same else (H - f + s) // s
    OW = -(-W // s) if same else (W - f + s) // s
    t = c.tensors[x]
    y = c.act([B, OH, OW, C], t["scale"][0], t["zp"][0])  # TFLM max pool keeps the quantization
    o = S.Pool2DOptionsT()
    o.padding, o.strideW, o.strideH, o.filterWidth, o.filterHeight = 0 if same else 1, s, s, f, f
    o.fusedActivationFunction = _act_code(r)
    c.op(17, S.BuiltinOptions.Pool2DOptions, o, [x], [y])
    return y, [B, OH, OW, C]


def _case(kind: str, rng) -> _Case:
    c = _Case(rng, kind)
    S, r = c.S, rng
    if kind in ("conv", "conv+pool", "transpose+conv+pool", "max_pool"):
        shape = [int(r.integers(1, 3)), 2 * int(r.integers(2, 5)), 2 * int(r.integers(2, 5)),
                 int(r.choice([1, 3, 4]))]
        if kind == "transpose+conv+pool":
            nchw = [shape[0], shape[3], shape[1], shape[2]]
            x0 = c.act(nchw)
            c.feed(x0)
            t = c.tensors[x0]
            x = c.act(shape, t["scale"][0], t["zp"][0])
            c.op(39, S.BuiltinOptions.TransposeOptions, S.TransposeOptionsT(),
                 [x0, c.const(np.array([0, 2, 3, 1], np.int32))], [x])
        else:
            x = c.act(shape)
            c.feed(x)
        if kind == "max_pool":
            y, _ = _pool(c, x, shape)
        else:
            y, oshape = _conv(c, x, shape, pool=kind != "conv")
            if kind != "conv" and oshape[1] >= 2 and oshape[2] >= 2:
                y, _ = _pool(c, y, oshape, tiled=True)
        c.out = y
    elif kind == "fc":
        B, K, OC = int(r.integers(1, 4)), int(r.choice([5, 8, 32, 33])), int(r.integers(1, 9))
        x = c.act([B, K])
        in_s = c.tensors[x]["scale"][0]
        per_channel = bool(r.integers(0, 2))
        w_s = np.exp(r.uniform(np.log(0.002), np.log(0.05), OC if per_channel else 1)).astype(np.float32)
        w = c.const(r.integers(-127, 128, (OC, K)).astype(np.int8), 9, scale=w_s, zp=[0] * len(w_s), qdim=0)
        ins = [x, w]
        if r.integers(0, 3):
            ins.append(c.const(r.integers(-5000, 5000, OC).astype(np.int32), 2,
                               scale=(w_s * np.float32(in_s)).astype(np.float32), zp=[0] * len(w_s)))
        y = c.act([B, OC])
        o = S.FullyConnectedOptionsT()
        o.fusedActivationFunction = _act_code(r)
        c.feed(x)
        c.op(9, S.BuiltinOptions.FullyConnectedOptions, o, ins, [y])
        c.out = y
    elif kind in ("add", "mul"):
        shape = [int(r.integers(1, 3)), int(r.integers(1, 40))]
        scalar = int(r.integers(0, 3))  # 0: same shapes, 1: first is one value, 2: second is
        a = c.act([1, 1] if scalar == 1 else shape)
        b = c.act([1, 1] if scalar == 2 else shape)
        y = c.act(shape)
        if kind == "add":
            o = S.AddOptionsT()
            otype, code = S.BuiltinOptions.AddOptions, 0
        else:
            o = S.MulOptionsT()
            otype, code = S.BuiltinOptions.MulOptions, 18
        o.fusedActivationFunction = _act_code(r)
        c.feed(a, b)
        c.op(code, otype, o, [a, b], [y])
        c.out = y
    elif kind in ("logistic", "tanh"):
        x = c.act([2, 128], _f32(np.exp(r.uniform(np.log(0.001), np.log(1.0)))))
        c.feed(x)
        c.inputs[0] = (np.arange(256) - 128).astype(np.int8).reshape(2, 128)  # every value
        y = c.act([2, 128], 1 / 256, -128) if kind == "logistic" else c.act([2, 128], 1 / 128, 0)
        c.op(14 if kind == "logistic" else 28, 0, None, [x], [y])
        c.out = y
    elif kind == "softmax":
        rows, depth = int(r.integers(1, 5)), int(r.choice([2, 4, 10, 33]))
        x = c.act([rows, depth], _f32(np.exp(r.uniform(np.log(0.003), np.log(2.0)))))
        y = c.act([rows, depth], 1 / 256, -128)
        o = S.SoftmaxOptionsT()
        o.beta = _f32(r.choice([1.0, 1.0, 0.5, 2.0]))
        c.feed(x)
        c.op(25, S.BuiltinOptions.SoftmaxOptions, o, [x], [y])
        c.out = y
    elif kind == "quantize":
        x = c.act([3, 17])
        y = c.act([3, 17])
        c.feed(x)
        c.op(114, S.BuiltinOptions.QuantizeOptions, S.QuantizeOptionsT(), [x], [y])
        c.out = y
    elif kind in ("transpose", "slice", "reshape", "concatenation"):
        shape = [int(r.integers(1, 4)), int(r.integers(1, 5)), int(r.integers(2, 6))]
        x = c.act(shape)
        t = c.tensors[x]
        q = (t["scale"][0], t["zp"][0])
        c.feed(x)
        if kind == "transpose":
            perm = [int(v) for v in r.permutation(3)]
            y = c.act([shape[k] for k in perm], *q)
            c.op(39, S.BuiltinOptions.TransposeOptions, S.TransposeOptionsT(),
                 [x, c.const(np.array(perm, np.int32))], [y])
        elif kind == "slice":
            begin = [int(r.integers(0, d)) for d in shape]
            size = [int(r.integers(1, d - b + 1)) for d, b in zip(shape, begin)]
            y = c.act(size, *q)
            c.op(65, S.BuiltinOptions.SliceOptions, S.SliceOptionsT(),
                 [x, c.const(np.array(begin, np.int32)), c.const(np.array(size, np.int32))], [y])
        elif kind == "reshape":
            new = [int(np.prod(shape[:2])), shape[2]]
            y = c.act(new, *q)
            c.op(22, S.BuiltinOptions.ReshapeOptions, S.ReshapeOptionsT(),
                 [x, c.const(np.array(new, np.int32))], [y])
        else:
            axis = int(r.integers(0, 3))
            other = list(shape)
            other[axis] = int(r.integers(1, 4))
            x2 = c.act(other, *q)
            c.feed(x, x2)
            out = list(shape)
            out[axis] += other[axis]
            y = c.act(out, *q)
            o = S.ConcatenationOptionsT()
            o.axis = axis
            c.op(2, S.BuiltinOptions.ConcatenationOptions, o, [x, x2], [y])
        c.out = y
    elif kind in ("sum", "mean"):
        shape = [int(r.integers(1, 3)), int(r.integers(1, 5)), int(r.integers(2, 7))]
        axes = sorted(set(int(v) for v in r.choice(3, int(r.integers(1, 3)), replace=False)))
        keep = bool(r.integers(0, 2))
        x = c.act(shape)
        out = [1 if k in axes else d for k, d in enumerate(shape)] if keep else \
            [d for k, d in enumerate(shape) if k not in axes]
        y = c.act(out or [1])
        o = S.ReducerOptionsT()
        o.keepDims = keep
        c.feed(x)
        c.op(74 if kind == "sum" else 40, S.BuiltinOptions.ReducerOptions, o,
             [x, c.const(np.array(axes, np.int32))], [y])
        c.out = y
    else:
        raise ValueError(kind)
    return c


KINDS = ("conv", "conv+pool", "transpose+conv+pool", "max_pool", "fc", "add", "mul", "logistic",
         "tanh", "softmax", "quantize", "transpose", "slice", "reshape", "concatenation", "sum",
         "mean")


def _tflm_op(model: bytes, inputs) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    t = runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
    for j, x in enumerate(inputs):
        t.set_input(x, j)
    t.invoke()
    return np.asarray(t.get_output(0)).astype(np.int8).reshape(-1)


def _interp_op(model: bytes, inputs, **kw) -> np.ndarray:
    it = interp.Interpreter(model, **kw)
    for j, x in enumerate(inputs):
        v = it._inputs[j] if j else it._input
        v[0:x.size] = array("b", x.tobytes())
    for fn, a, b, c, d, p in it._plan:
        fn(a, b, c, d, p)
    return np.array(list(it.output(0)), np.int8)


@pytest.fixture(scope="module")
def op_cases():
    """(kind, model bytes, inputs, TFLM output) for 8 random instances of every kind."""
    rng = np.random.default_rng(2024)
    cases = []
    for kind in KINDS:
        for _ in range(8):
            c = _case(kind, rng)
            model = c.model(c.out)
            cases.append((kind, model, c.inputs, _tflm_op(model, c.inputs)))
    return cases


@pytest.mark.parametrize("kind", KINDS)
def test_op_matches_tflm_exactly(kind, op_cases):
    """Random shapes, strides, paddings, activations and quantization: TFLM's values, exactly."""
    for k, model, inputs, ref in [c for c in op_cases if c[0] == kind]:
        got = _interp_op(model, inputs)
        assert np.array_equal(got, ref), "%s: %d of %d values differ" % (kind, (got != ref).sum(), ref.size)


def test_ops_match_tflm_under_micropython(op_cases, tmp_path):
    """The same operator models under MicroPython: viper, viper32 and plain kernels."""
    names = []
    for j, (kind, model, inputs, ref) in enumerate(op_cases):
        (tmp_path / ("m%d.tflite" % j)).write_bytes(model)
        (tmp_path / ("m%d.in" % j)).write_bytes(b"".join(x.tobytes() for x in inputs))
        names.append([j, [int(x.size) for x in inputs]])
    (tmp_path / "cases.json").write_text(json.dumps(names))
    code = """
import json, gc, interp
for j, sizes in json.load(open('cases.json')):
    f = open('m%d.tflite' % j, 'rb'); mb = f.read(); f.close()
    f = open('m%d.in' % j, 'rb'); raw = f.read(); f.close()
    for kind in ('viper', 'viper32', 'plain'):
        it = interp.Interpreter(mb, kernels=kind)
        views = [it._input] + it._inputs[1:]
        pos = 0
        for v, n in zip(views, sizes):
            v[0:n] = raw[pos:pos + n]
            pos += n
        for fn, a, b, c, d, p in it._plan:
            fn(a, b, c, d, p)
        print(j, kind, bytes(it.output(0)).hex())
        it = None
        gc.collect()
"""
    out = run_micropython(code, cwd=tmp_path, heapsize="2M")
    seen = 0
    for line in out.splitlines():
        j, kind, hexrow = line.split()
        kname, _, _, ref = op_cases[int(j)]
        got = np.frombuffer(bytes.fromhex(hexrow), np.int8)
        assert np.array_equal(got, ref), "%s (%s): %d of %d values differ" % (kname, kind, (got != ref).sum(), ref.size)
        seen += 1
    assert seen == 3 * len(op_cases)


def test_concatenation_with_other_scales_is_refused():
    """TFLM refuses a CONCATENATION whose inputs are quantized differently; so does the helmet."""
    c = _Case(np.random.default_rng(0), "concat")
    S = c.S
    a, b = c.act([1, 4], 0.1, 0), c.act([1, 4], 0.2, 0)
    y = c.act([1, 8], 0.1, 0)
    o = S.ConcatenationOptionsT()
    o.axis = 1
    c.feed(a, b)
    c.op(2, S.BuiltinOptions.ConcatenationOptions, o, [a, b], [y])
    with pytest.raises(ValueError, match="scale"):
        interp.Interpreter(c.model(y))


# ---------------------------------------------------------------- real EEG windows


@pytest.fixture(scope="module")
def real_windows(tmp_path_factory):
    """PhysioNet EEG motor-imagery windows (S001, four runs, rest included) as 16x16 topomap
    images, and a seeded random PainNet exported with real-window calibration."""
    from painhelm.train.features import Preprocessing
    from painhelm.train.physionet_mi import load_physionet_mi

    root = need("eegmmidb")
    trials = load_physionet_mi(root=root, runs=[3, 4, 7, 8], include_rest=True)
    pre = Preprocessing.for_trials(trials, n_frames=4, image_size=16)
    images = pre.images(trials.data)
    out = tmp_path_factory.mktemp("interp_real")
    info = _export(images[::2], out)
    xq = E.quantize_array(images, info["input_scale"], info["input_zero_point"])
    return info["int8"], xq


def test_real_windows_match_tflm(real_windows):
    """Real EEG windows: the interpreter (CPython, plain kernels) against TFLM."""
    path, xq = real_windows
    assert_target("real eegmmidb windows (%d), CPython plain" % len(xq), _cpython(path, xq), _tflm(path, xq))


def test_real_windows_match_tflm_under_micropython(real_windows, tmp_path):
    """Real EEG windows under MicroPython (256K heap): viper on all, viper32 / plain on a few."""
    path, xq = real_windows
    ref = _tflm(path, xq)
    got = _micropython(path, xq, tmp_path, kinds=("viper",))
    assert_target("real eegmmidb windows (%d), MicroPython viper" % len(xq), got["viper"], ref)
    sub = _micropython(path, xq[:4], tmp_path, kinds=("viper32", "plain"), heapsize="512K")
    for kind in ("viper32", "plain"):
        assert_target("real eegmmidb windows (4), MicroPython %s" % kind, sub[kind], ref[:4])
