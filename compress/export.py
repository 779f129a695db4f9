"""Export PainNet to TFLite (fp32 + full int8) and ONNX (fp32 + int8 QDQ), plus runners.

Every exported file is reloaded in its own runtime and checked against torch before
export returns. The int8 .tflite is the helmet's model: int8 input and outputs, no float
ops, per-channel weights, min/max-calibrated activations, the LSTM unrolled (no WHILE).

The helmet's pure-Python interpreter (painhelm.firmware.interp) reproduces TensorFlow Lite
Micro (`TFLMRunner`) value for value. `TFLiteRunner` runs LiteRT's reference kernels
(OpResolverType.BUILTIN_REF), which round a few ops differently (float LOGISTIC / TANH /
SOFTMAX tables, single-rounding per-channel FULLY_CONNECTED), so some int8 outputs differ.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..firmware.interp import quantize_value  # noqa: F401  (the shared rule, re-exported)
from ..train.model import ExportWrapper, PainNet
from ..train.trainer import predict

TFLITE_FP32 = "model_fp32.tflite"
TFLITE_INT8 = "model_int8.tflite"
ONNX_FP32 = "model_fp32.onnx"
ONNX_INT8 = "model_int8.onnx"

# TFLite builtin codes that must not appear in a full-int8 model.
_FLOAT_OPS = {"DEQUANTIZE"}


class ExportError(RuntimeError):
    """An exported file does not load, or disagrees with the torch model."""


def quantize_array(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Vectorised `painhelm.firmware.interp.quantize_value` (the helmet's rule).

    q = clamp(floor(x / scale + 0.5) + zero_point, -128, 127), computed in float64 like
    MicroPython's (double) floats.
    """
    q = np.floor(np.asarray(x, np.float64) / float(scale) + 0.5) + int(zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def _check_level_location(shapes: list[tuple], what: str, names: list[str] | None = None,
                          widths: tuple[int, int] | None = None) -> tuple[int, int]:
    """Indices of the level and location outputs of an exported model.

    Export writes two outputs, level first (``output_0`` in TFLite, ``level_logits`` in
    ONNX); names are used when they say which is which, else the order. ``widths``, when
    given, are the expected (level, location) output widths (a head without classes keeps
    one dummy output) and a mismatch is an :class:`ExportError`.
    """
    if len(shapes) != 2:
        raise ExportError("%s: expected 2 outputs (level, location), got %d" % (what, len(shapes)))
    order = (0, 1)
    if names:
        for first, second in (("output_0", "output_1"), ("level", "location")):
            hit = [[i for i, n in enumerate(names) if key in n] for key in (first, second)]
            if all(len(h) == 1 for h in hit) and hit[0] != hit[1]:
                order = (hit[0][0], hit[1][0])
                break
    got = tuple(int(shapes[i][-1]) for i in order)
    if widths is not None and got != tuple(max(int(w), 1) for w in widths):
        raise ExportError("%s: outputs have widths %s (level, location) but the model folder says %s"
                          % (what, got, tuple(max(int(w), 1) for w in widths)))
    return order


# ---------------------------------------------------------------- runners


class TFLiteRunner:
    """LiteRT runner for model_fp32.tflite / model_int8.tflite (reference kernels)."""

    def __init__(self, path: str | os.PathLike, reference_kernels: bool = True,
                 widths: tuple[int, int] | None = None):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        rtype = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
        self.path = str(path)
        self._it = Interpreter(model_path=self.path, experimental_op_resolver_type=rtype)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]
        outs = self._it.get_output_details()
        i_lvl, i_loc = _check_level_location([tuple(o["shape"]) for o in outs], self.path,
                                             [o["name"] for o in outs], widths)
        self._lvl, self._loc = outs[i_lvl], outs[i_loc]
        self.is_int8 = self._in["dtype"] == np.int8
        self.input_scale, self.input_zero_point = (float(v) for v in self._in["quantization"])
        self.input_zero_point = int(self.input_zero_point)
        self.input_shape = tuple(int(d) for d in self._in["shape"])

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lv, lc = [], []
        for xi in x:
            self._it.set_tensor(self._in["index"], xi[None].astype(self._in["dtype"]))
            self._it.invoke()
            lv.append(self._it.get_tensor(self._lvl["index"]).reshape(-1))
            lc.append(self._it.get_tensor(self._loc["index"]).reshape(-1))
        return np.stack(lv), np.stack(lc)

    def predict_int8(self, x_int8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int8 (N, F, C, H, W) -> (level_q (N, 4) int8, location_q (N, 2) int8)."""
        if not self.is_int8:
            raise ValueError("predict_int8 needs the int8 model")
        return self._run(np.asarray(x_int8, np.int8))

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float (N, F, C, H, W) -> (level_logits, location_logits) as float32."""
        images = np.asarray(images, np.float32)
        if not self.is_int8:
            return self._run(images)
        lq, cq = self.predict_int8(quantize_array(images, self.input_scale, self.input_zero_point))
        return _dequant(lq, self._lvl), _dequant(cq, self._loc)


def _dequant(q: np.ndarray, detail: dict) -> np.ndarray:
    scale, zp = detail["quantization"]
    return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


class OnnxRunner:
    """onnxruntime runner for model_fp32.onnx / model_int8.onnx (float in, float out)."""

    def __init__(self, path: str | os.PathLike, widths: tuple[int, int] | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.path = str(path)
        self._s = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self._in = self._s.get_inputs()[0].name
        outs = self._s.get_outputs()
        self._names = [o.name for o in outs]
        self._i_lvl, self._i_loc = _check_level_location([tuple(o.shape) for o in outs], self.path,
                                                         self._names, widths)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float (N, F, C, H, W) -> (level_logits, location_logits)."""
        lv, lc = [], []
        for xi in np.asarray(images, np.float32):
            res = self._s.run(self._names, {self._in: xi[None]})
            lv.append(res[self._i_lvl].reshape(-1))
            lc.append(res[self._i_loc].reshape(-1))
        return np.stack(lv), np.stack(lc)


class TFLMRunner:
    """TensorFlow Lite Micro (PyPI `tflite_micro`) runner for model_int8.tflite: the
    reference the helmet's interpreter matches bit for bit."""

    def __init__(self, path: str | os.PathLike, arena_size: int = 256 * 1024,
                 widths: tuple[int, int] | None = None):
        from tflite_micro.python.tflite_micro import runtime

        self.path = str(path)
        self.arena_size = arena_size  # the arena handed to TFLM (an upper bound on its use)
        self._it = runtime.Interpreter.from_file(self.path, arena_size=arena_size)
        d = self._it.get_input_details(0)
        q = d["quantization_parameters"]
        self.input_scale = float(q["scales"][0])
        self.input_zero_point = int(q["zero_points"][0])
        details = [self._it.get_output_details(i) for i in range(2)]
        self._i_lvl, self._i_loc = _check_level_location([tuple(d["shape"]) for d in details], self.path,
                                                         [str(d.get("name", "")) for d in details], widths)

    def predict_int8(self, x_int8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """int8 (N, F, C, H, W) -> (level_q (N, 4), location_q (N, 2)) int8."""
        lv, lc = [], []
        for xi in np.asarray(x_int8, np.int8):
            self._it.set_input(xi[None], 0)
            self._it.invoke()
            lv.append(np.array(self._it.get_output(self._i_lvl)).reshape(-1))
            lc.append(np.array(self._it.get_output(self._i_loc)).reshape(-1))
        return np.stack(lv).astype(np.int8), np.stack(lc).astype(np.int8)


# ---------------------------------------------------------------- export


def _widths(model: PainNet) -> tuple[int, int]:
    """Expected (level, location) output widths of the exported model."""
    return model.cfg.n_levels, model.cfg.n_locations


def _torch_logits(model: PainNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = predict(model, np.asarray(x, np.float32))
    return p["level"], p["location"]


def _check_fp32(name: str, got: tuple, ref: tuple, atol: float = 1e-3) -> float:
    err = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    scale = max(1.0, max(float(np.abs(r).max()) for r in ref))
    if err > atol * scale:
        raise ExportError("%s disagrees with torch: max abs error %.3g" % (name, err))
    return err


def _check_int8(name: str, got: tuple, ref: tuple, min_agree: float) -> float:
    agree = min(float(np.mean(g.argmax(1) == r.argmax(1))) for g, r in zip(got, ref))
    if agree < min_agree:
        raise ExportError("%s: argmax agreement with torch %.3f < %.2f" % (name, agree, min_agree))
    return agree


def tflite_op_names(path: str | os.PathLike) -> list[str]:
    """Operator names of a .tflite file, in execution order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    return [op["op_name"] for op in it._get_ops_details()]


def _calibrate_min_max(fp32_bytes: bytes, quant, calib: np.ndarray) -> dict:
    """Plain running min/max over all samples (the default moving average clips peaks)."""
    from ai_edge_quantizer import calibrator

    def min_max(old, new):
        return {"min": np.minimum(old["min"], new["min"]), "max": np.maximum(old["max"], new["max"])}

    cal = calibrator.Calibrator(fp32_bytes, num_threads=2, qsv_update_func=min_max)
    from ai_edge_litert.interpreter import Interpreter

    sig = Interpreter(model_content=fp32_bytes).get_signature_list()
    key = next(iter(sig))
    in_name = sig[key]["inputs"][0]
    data = [{in_name: calib[i:i + 1]} for i in range(len(calib))]
    cal.calibrate({key: data}, quant._recipe_manager)
    return cal.get_model_qsvs()


def strip_tensor_names(path: str | os.PathLike) -> int:
    """Rename every tensor of a .tflite to ``t<index>`` in place; return the bytes saved.

    The converter's names (``serving_default_...``, ~150 bytes each) are a third of a
    compact int8 model, and the helmet holds the whole file in its heap. Inputs, outputs
    and signatures are addressed by index, so no runtime notices.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    for sg in model.subgraphs:
        for i, t in enumerate(sg.tensors):
            t.name = b"t%d" % i
    b = flatbuffers.Builder(len(data))
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    out = bytes(b.Output())
    Path(path).write_bytes(out)
    return len(data) - len(out)


def tflite_weight_bytes(path: str | os.PathLike) -> int:
    """Bytes of constant data (weights, biases) in a .tflite; the rest of the file is graph."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    return sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength()))


@contextlib.contextmanager
def _quiet():
    """Silence the converters' own progress prints, log lines and warnings.

    Their chatter (Python prints, loggers with their own handlers, and C++ lines written
    straight to file descriptor 2) would bury painhelm's progress lines. Errors still
    propagate as exceptions, and if one does, what was silenced is printed after all.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as out, \
                    contextlib.redirect_stderr(io.StringIO()) as err:
                warnings.simplefilter("ignore")
                try:
                    yield
                except BaseException:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    sys.stderr.write(out.getvalue()[-2000:] + err.getvalue()[-2000:]
                                     + sink.read().decode(errors="replace")[-2000:])
                    raise
        finally:
            logging.disable(logging.NOTSET)
            os.dup2(saved, 2)
            os.close(saved)


def export_tflite(model: PainNet, calib_images: np.ndarray, out_dir: str | os.PathLike,
                  n_check: int = 8, min_agree: float = 0.75) -> dict:
    """Write model_fp32.tflite and full-int8 model_int8.tflite into out_dir; verify both.

    Returns {"fp32": path, "int8": path, "ops": [op names of the int8 model],
    "fp32_max_abs_err": float, "int8_argmax_agreement": float, "input_scale": float,
    "input_zero_point": int}.
    """
    with _quiet():  # importing them logs optional-kernel warnings irrelevant on a CPU host
        import litert_torch
        from ai_edge_quantizer import quantizer, recipe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calib = np.ascontiguousarray(calib_images, np.float32)
    model = model.eval()
    sample = torch.from_numpy(calib[:1])
    fp32_path, int8_path = out / TFLITE_FP32, out / TFLITE_INT8
    with _quiet():
        litert_torch.convert(ExportWrapper(model).eval(), (sample,)).export(str(fp32_path))
    fp32_bytes = fp32_path.read_bytes()

    quant = quantizer.Quantizer(fp32_bytes)
    quant.load_quantization_recipe(recipe.static_wi8_ai8())  # int8 acts, per-channel int8 weights
    with _quiet():
        qsvs = _calibrate_min_max(fp32_bytes, quant, calib)
        int8_path.write_bytes(bytes(quant.quantize(qsvs, enable_progress_report=False).quantized_model))

    strip_tensor_names(fp32_path)
    strip_tensor_names(int8_path)
    ops = tflite_op_names(int8_path)
    bad = sorted(set(ops) & (_FLOAT_OPS | {"WHILE"}))
    if bad:
        raise ExportError("int8 model still has %s" % bad)
    x = calib[:n_check]
    ref = _torch_logits(model, x)
    w = _widths(model)
    err = _check_fp32(str(fp32_path), TFLiteRunner(fp32_path, widths=w).predict(x), ref)
    r8 = TFLiteRunner(int8_path, widths=w)
    if not r8.is_int8 or r8._lvl["dtype"] != np.int8 or r8._loc["dtype"] != np.int8:
        raise ExportError("int8 model must have int8 input and outputs")
    agree = _check_int8(str(int8_path), r8.predict(x), ref, min_agree)
    return {"fp32": str(fp32_path), "int8": str(int8_path), "ops": ops,
            "fp32_max_abs_err": err, "int8_argmax_agreement": agree,
            "input_scale": r8.input_scale, "input_zero_point": r8.input_zero_point}


class _CalibReader:
    """onnxruntime CalibrationDataReader over calib images (one sample per batch)."""

    def __init__(self, name: str, calib: np.ndarray):
        self._it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

    def get_next(self):
        return next(self._it, None)


def export_onnx(model: PainNet, calib_images: np.ndarray, out_dir: str | os.PathLike,
                n_check: int = 8, min_agree: float = 0.75) -> dict:
    """Write model_fp32.onnx and int8 QDQ model_int8.onnx (per-channel, min/max); verify both.

    Returns {"fp32": path, "int8": path, "fp32_max_abs_err": float,
    "int8_argmax_agreement": float}.
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calib = np.ascontiguousarray(calib_images, np.float32)
    model = model.eval()
    fp32_path, int8_path = out / ONNX_FP32, out / ONNX_INT8
    with _quiet():
        torch.onnx.export(ExportWrapper(model).eval(), (torch.from_numpy(calib[:1]),), str(fp32_path),
                          input_names=["images"], output_names=["level_logits", "location_logits"],
                          opset_version=17, dynamo=False)
        pre_path = out / "model_fp32_pre.onnx"
        quant_pre_process(str(fp32_path), str(pre_path))
        quantize_static(str(pre_path), str(int8_path), _CalibReader("images", calib),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    pre_path.unlink()
    x = calib[:n_check]
    ref = _torch_logits(model, x)
    w = _widths(model)
    err = _check_fp32(str(fp32_path), OnnxRunner(fp32_path, widths=w).predict(x), ref)
    agree = _check_int8(str(int8_path), OnnxRunner(int8_path, widths=w).predict(x), ref, min_agree)
    return {"fp32": str(fp32_path), "int8": str(int8_path), "fp32_max_abs_err": err,
            "int8_argmax_agreement": agree}
