"""The helmet application: samples in, pain reports out.

Data flows one way::

    source -> window buffer (ring.Slider) -> quality -> cleaning -> band powers (dsp)
           -> int8 images (topomap) -> int8 model (engine) -> decision (decide) -> report (wire)

``Helmet`` is one loaded bundle and its preallocated buffers: ``process`` turns one window
into one report. ``Runtime`` is the device: it answers the link, runs the acquisition
source, fills the window buffer and reports every ``hop`` samples, sends heartbeats and feeds
the watchdog. Everything runs unchanged on MicroPython and on CPython (Raspberry Pi).
"""

import gc
import json
import os
import sys
from array import array

try:  # imported as painhelm.firmware.app on a host
    from . import bundle, config, engine, slots, version, wire
except ImportError:  # flat on the helmet's filesystem
    import bundle
    import config
    import engine
    import slots
    import version
    import wire

# The pipeline's own modules (dsp, topomap, clean, quality, decide) are imported by
# ``Helmet`` after the model is loaded: loading the interpreter needs a transient peak of
# RAM that a 256 KB board only has before their code is in it.
clean = decide = dsp = quality = topomap = None


def _sibling(name):
    """Firmware module ``name``, imported on first use (flat on the helmet, a package on a host)."""
    try:
        return __import__("painhelm.firmware." + name, None, None, [name])
    except ImportError:
        return __import__(name)


def _import_pipeline():
    global clean, decide, dsp, quality, topomap
    if dsp is None:
        clean, decide, dsp, quality, topomap = [_sibling(n) for n in ("clean", "decide", "dsp", "quality", "topomap")]


try:
    import uctypes
except ImportError:
    uctypes = None

try:  # one definition of the clock (clock.py)
    from .clock import ticks_us, ticks_ms, ticks_diff, sleep_ms
except ImportError:
    from clock import ticks_us, ticks_ms, ticks_diff, sleep_ms


def _fill_f32(arr, data):
    """Copy little-endian float32 bytes into the preallocated array('f') ``arr``."""
    if uctypes is not None:
        uctypes.bytearray_at(uctypes.addressof(arr), len(arr) * 4)[:] = data
    else:
        memoryview(arr).cast("B")[:] = data


class Helmet:
    """A loaded, self-tested bundle plus its preallocated buffers."""

    def __init__(self, root=bundle.BUNDLE_DIR, engine_kind="auto"):
        # Order matters on a 256 KB board: the model's bytes, then the interpreter (its
        # loader needs a large transient peak), then the big buffers while free RAM is
        # still in large pieces, and only then the pipeline's code.
        gc.collect()
        pre, _, model, self.clean = bundle.load(root, topomap=False)
        man = bundle.manifest(root)
        self.model_sha256 = man["files"][bundle.MODEL_FILE]["sha256"]
        self.pre = pre
        self.n_ch = n_ch = len(pre["ch_names"])
        self.n_times = pre["n_times"]
        self.n_frames = pre["n_frames"]
        self.n_bands = len(pre["bands"])
        self.n_pix = pre["image_size"] * pre["image_size"]
        self.sfreq = pre["sfreq"]
        self.engine = engine.make(engine_kind, model, root)
        del model
        gc.collect()
        size = n_ch * self.n_times
        # zeroed from bytes: a temporary of 4 bytes a value, not a list of floats
        self.x = array("f", bytes(4 * size))  # the raw window, channel-major
        # the cleaned window; a second buffer because each output channel reads every input
        self._xc = array("f", bytes(4 * size)) if self.clean is not None else self.x
        self.W, self.mask = bundle.read_topomap_packed(root, self.n_pix, n_ch)
        gc.collect()
        _import_pipeline()
        self.mean = array("f", pre.pop("mean"))
        self.inv_std = array("f", [1.0 / s for s in pre.pop("std")])
        shape = tuple(self.engine.input_shape)
        if shape != (1, self.n_frames, self.n_bands, pre["image_size"], pre["image_size"]):
            raise bundle.BundleError("model input is %s, preproc makes (1, %d, %d, %d, %d)"
                                     % (shape, self.n_frames, self.n_bands, pre["image_size"], pre["image_size"]))
        self.scale = pre["input_scale"]
        self.zero_point = pre["input_zero_point"]
        # painhelm exports two outputs, level first; a head without classes keeps a
        # 1-wide dummy output, which is never reported.
        n_levels = len(pre["level_names"])
        n_locations = len(pre["location_names"])
        self.has_level = n_levels > 0
        self.has_location = n_locations > 0
        outs = self.engine.outputs
        if len(outs) != 2 or outs[0]["shape"][-1] != max(n_levels, 1) \
                or outs[1]["shape"][-1] != max(n_locations, 1):
            raise bundle.BundleError("model outputs %s do not match %d levels and %d locations"
                                     % ([o["shape"] for o in outs], n_levels, n_locations))
        # known answers before the first real window: a bundle that computes wrong is refused
        self.selftest_cases = bundle.selftest(root, self.engine, engine.TOLERANCE[self.engine.name])
        dec = pre.pop("decision", None)  # kept only in the objects built from it: RAM
        self.quality = quality.Quality(n_ch, self.n_times, self.sfreq, dec.get("quality") if dec else None)
        self.decider = decide.Decider(n_levels, n_locations, dec)
        del dec
        gc.collect()
        self.bp = dsp.BandPower(n_ch, self.n_times, self.n_frames, self.sfreq,
                                [tuple(b) for b in pre["bands"]], n_per_seg=pre.get("n_per_seg"))
        self.logbp = array("f", bytes(4 * self.n_frames * self.n_bands * n_ch))
        self._z = array("f", bytes(4 * n_ch))
        self._input = array("b", bytes(self.n_frames * self.n_bands * self.n_pix))
        self._no_logits = (bytes(max(n_levels, 1)), bytes(max(n_locations, 1)))  # a window never run
        self.report_seq = 0
        self.dsp_us = self.infer_us = 0  # of the last window

    def process(self, sample_index=0):
        """Turn the window in ``self.x`` (raw µV, channel-major) into a MSG_REPORT payload."""
        t0 = ticks_us()
        q = self.quality
        q.check(self.x)
        d = self.decider
        if q.flags & quality.QF_NONFINITE:  # NaN/inf samples: nothing downstream can use them
            d.ood = 0.0
            reasons = d.withhold(decide.REASON_QUALITY)
            self.report_seq += 1
            return wire.pack_report(self.report_seq, ticks_ms(), sample_index, d.level, d.location,
                                    0, 0, reasons, q.flags, 0.0, q.bad, ticks_diff(ticks_us(), t0), 0,
                                    self._no_logits[0], self._no_logits[1])
        if self.clean is not None:
            clean.apply_matrix(self.clean, self.x, self.n_ch, self.n_times, self._xc)
        self.bp.compute(self._xc, self.logbp)
        ood = self.decider.ood_of(self.logbp)
        topomap.images_int8(self.logbp, self.mean, self.inv_std, self.W, self.n_frames,
                            self.n_bands, self.n_ch, self.n_pix, self.scale, self.zero_point,
                            self._z, self._input, self.mask, True)
        t1 = ticks_us()
        eng = self.engine
        eng.invoke(self._input)
        lq = eng.output(0)
        cq = eng.output(1)
        t2 = ticks_us()
        lo, co = eng.outputs
        reasons = d.update(lq, lo["scale"], lo["zero_point"], cq, co["scale"], co["zero_point"], q.ok, ood)
        self.report_seq += 1
        self.dsp_us = ticks_diff(t1, t0)
        self.infer_us = ticks_diff(t2, t1)
        return wire.pack_report(self.report_seq, ticks_ms(), sample_index, d.level, d.location,
                                d.level_conf, d.location_conf, reasons, q.flags, ood, q.bad,
                                self.dsp_us, self.infer_us, lq, cq)

    def infer(self, payload):
        """One MSG_INFER payload -> MSG_REPORT payload; each window is judged on its own
        (the smoothing across windows belongs to a stream)."""
        n_ch, n_times, sfreq, off = wire.unpack_window_header(payload)
        if n_ch != self.n_ch or n_times != self.n_times:
            raise ValueError("window is %d ch x %d samples, bundle expects %d x %d"
                             % (n_ch, n_times, self.n_ch, self.n_times))
        if abs(sfreq - self.sfreq) > 1e-3 * self.sfreq:
            raise ValueError("window sampled at %g Hz, bundle expects %g Hz" % (sfreq, self.sfreq))
        _fill_f32(self.x, payload[off:])
        self.decider.reset()
        return self.process(0)


def _make_link(cfg):
    if cfg["link"] == "ble":
        if sys.implementation.name != "micropython":  # a Raspberry Pi: BlueZ over D-Bus
            return _sibling("link_bluez").BluezLink(name=cfg["ble_name"])
        return _sibling("link_ble").BleLink(name=cfg["ble_name"])
    return _sibling("link_serial").SerialLink()


def _soft_reset():
    """Start over on an empty heap, as the reset button would (boards; the unix port's
    machine module has it too). Returns where the port has no soft reset (CPython)."""
    try:
        import machine
    except ImportError:
        return
    if hasattr(machine, "soft_reset"):
        machine.soft_reset()


def _watchdog(ms):
    """machine.WDT where the port has one (boards), else None (unix port, CPython)."""
    if not ms:
        return None
    try:
        from machine import WDT
    except ImportError:
        return None
    return WDT(timeout=ms)


class Runtime:
    """The device: link, acquisition, windows, reports, heartbeats, watchdog."""

    CHUNK = 32  # samples moved from the source to the window per read

    def __init__(self, link, cfg=None, cfg_error=None):
        self.link = link
        self.cfg = dict(config.DEFAULTS) if cfg is None else cfg
        self.cfg_error = cfg_error
        self.parser = None
        self.commands = wire.CommandLog()
        self.helmet = None
        self.slot = None
        self.bundle_errors = []
        self.source = None
        self._stream = None
        self.streaming = False
        self.reports = 0
        self._wdt = _watchdog(self.cfg["watchdog_ms"])
        self._next_beat = ticks_ms()
        self.open_bundle()

    # ------------------------------------------------------------------ bundle

    def open_bundle(self):
        """(Re)open the best bundle (a pending one is self-tested and promoted first)."""
        self.stop()
        self.helmet = None
        self.parser = None
        gc.collect()
        kind = self.cfg["engine"]
        try:
            self.helmet, self.slot, self.bundle_errors = slots.open_first(lambda root: Helmet(root, kind))
        except slots.NeedsReset:
            _soft_reset()
            raise MemoryError("no room to load the previous bundle after refusing the new one; reset the helmet")
        self._prepare_stream()
        self._make_parser(None if self.helmet is None else self.helmet.pre)
        gc.collect()
        self._describe()

    def _prepare_stream(self):
        """The link source is made once per bundle, at load: on a 256 KB board the few KB it
        takes may no longer be free in one piece later. Other sources are made per start
        (they open files, configure chips, open board sessions)."""
        self._stream = None
        if self.helmet is not None and self.cfg["source"].get("kind") == "link":
            gc.collect()
            self._stream = self._make_stream()

    def _make_stream(self):
        """``(source, window buffer, read buffer)`` for the configured source."""
        h = self.helmet
        source = _sibling("sources").make_source(self.cfg["source"], h.n_ch, h.sfreq)
        # samples go straight into the helmet's window buffer: no second copy of the signal
        window = _sibling("ring").Slider(h.x, h.n_ch, h.n_times)
        return source, window, array("f", bytes(4 * self.CHUNK * h.n_ch))

    def _make_parser(self, pre):
        """A line parser whose frame buffer fits what this bundle takes, not the protocol's
        32 KB bound: RAM is the helmet's scarcest resource. A whole INFER window when
        there is room for it; on a board where there is not (a 256 KB heap), SAMPLES frames
        of up to ``wire.SAMPLES_PER_FRAME`` samples only, and INFER is refused as too long
        (``info()["max_payload"]`` tells the host which)."""
        self.parser = None
        sizes = [1024]
        if pre is not None:
            n_ch = len(pre["ch_names"])
            stream = max(8 + 4 * n_ch * wire.SAMPLES_PER_FRAME, 1024)
            sizes = [max(stream, 8 + 4 * n_ch * pre["n_times"]), stream]
        for payload in sizes:
            gc.collect()
            try:
                parser = wire.LineParser(self._on_frame, None, self._on_bad_frame,
                                         ((wire.HEADER_SIZE + payload + wire.CRC_SIZE + 2) // 3) * 4 + 2)
            except MemoryError:
                continue
            self.parser, self.max_payload = parser, payload
            return
        raise MemoryError("no room for the link's frame buffer")

    def error(self):
        """Why there is no usable bundle (or None)."""
        if self.helmet is not None:
            return None
        if self.bundle_errors:
            return "; ".join("%s: %s" % e for e in self.bundle_errors)
        return "no bundle on the device (flash one)"

    def state(self):
        if self.helmet is None:
            return wire.STATE_NO_BUNDLE
        return wire.STATE_STREAMING if self.streaming else wire.STATE_IDLE

    def _describe(self):
        """The fixed part of the device description, as json text: made when the bundle
        or the settings change, so that answering a PING allocates only a line's worth
        (on a 256 KB heap a whole dict and its json at each PING ran out of memory)."""
        d = {"firmware": version.VERSION, "protocol": wire.PROTOCOL_VERSION,
             "platform": sys.platform, "impl": sys.implementation.name,
             "link": self.cfg["link"], "source": self.cfg["source"].get("kind"),
             "signing": "on" if slots.signing() else "off"}  # on: only bundles signed for this helmet load
        h = self.helmet
        if h is not None:
            d["bundle"] = self.slot
            d["model_sha256"] = h.model_sha256
            d["engine"] = h.engine.name
            d["selftest_cases"] = h.selftest_cases
            d["model_input"] = list(h.engine.input_shape)
            d["ch_names"] = h.pre["ch_names"]
            d["level_names"] = h.pre["level_names"]
            d["location_names"] = h.pre["location_names"]
            d["sfreq"] = h.sfreq
            d["n_times"] = h.n_times
            d["hop"] = self._hop()
            d["max_payload"] = self.max_payload
            d["samples_per_frame"] = wire.SAMPLES_PER_FRAME
        err = self.error()
        if err:
            d["bundle_error"] = err
        elif self.bundle_errors:
            d["bundle_refused"] = "; ".join("%s: %s" % e for e in self.bundle_errors)
        if self.cfg_error:
            d["config_error"] = self.cfg_error
        self._described = json.dumps(d)
        d = None
        gc.collect()

    def info(self):
        """The device description sent in MSG_PONG (json text): the fixed part from
        ``_describe`` plus state, heap and storage now."""
        gc.collect()
        now = '"state": %d' % self.state()
        if hasattr(gc, "mem_free"):
            free = gc.mem_free()
            now += ', "mem_free": %d, "mem_total": %d' % (free, free + gc.mem_alloc())
        if hasattr(os, "statvfs"):
            try:
                st = os.statvfs("/")
                now += ', "storage_free": %d, "storage_total": %d' % (st[0] * st[4], st[0] * st[2])
            except OSError:
                pass
        return self._described[:-1] + ", " + now + "}"

    # ------------------------------------------------------------------ acquisition

    def _hop(self):
        return self.cfg["hop"] or self.helmet.n_times

    def start(self):
        """Start acquiring from the configured source; ValueError if it cannot."""
        h = self.helmet
        if h is None:
            raise ValueError(self.error())
        if self.streaming:
            return
        self.source, self.window, self._buf = self._stream or self._make_stream()
        self.window.reset()
        h.decider.reset()
        self.source.start()
        self.streaming = True

    def stop(self):
        if self.streaming:
            self.source.stop()
            if self._stream is None:  # made for this start: release its file / chip / session
                self.source.close()
            self.streaming = False

    def pump(self):
        """Move available samples into the window; report when it is full. Returns True
        when it did any work. At most one window per call, so that a source that always
        has samples (a fast playback) cannot starve the link and the heartbeat."""
        if not self.streaming:
            return False
        h = self.helmet
        w = self.window
        busy = False
        while True:
            want = w.room() + w.skip
            n = self.source.read(self._buf, want if want < self.CHUNK else self.CHUNK)
            if not n:
                return busy
            busy = True
            w.push(self._buf, n)
            if w.full():
                self._send(wire.MSG_REPORT, 0, h.process(w.total))
                self.reports += 1
                w.slide(self._hop())
                gc.collect()
                return True

    # ------------------------------------------------------------------ link

    def _send(self, msg_type, seq, payload):
        self.link.write(wire.encode_line(msg_type, seq, payload))

    def _on_bad_frame(self, exc):
        self._send(wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_BAD_FRAME, exc))

    def _on_frame(self, msg_type, seq, payload):
        try:
            self._dispatch(msg_type, seq, payload)
        except MemoryError:
            gc.collect()
            self._send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_INTERNAL, "out of memory"))

    def _dispatch(self, msg_type, seq, payload):
        h = self.helmet
        if msg_type == wire.MSG_INFER:
            if h is None:
                self._send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_NO_MODEL, self.error()))
                return
            if self.streaming:  # INFER would overwrite the window the stream is filling
                self._send(wire.MSG_ERROR, seq, wire.pack_error(
                    wire.ERR_BAD_PAYLOAD, "the helmet is streaming from its source; send CMD_STOP first"))
                return
            try:
                self._send(wire.MSG_REPORT, seq, h.infer(payload))
                self.reports += 1
            except ValueError as e:
                self._send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_BAD_PAYLOAD, e))
        elif msg_type == wire.MSG_SAMPLES:
            try:
                if not self.streaming:
                    if self.cfg["source"].get("kind") != "link":
                        raise ValueError("samples arrived but the source is %s, not link"
                                         % self.cfg["source"].get("kind"))
                    self.start()  # streaming samples from the host starts a link source
                self.source.feed(payload)
            except ValueError as e:
                self._send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_BAD_PAYLOAD, e))
                return
            while self.pump():  # drain the frame now: the link FIFO holds about one frame
                pass
        elif msg_type == wire.MSG_COMMAND:
            ack = self.commands.lookup(seq, payload)
            if ack is None:  # a new command (a retried one gets its first answer again)
                ack = self._command(payload)
                self.commands.store(seq, ack, payload)
            self._send(wire.MSG_ACK, seq, ack)
            if self._reboot:
                self._reboot = False
                self.reload()
        elif msg_type == wire.MSG_PING:
            self._send(wire.MSG_PONG, seq, self.info().encode())
        else:
            self._send(wire.MSG_ERROR, seq,
                       wire.pack_error(wire.ERR_UNKNOWN_TYPE, "unknown message type %d" % msg_type))

    _reboot = False

    def _command(self, payload):
        """Execute one command; return its MSG_ACK payload."""
        try:
            code, args = wire.unpack_command(payload)
        except ValueError as e:
            return wire.pack_ack(wire.ACK_FAILED, "bad command: %s" % e)
        try:
            if code == wire.CMD_START:
                self.start()
            elif code == wire.CMD_STOP:
                self.stop()
            elif code == wire.CMD_CONFIG:
                new = config.merge(self.cfg, args or {})
                restart = self.streaming
                self.stop()
                old_engine, old_source = self.cfg["engine"], self.cfg["source"]
                self.cfg = new
                if new["engine"] != old_engine:
                    self.open_bundle()
                elif new["source"] != old_source:  # the link source is rebuilt only when it must
                    self._stream = None  # be: on a 256 KB heap there may be no room for a second one
                    self._prepare_stream()
                if restart:
                    self.start()
                self._describe()
                return wire.pack_ack(wire.ACK_OK, json.dumps(new))
            elif code == wire.CMD_RESET:
                if self.helmet is not None:
                    self.helmet.decider.reset()
                if self.streaming:
                    self.window.reset()
            elif code == wire.CMD_REBOOT:
                self._reboot = True
            else:
                return wire.pack_ack(wire.ACK_UNKNOWN, "unknown command %d" % code)
        except (ValueError, OSError) as e:
            return wire.pack_ack(wire.ACK_FAILED, str(e))
        return wire.pack_ack(wire.ACK_OK)

    def reload(self):
        """Settings file and bundle again, as after a reset (a pending bundle is tried)."""
        cfg, err = config.load()
        self.cfg, self.cfg_error = cfg, err
        self.open_bundle()

    # ------------------------------------------------------------------ loop

    def step(self):
        """One pass of the main loop; returns True when it did any work."""
        busy = False
        data = self.link.poll()
        if data:
            self.parser.feed(data)
            busy = True
        if self.pump():
            busy = True
        now = ticks_ms()
        if self.cfg["heartbeat_ms"] and ticks_diff(now, self._next_beat) >= 0:
            self._next_beat = now + self.cfg["heartbeat_ms"]
            dropped = self.source.dropped if self.source is not None else 0
            kb = gc.mem_free() // 1024 if hasattr(gc, "mem_free") else 0
            self._send(wire.MSG_HEARTBEAT, 0, wire.pack_heartbeat(now, self.reports, dropped, self.state(), kb))
        if self._wdt is not None:
            self._wdt.feed()
        return busy

    def announce(self):
        """Tell the host the helmet is ready (PONG, seq 0) and, when a bundle was refused
        on the way, why (ERROR ERR_BUNDLE_REFUSED, seq 0): a tool that just flashed it hears
        the refusal without asking."""
        self._send(wire.MSG_PONG, 0, self.info().encode())
        if self.bundle_errors:
            self._send(wire.MSG_ERROR, 0, wire.pack_error(
                wire.ERR_BUNDLE_REFUSED, "; ".join("%s: %s" % e for e in self.bundle_errors)))

    def run(self):
        """Announce, then serve until the link closes (never, on a board)."""
        self.announce()
        if self.cfg["autostart"] and self.helmet is not None:
            try:
                self.start()
            except ValueError as e:
                self._send(wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_INTERNAL, e))
        try:
            while not getattr(self.link, "closed", False):
                if not self.step():
                    sleep_ms(1)
        finally:
            self.stop()
            if hasattr(self.link, "close"):
                self.link.close()  # e.g. BlueZ drops the GATT registration


def main():
    """Entry point called by main.py: settings, link, then the device loop."""
    cfg, err = config.load()
    try:
        link = _make_link(cfg)
    except (ImportError, OSError, ValueError) as e:  # e.g. no radio: fall back to the console
        err = (err + "; " if err else "") + "link %s unavailable (%s), using serial" % (cfg["link"], e)
        cfg["link"] = "serial"
        link = _make_link(cfg)
    Runtime(link, cfg, err).run()
