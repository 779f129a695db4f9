"""The helmet bundle: everything the device needs to turn a window into a decision.

One definition of the on-device layout, shared by the host writer
(``painhelm.compress.bundle``) and the helmet loader below. A bundle is a folder::

    model.tflite    full-int8 model (int8 input and outputs)
    preproc.json    sampling, channels, bands, normalisation, quantization, label names
    topomap.f32     interpolation matrix W, float32 little-endian, (n_pix, n_ch) row-major
    manifest.json   bundle version and SHA-256 + size of each file; written LAST, so a
                    bundle without a manifest is an interrupted copy and is not used
"""

import json
from array import array
from binascii import hexlify

try:
    from hashlib import sha256
except ImportError:  # a port built without hashlib: trust the flasher's check
    sha256 = None

BUNDLE_VERSION = 0
BUNDLE_DIR = "bundle"
MODEL_FILE = "model.tflite"
PREPROC_FILE = "preproc.json"
TOPOMAP_FILE = "topomap.f32"
MANIFEST_FILE = "manifest.json"
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
    """Load a bundle folder; return ``(preproc dict, W array('f'), model bytes)``."""
    manifest = json.loads(_read(root + "/" + MANIFEST_FILE, "r"))
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError("bundle version %s, this firmware reads %d"
                          % (manifest.get("bundle_version"), BUNDLE_VERSION))
    files = manifest.get("files", {})
    blobs = {}
    for name in FILES:
        blobs[name] = data = _read(root + "/" + name)
        entry = files.get(name)
        if entry is None or entry.get("size") != len(data):
            raise BundleError("%s does not match the manifest (size %d)" % (name, len(data)))
        if sha256 is not None and hexlify(sha256(data).digest()).decode() != entry.get("sha256"):
            raise BundleError("%s does not match its SHA-256 in the manifest" % name)
    pre = json.loads(blobs[PREPROC_FILE])
    for k in PREPROC_KEYS:
        if k not in pre:
            raise BundleError("preproc.json lacks key " + k)
    n_ch = len(pre["ch_names"])
    n_pix = pre["image_size"] * pre["image_size"]
    raw = blobs[TOPOMAP_FILE]
    if len(raw) != 4 * n_pix * n_ch:
        raise BundleError("topomap.f32 is %d bytes, expected %d" % (len(raw), 4 * n_pix * n_ch))
    W = f32_array(raw)
    return pre, W, blobs[MODEL_FILE]


def f32_array(raw):
    """array('f') from little-endian float32 bytes, on MicroPython and CPython alike."""
    try:
        return array("f", raw)  # MicroPython copies the raw bytes
    except TypeError:  # CPython wants frombytes
        a = array("f")
        a.frombytes(raw)
        return a
