"""The engines that need CPython (a Raspberry Pi): LiteRT / tflite-runtime and onnxruntime.

Same interface as ``engine.MicroEngine``; ``engine.make`` imports this module only when one
of them is chosen.
"""

try:  # imported as painhelm.firmware.engine_host on a host
    from . import interp
    from .engine import _litert_interpreter, _onnxruntime
except ImportError:
    import interp
    from engine import _litert_interpreter, _onnxruntime


class LiteRTEngine:
    """LiteRT / tflite-runtime on CPython (a Raspberry Pi): same .tflite, optimized kernels."""

    name = "litert"

    def __init__(self, model):
        import numpy as np

        self._np = np
        self._it = _litert_interpreter()(model_content=bytes(model))
        self._it.allocate_tensors()
        d = self._it.get_input_details()[0]
        self._in = d["index"]
        self.input_shape = tuple(int(v) for v in d["shape"])
        self._outs = self._it.get_output_details()
        self.outputs = []
        for o in self._outs:
            scale, zp = o["quantization"]
            self.outputs.append({"shape": tuple(int(v) for v in o["shape"]), "scale": float(scale),
                                 "zero_point": int(zp)})

    def invoke(self, x):
        np = self._np
        self._it.set_tensor(self._in, np.frombuffer(bytes(x), np.int8).reshape(self.input_shape))
        self._it.invoke()

    def output(self, i):
        return [int(v) for v in self._it.get_tensor(self._outs[i]["index"]).ravel()]


class OnnxEngine:
    """onnxruntime on CPython for a bundle that also ships ``model.onnx`` (QDQ int8).

    The ONNX model takes and returns float; the int8 input is dequantized with the
    .tflite's input quantization and the logits quantized with its output quantization,
    so the engine is interchangeable with the others.
    """

    name = "onnxruntime"

    def __init__(self, model, onnx_path):
        import numpy as np

        ort = _onnxruntime()
        ref = interp.Interpreter(model)  # only to read the quantization of inputs and outputs
        self._np = np
        self.input_shape = tuple(ref.input_shape)
        self.outputs = [{"shape": tuple(o["shape"]), "scale": o["scale"], "zero_point": o["zero_point"]}
                        for o in ref.outputs]
        self._in_scale, self._in_zp = ref.input_scale, ref.input_zero_point
        del ref
        self._sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self._in_name = self._sess.get_inputs()[0].name
        self._out = [None] * len(self.outputs)

    def invoke(self, x):
        np = self._np
        q = np.frombuffer(bytes(x), np.int8).astype(np.float32).reshape(self.input_shape)
        res = self._sess.run(None, {self._in_name: (q - self._in_zp) * self._in_scale})
        for i, o in enumerate(self.outputs):
            v = np.rint(np.asarray(res[i], np.float64).ravel() / o["scale"]) + o["zero_point"]
            self._out[i] = [int(t) for t in np.clip(v, -128, 127)]

    def output(self, i):
        return self._out[i]
