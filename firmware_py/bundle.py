"""The helmet bundle: everything the device needs to turn a window into a decision.

One definition of the on-device layout, shared by the host writer
(``painhelm.compress.bundle``) and the helmet loader below. A bundle is a folder::

    model.tflite    full-int8 model (int8 input and outputs)
    preproc.json    sampling, channels, bands, normalisation, quantization, label names
    topomap.f32     interpolation matrix W, float32 little-endian, (n_pix, n_ch) row-major
    clean.f32       optional cleaning matrix (ICA), float32, (n_ch, n_ch) row-major, applied to
                    each window before the band powers; present when preproc.json has "clean": true
    manifest.json   bundle version and SHA-256 + size of each file; written LAST, so a
                    bundle without a manifest is an interrupted copy and is not used
"""

import gc
import json
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


def load(root=BUNDLE_DIR):
    """Load a bundle folder; return ``(preproc dict, W array('f'), model bytes, clean)``.

    ``clean`` is the cleaning matrix as array('f') (n_ch * n_ch), or None without one.
    """
    manifest = json.loads(_read(root + "/" + MANIFEST_FILE, "r"))
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError("bundle version %s, this firmware reads %d"
                          % (manifest.get("bundle_version"), BUNDLE_VERSION))
    files = manifest.get("files", {})
    buf = bytearray(512)
    for name in FILES:
        _check(root + "/" + name, files.get(name), buf)
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
        _check(root + "/" + CLEAN_FILE, files.get(CLEAN_FILE), buf)
        if files[CLEAN_FILE]["size"] != 4 * n_ch * n_ch:
            raise BundleError("clean.f32 is %d bytes, expected %d" % (files[CLEAN_FILE]["size"], 4 * n_ch * n_ch))
        clean = f32_array(_read(root + "/" + CLEAN_FILE))
    gc.collect()  # the two big buffers below need contiguous heap
    model = bytearray(files[MODEL_FILE]["size"])  # one allocation of the exact size
    W = f32_array(bytearray(files[TOPOMAP_FILE]["size"]))
    _read_into(root + "/" + TOPOMAP_FILE, W)
    _read_into(root + "/" + MODEL_FILE, model)
    return pre, W, model, clean


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
