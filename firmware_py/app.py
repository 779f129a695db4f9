"""The helmet application: window in, pain report out, over the serial console.

Data flows one way: samples -> band powers (dsp) -> int8 images (topomap) -> int8 model
(interp) -> decision -> report frame (wire). Everything is computed here, on the device;
buffers are allocated once when the bundle is loaded.
"""

import gc
import json
import sys
import time
from array import array
from math import exp

try:  # imported as painhelm.firmware.app on a host
    from . import bundle, clean, dsp, interp, topomap, version, wire
except ImportError:  # flat on the helmet's filesystem
    import bundle
    import clean
    import dsp
    import interp
    import topomap
    import version
    import wire

try:
    import uctypes
except ImportError:
    uctypes = None

if hasattr(time, "ticks_us"):
    ticks_us = time.ticks_us
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
else:  # CPython (Raspberry Pi)
    def ticks_us():
        return int(time.perf_counter() * 1000000)

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


def _fill_f32(arr, data):
    """Copy little-endian float32 bytes into the preallocated array('f') ``arr``."""
    if uctypes is not None:
        uctypes.bytearray_at(uctypes.addressof(arr), len(arr) * 4)[:] = data
    else:
        memoryview(arr).cast("B")[:] = data


def _argmax_conf(q, scale, zero_point):
    """Index of the largest int8 logit and its softmax probability scaled to 0..255."""
    best = 0
    for i in range(1, len(q)):
        if q[i] > q[best]:
            best = i
    top = (q[best] - zero_point) * scale
    total = 0.0
    for v in q:
        total += exp((v - zero_point) * scale - top)
    return best, int(255.0 / total + 0.5)


class Helmet:
    """A loaded bundle plus its preallocated buffers; ``infer`` handles one window."""

    def __init__(self, root=bundle.BUNDLE_DIR):
        pre, W, model, self.clean = bundle.load(root)
        self.pre = pre
        self.n_ch = n_ch = len(pre["ch_names"])
        self.n_times = pre["n_times"]
        self.n_frames = pre["n_frames"]
        self.n_bands = len(pre["bands"])
        self.n_pix = pre["image_size"] * pre["image_size"]
        self.sfreq = pre["sfreq"]
        self.W = W
        self.mask = topomap.head_mask(W, self.n_pix, n_ch)
        self.mean = array("f", pre["mean"])
        self.inv_std = array("f", [1.0 / s for s in pre["std"]])
        self.interp = interp.Interpreter(model)
        n_in = self.n_frames * self.n_bands * self.n_pix
        shape = tuple(self.interp.input_shape)
        if shape != (1, self.n_frames, self.n_bands, pre["image_size"], pre["image_size"]):
            raise bundle.BundleError("model input is %s, preproc makes (1, %d, %d, %d, %d)"
                                     % (shape, self.n_frames, self.n_bands, pre["image_size"], pre["image_size"]))
        self.scale = pre["input_scale"]
        self.zero_point = pre["input_zero_point"]
        # painhelm exports two outputs, level first; a head without classes keeps a
        # 1-wide dummy output, which is never reported.
        n_levels = len(pre["level_names"])
        n_locations = len(pre["location_names"])
        outs = self.interp.outputs
        if len(outs) != 2 or outs[0]["shape"][-1] != max(n_levels, 1) \
                or outs[1]["shape"][-1] != max(n_locations, 1):
            raise bundle.BundleError("model outputs %s do not match %d levels and %d locations"
                                     % ([o["shape"] for o in outs], n_levels, n_locations))
        self.level_out = 0
        self.location_out = 1
        self.has_level = n_levels > 0
        self.has_location = n_locations > 0
        self.bp = dsp.BandPower(n_ch, self.n_times, self.n_frames, self.sfreq,
                                [tuple(b) for b in pre["bands"]], n_per_seg=pre.get("n_per_seg"))
        self._x = array("f", [0.0] * (n_ch * self.n_times))
        # the cleaned window; a second buffer because each output channel reads every input
        self._xc = array("f", [0.0] * (n_ch * self.n_times)) if self.clean is not None else self._x
        self._logbp = array("f", [0.0] * (self.n_frames * self.n_bands * n_ch))
        self._z = array("f", [0.0] * n_ch)
        self._input = array("b", [0] * n_in)

    def infer(self, payload):
        """Run one MSG_INFER payload; return the MSG_REPORT payload."""
        n_ch, n_times, sfreq, off = wire.unpack_window_header(payload)
        if n_ch != self.n_ch or n_times != self.n_times:
            raise ValueError("window is %d ch x %d samples, bundle expects %d x %d"
                             % (n_ch, n_times, self.n_ch, self.n_times))
        t0 = ticks_us()
        _fill_f32(self._x, payload[off:])
        if self.clean is not None:
            clean.apply_matrix(self.clean, self._x, self.n_ch, self.n_times, self._xc)
        self.bp.compute(self._xc, self._logbp)
        topomap.images_int8(self._logbp, self.mean, self.inv_std, self.W, self.n_frames,
                            self.n_bands, self.n_ch, self.n_pix, self.scale, self.zero_point,
                            self._z, self._input, self.mask)
        self.interp.invoke(self._input)
        lo = self.interp.outputs[self.level_out]
        co = self.interp.outputs[self.location_out]
        level_q = self.interp.output(self.level_out)
        location_q = self.interp.output(self.location_out)
        level, level_conf = _argmax_conf(level_q, lo["scale"], lo["zero_point"])
        location, location_conf = _argmax_conf(location_q, co["scale"], co["zero_point"])
        if not self.has_level:
            level, level_conf = wire.NO_HEAD, 0
        if not self.has_location:
            location, location_conf = wire.NO_HEAD, 0
        infer_us = ticks_diff(ticks_us(), t0)
        return wire.pack_report(level, location, level_conf, location_conf, 0, ticks_ms(),
                                infer_us, level_q, location_q)


def info(helmet, error=None):
    """The device description sent in MSG_PONG (json)."""
    gc.collect()
    d = {"firmware": version.VERSION, "protocol": wire.PROTOCOL_VERSION,
         "platform": sys.platform, "impl": sys.implementation.name}
    if hasattr(gc, "mem_free"):
        d["mem_free"] = gc.mem_free()
    if helmet is not None:
        d["model_input"] = list(helmet.interp.input_shape)
        d["ch_names"] = helmet.pre["ch_names"]
    if error:
        d["bundle_error"] = error
    return json.dumps(d)


def serve(stream_in, stream_out, root=bundle.BUNDLE_DIR):
    """Answer frames read from ``stream_in`` until it closes."""
    helmet = None
    error = None
    try:
        helmet = Helmet(root)
    except (bundle.BundleError, ValueError) as e:
        error = str(e)
    write = stream_out.write

    def send(msg_type, seq, payload):
        write(wire.encode_line(msg_type, seq, payload))
        if hasattr(stream_out, "flush"):
            stream_out.flush()

    def handle_frame(msg_type, seq, payload):
        if msg_type == wire.MSG_INFER:
            if helmet is None:
                send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_NO_MODEL, error))
                return
            try:
                send(wire.MSG_REPORT, seq, helmet.infer(payload))
            except ValueError as e:
                send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_BAD_PAYLOAD, e))
        elif msg_type == wire.MSG_PING:
            send(wire.MSG_PONG, seq, info(helmet, error).encode())
        else:
            send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_UNKNOWN_TYPE, "unknown message type %d" % msg_type))

    def handle_error(exc):
        send(wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_BAD_FRAME, exc))

    parser = wire.LineParser(handle_frame, None, handle_error)
    send(wire.MSG_PONG, 0, info(helmet, error).encode())  # announce: ready
    while True:
        line = stream_in.readline()
        if not line:
            return
        parser.feed(line)
        gc.collect()


def main():
    """Entry point called by main.py: serve on the console."""
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    stdout = getattr(sys.stdout, "buffer", sys.stdout)
    serve(stdin, stdout)
