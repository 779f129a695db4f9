"""Inference engines: one interface over the helmet's own int8 interpreter and, on a
Raspberry Pi, LiteRT / tflite-runtime or onnxruntime.

Every engine exposes what ``app.Helmet`` needs and nothing more::

    name                      "micro", "litert" or "onnxruntime"
    input_shape               tuple, e.g. (1, 4, 3, 16, 16)
    outputs                   [{"shape": (1, n), "scale": s, "zero_point": z}, ...] (level first)
    invoke(x)                 x: array('b') of the quantized input
    output(i)                 int8 logits of output i (indexable, len n)

"micro" is the pure-MicroPython interpreter (``interp``), which reproduces TensorFlow Lite
Micro value by value; the others are faster on a Pi and agree within a few int8 steps
(``TOLERANCE``).
``auto`` picks micro on MicroPython, else LiteRT, else onnxruntime, else micro.
"""

import sys

try:
    from . import interp
except ImportError:
    import interp

ENGINES = ("auto", "micro", "litert", "onnxruntime")
# largest int8 difference to TensorFlow Lite Micro the bundle's self-test accepts from each
# engine. micro: none (it is TFLM's arithmetic). LiteRT runs the same .tflite with optimized
# kernels that round some steps differently (measured: 1 step on real windows, 2 on the
# self-test's random inputs). onnxruntime runs a separately quantized ONNX graph (its own
# calibration and scales; measured up to 14 steps): the test then only catches a wrong or
# damaged model, not rounding.
TOLERANCE = {"micro": 0, "litert": 3, "onnxruntime": 24}
ONNX_FILE = "model.onnx"  # optional in a bundle: a QDQ int8 ONNX export of the same model


def _is_micropython():
    return sys.implementation.name == "micropython"


def _litert_interpreter():
    """The LiteRT (or legacy tflite-runtime) Interpreter class, or None."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        return None


def _onnxruntime():
    try:
        import onnxruntime
        return onnxruntime
    except ImportError:
        return None


def available(root=None):
    """Engine names that can run here (``root``: bundle folder, for the optional ONNX file)."""
    names = ["micro"]
    if not _is_micropython():
        if _litert_interpreter() is not None:
            names.append("litert")
        if _onnxruntime() is not None and root is not None and _exists(root + "/" + ONNX_FILE):
            names.append("onnxruntime")
    return names


def _exists(path):
    try:
        open(path, "rb").close()
        return True
    except OSError:
        return False


def choose(kind, root=None):
    """Resolve ``kind`` ("auto" or an engine name) to an engine that can run here."""
    if kind not in ENGINES:
        raise ValueError("unknown engine %r; choose one of %s" % (kind, ", ".join(ENGINES)))
    names = available(root)
    if kind == "auto":
        for name in ("litert", "onnxruntime", "micro"):
            if name in names:
                return name
    if kind not in names:
        raise ValueError("engine %r cannot run here (available: %s)" % (kind, ", ".join(names)))
    return kind


def make(kind, model, root=None):
    """An engine of ``kind`` ("auto" allowed) for the int8 .tflite bytes ``model``."""
    kind = choose(kind, root)
    if kind == "micro":
        return MicroEngine(model)
    try:  # the CPython engines live apart: a MicroPython board never loads their code
        from . import engine_host
    except ImportError:
        import engine_host
    if kind == "litert":
        return engine_host.LiteRTEngine(model)
    return engine_host.OnnxEngine(model, root + "/" + ONNX_FILE)


class MicroEngine:
    """The helmet's own interpreter (bit-exact with TensorFlow Lite Micro)."""

    name = "micro"

    def __init__(self, model):
        self._it = interp.Interpreter(model)
        self.input_shape = tuple(self._it.input_shape)
        self.outputs = [{"shape": tuple(o["shape"]), "scale": o["scale"], "zero_point": o["zero_point"]}
                        for o in self._it.outputs]

    def invoke(self, x):
        self._it.invoke(x)

    def output(self, i):
        return self._it.output(i)
