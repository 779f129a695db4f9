"""Minimal int8 TFLite interpreter in pure (Micro)Python for the helmet.

Reproduces TensorFlow Lite Micro (its reference int8 kernels) value by value:

- CONV_2D / FULLY_CONNECTED / ADD / MUL / QUANTIZE / SUM / MEAN: int32 accumulators,
  multipliers from QuantizeMultiplier at load and MultiplyByQuantizedMultiplier (double
  rounding) at run time, per channel where the filter is.
- LOGISTIC / TANH: TFLM's fixed-point kernels (gemmlowp logistic / tanh on Q4.27), run at
  load for all 256 inputs into a table; invoke is a table lookup.
- SOFTMAX: TFLM's fixed-point kernel (gemmlowp exp on Q5.26, Newton reciprocal), with the
  exponentials of the 256 possible input differences tabulated at load.
- RESHAPE, contiguous SLICEs and single-row CONCATENATIONs are views of one buffer (no
  run-time work); a TRANSPOSE feeding a CONV_2D becomes the conv's input strides, and a
  tiled MAX_POOL_2D after a CONV_2D runs inside the conv.

Layout: this module is the run time (``Interpreter.invoke``); ``interp_load`` parses the
FlatBuffer and prepares every op (dropped from ``sys.modules`` after loading on
MicroPython, to free its code); the kernels are ``fn(a, b, c, d, p)`` calls on buffers and
an array('i') of parameters, from ``interp_viper`` where the port has the viper emitter,
else from ``interp_plain`` (same integers).

Memory: weights stay in the model bytes (memoryview slices; conv filters are rewritten
into a small offset-binary copy); every activation lives in one arena planned at load so
that tensors alive at the same time never overlap; invoke allocates nothing (viper).

Runs under CPython and MicroPython (no numpy, no typing, no f-strings).
"""

import gc
import math
import sys

try:
    from micropython import const
except ImportError:  # CPython
    def const(x):
        return x

# The viper kernels live in their own module: a port built without the viper emitter cannot
# compile it (SyntaxError), and CPython has no `micropython` (ImportError).
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
OP_MEAN = const(40)
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

# Machine word of the viper kernels: 64 bits on x64/aarch64 ports, 32 on most boards.
WORD_BITS = 64 if sys.maxsize > 0x7FFFFFFF else 32

KERNEL_KINDS = ("viper", "viper32", "plain")


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


def _import(name):
    """Sibling module `name` (package-relative on a host, flat on the helmet)."""
    if __name__.endswith(".interp"):
        mod = __import__(__name__[:-len("interp")] + name)
        for part in __name__.split(".")[1:-1] + [name]:
            mod = getattr(mod, part)
        return mod
    return __import__(name)


def _plain():
    return _import("interp_plain")


def _on_micropython():
    return sys.implementation.name == "micropython"


class Interpreter:
    """int8 TFLite interpreter (TFLM semantics): Interpreter(model_bytes).invoke(x); .output(i).

    ``kernels``: None (viper where the port has it, else plain Python), "viper", "plain",
    or "viper32" (viper with its 32-bit-word arithmetic, to test that path on x64).
    ``share_arena=False`` gives every tensor its own bytes (``tensor(i)``, debugging);
    ``fuse=False`` keeps every op separate. The model bytes must stay alive: the weights
    are views into them.
    """

    def __init__(self, model_bytes, share_arena=True, kernels=None, fuse=True):
        if kernels is None:
            kernels = "viper" if _viper is not None else "plain"
        if kernels not in KERNEL_KINDS:
            raise ValueError("kernels must be one of %s" % (KERNEL_KINDS,))
        if kernels != "plain" and _viper is None:
            raise ValueError("this port has no viper emitter")
        self.kernels = kernels
        # MicroPython collects only when the heap is full, which scatters the long-lived
        # load results over the whole heap and leaves no room for the arena: collect
        # often while loading instead.
        old_threshold = gc.threshold() if hasattr(gc, "threshold") else None
        if old_threshold is not None:
            gc.collect()
            gc.threshold(4096)
        loaded = [m for m in ("interp_load", "interp_plain") if m in sys.modules]
        uses_plain = kernels == "plain"
        try:
            load = _import("interp_load")
            plain = _plain().KERNELS
            if kernels == "plain":
                table = plain
            else:  # viper kernels; the plain one where viper has none (SUM / MEAN)
                table = {}
                for name in plain:
                    table[name] = getattr(_viper, name, plain[name])
            load.build(self, model_bytes, share_arena, table, kernels == "viper" and WORD_BITS == 64,
                       fuse)
            self._copy_in = table["copy"]
            for step in self._plan:
                if step[0] in plain.values():
                    uses_plain = True
            del load, table, plain
        finally:
            if old_threshold is not None:
                gc.threshold(old_threshold)
            if _on_micropython():  # free the loader's code (and unused plain kernels) from the heap
                for m in ("interp_load",) + (() if uses_plain else ("interp_plain",)):
                    if m not in loaded and m in sys.modules:
                        del sys.modules[m]
                gc.collect()

    def tensor(self, i):
        """int8 view of activation tensor i (share_arena=False only; None for constants)."""
        off = self._offset[i]
        return self._mv[off:off + self._size[i]] if off >= 0 else None

    def invoke(self, input_int8):
        """Run the graph on one int8 input (array('b'), bytes or bytearray of input size)."""
        dst = self._input
        if len(input_int8) != len(dst):
            raise ValueError("input has %d values, expected %d" % (len(input_int8), len(dst)))
        self._copy_in(input_int8, 0, dst, 0, self._p_in)
        for fn, a, b, c, d, p in self._plan:
            fn(a, b, c, d, p)

    def profile(self, input_int8):
        """invoke, timing every step: [(op name, microseconds)] in plan order."""
        try:
            from time import ticks_diff, ticks_us
        except ImportError:
            from time import perf_counter

            def ticks_us():
                return perf_counter() * 1e6

            def ticks_diff(a, b):
                return a - b
        self.invoke(input_int8)
        out = []
        for k, (fn, a, b, c, d, p) in enumerate(self._plan):
            t0 = ticks_us()
            fn(a, b, c, d, p)
            out.append((OP_NAMES.get(self.plan_codes[k], "?"), ticks_diff(ticks_us(), t0)))
        return out

    def output(self, i):
        """int8 view of output i (valid until the next invoke)."""
        return self._outputs[i]
