"""The helmet bundle: everything the device needs to turn a window into a decision.

One definition of the on-device layout, shared by the host writer
(``painhelm.compress.bundle``) and the helmet loader below. A bundle is a folder::

    model.tflite    full-int8 model (int8 input and outputs)
    preproc.json    sampling, channels, bands, normalisation, quantization, label names
    topomap.f32     interpolation matrix W, float32 little-endian, (n_pix, n_ch) row-major
    clean.f32       optional cleaning matrix (ICA), float32, (n_ch, n_ch) row-major, applied to
                    each window before the band powers; present when preproc.json has "clean": true
    selftest.bin    optional known answers: int8 inputs and the int8 outputs TensorFlow Lite
                    Micro gives for them; the helmet runs them before it uses the bundle
    manifest.json   bundle version and SHA-256 + size of each file; written LAST, so a
                    bundle without a manifest is an interrupted copy and is not used
"""

import gc
import json
import struct
from array import array
from binascii import hexlify

try:
    from hashlib import sha256
except ImportError:  # a port built without hashlib: trust the flasher's check
    sha256 = None

BUNDLE_VERSION = 0
BUNDLE_DIR = "model_bundle"  # not "bundle": MicroPython would import that folder instead of bundle.py
MODEL_FILE = "model.tflite"
PREPROC_FILE = "preproc.json"
TOPOMAP_FILE = "topomap.f32"
MANIFEST_FILE = "manifest.json"
CLEAN_FILE = "clean.f32"
SELFTEST_FILE = "selftest.bin"
SELFTEST_MAGIC = b"PHST"
SELFTEST_HEADER = "<4sHHHH"  # magic, n_cases, n_in, n_level, n_location; then per case: input, level, location (int8)
FILES = (MODEL_FILE, PREPROC_FILE, TOPOMAP_FILE)

# keys of preproc.json, checked on both sides
PREPROC_KEYS = ("sfreq", "ch_names", "n_times", "n_frames", "bands", "image_size",
                "mean", "std", "input_scale", "input_zero_point", "level_names", "location_names")


class BundleError(ValueError):
    """The bundle on the device is missing, incomplete or inconsistent."""


def _read(path, mode="rb"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        raise BundleError("missing bundle file " + path)


def load(root=BUNDLE_DIR, topomap=True):
    """Load a bundle folder; return ``(preproc dict, W array('f'), model bytes, clean)``.

    ``clean`` is the cleaning matrix as array('f') (n_ch * n_ch), or None without one.
    ``topomap=False`` leaves W out (None): ``read_topomap_packed`` reads it smaller.
    """
    man = manifest(root)
    if man.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError("bundle version %s, this firmware reads %d"
                          % (man.get("bundle_version"), BUNDLE_VERSION))
    files = man.get("files", {})
    buf = bytearray(512)
    for name in FILES:
        _check(root + "/" + name, files.get(name), buf)
    for name in files:  # optional files (self-test, cleaning matrix, ONNX) are checked too
        if name not in FILES:
            _check(root + "/" + name, files[name], buf)
    pre = json.loads(_read(root + "/" + PREPROC_FILE, "r"))
    for k in PREPROC_KEYS:
        if k not in pre:
            raise BundleError("preproc.json lacks key " + k)
    n_ch = len(pre["ch_names"])
    n_pix = pre["image_size"] * pre["image_size"]
    if files[TOPOMAP_FILE]["size"] != 4 * n_pix * n_ch:
        raise BundleError("topomap.f32 is %d bytes, expected %d" % (files[TOPOMAP_FILE]["size"], 4 * n_pix * n_ch))
    clean = None
    if pre.get("clean"):
        if CLEAN_FILE not in files:
            raise BundleError("%s is not in the manifest" % CLEAN_FILE)
        if files[CLEAN_FILE]["size"] != 4 * n_ch * n_ch:
            raise BundleError("clean.f32 is %d bytes, expected %d" % (files[CLEAN_FILE]["size"], 4 * n_ch * n_ch))
        clean = f32_array(_read(root + "/" + CLEAN_FILE))
    gc.collect()  # the two big buffers below need contiguous heap
    model = bytearray(files[MODEL_FILE]["size"])  # one allocation of the exact size
    W = None
    if topomap:
        W = f32_array(bytearray(files[TOPOMAP_FILE]["size"]))
        _read_into(root + "/" + TOPOMAP_FILE, W)
    _read_into(root + "/" + MODEL_FILE, model)
    return pre, W, model, clean


def read_topomap_packed(root, n_pix, n_ch):
    """``(W, mask)``: only the rows of the topomap matrix inside the head (a third to a half
    of the grid is outside, all zeros), and the bytearray of n_pix flags saying which rows
    those are. Read row by row, so the full matrix is never in RAM."""
    row = f32_array(bytearray(4 * n_ch))
    mask = bytearray(n_pix)
    path = root + "/" + TOPOMAP_FILE
    with open(path, "rb") as f:
        for p in range(n_pix):
            f.readinto(row)
            for v in row:
                if v != 0.0:
                    mask[p] = 1
                    break
    W = f32_array(bytearray(4 * n_ch * sum(mask)))
    k = 0
    with open(path, "rb") as f:
        for p in range(n_pix):
            f.readinto(row)
            if mask[p]:
                for i in range(n_ch):
                    W[k + i] = row[i]
                k += n_ch
    return W, mask


def read_preproc(root=BUNDLE_DIR):
    """The bundle's preproc.json (dict), unchecked: ``load`` verifies it against the manifest."""
    try:
        return json.loads(_read(root + "/" + PREPROC_FILE, "r"))
    except ValueError:
        raise BundleError("preproc.json of %s is not valid json" % root)


def manifest(root=BUNDLE_DIR):
    """The bundle's manifest (dict); BundleError if it is missing or unreadable."""
    try:
        return json.loads(_read(root + "/" + MANIFEST_FILE, "r"))
    except ValueError:
        raise BundleError("manifest.json of %s is not valid json" % root)


def _read_into(path, buf):
    with open(path, "rb") as f:
        f.readinto(buf)


def _check(path, entry, buf):
    """Size and SHA-256 of one file against its manifest entry, streamed through ``buf``."""
    name = path.split("/")[-1]
    if entry is None:
        raise BundleError("%s is not in the manifest" % name)
    h = sha256() if sha256 is not None else None
    size = 0
    mv = memoryview(buf)
    try:
        f = open(path, "rb")
    except OSError:
        raise BundleError("missing bundle file " + path)
    with f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            size += n
            if h is not None:
                h.update(mv[:n])
    if size != entry.get("size"):
        raise BundleError("%s is %d bytes, the manifest says %s" % (name, size, entry.get("size")))
    if h is not None and hexlify(h.digest()).decode() != entry.get("sha256"):
        raise BundleError("%s does not match its SHA-256 in the manifest" % name)


def f32_array(raw):
    """array('f') holding little-endian float32 bytes ``raw``, on MicroPython and CPython."""
    try:
        return array("f", raw)  # MicroPython copies the raw bytes
    except TypeError:  # CPython wants frombytes
        a = array("f")
        a.frombytes(raw)
        return a


def selftest(root, engine, tolerance=0):
    """Run the bundle's known answers through ``engine``; raise BundleError on a mismatch.

    Returns the number of cases run (0 for a bundle without ``selftest.bin``). The manifest
    check in ``load`` has already verified the file's hash when it is listed there.
    ``tolerance`` is the largest int8 difference allowed (0: the helmet's interpreter must
    reproduce TensorFlow Lite Micro exactly; 1 for LiteRT / onnxruntime on a Pi).
    """
    path = root + "/" + SELFTEST_FILE
    try:
        f = open(path, "rb")
    except OSError:
        return 0
    with f:
        head = f.read(struct.calcsize(SELFTEST_HEADER))
        try:
            magic, n_cases, n_in, n_lv, n_loc = struct.unpack(SELFTEST_HEADER, head)
        except ValueError:
            raise BundleError("selftest.bin is truncated")
        if magic != SELFTEST_MAGIC:
            raise BundleError("selftest.bin is not a painhelm self-test file")
        x = array("b", bytes(n_in))
        expect = bytearray(n_lv + n_loc)
        for case in range(n_cases):
            if f.readinto(x) != n_in or f.readinto(expect) != n_lv + n_loc:
                raise BundleError("selftest.bin is truncated")
            engine.invoke(x)
            k = 0
            for out, n in ((0, n_lv), (1, n_loc)):
                got = engine.output(out)
                if len(got) != n:
                    raise BundleError("self-test: output %d has %d values, expected %d" % (out, len(got), n))
                for i in range(n):
                    e = expect[k]
                    e = e - 256 if e > 127 else e
                    if abs(got[i] - e) > tolerance:
                        raise BundleError("self-test case %d: output %d value %d is %d, expected %d"
                                          % (case, out, i, got[i], e))
                    k += 1
    return n_cases
