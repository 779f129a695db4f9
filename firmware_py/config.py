"""The helmet's settings: defaults, overridden by ``config.json`` on the device, then by
MSG_COMMAND CMD_CONFIG at run time.

``config.json`` (all keys optional)::

    {"source": {"kind": "link"},   # where samples come from: link, playback, ads1299, brainflow
     "hop": 0,                     # samples between window starts; 0 = the window length
     "engine": "auto",             # auto, micro, litert, onnxruntime (see engine.py)
     "link": "serial",             # serial or ble
     "ble_name": "painhelm",
     "heartbeat_ms": 250,          # MSG_HEARTBEAT period; a treatment device stops after 1 s without
     "watchdog_ms": 8000,          # hardware watchdog where the port has one; 0 = off
     "autostart": false}           # start acquiring at boot (a helmet with its own ADC)
"""

import json

CONFIG_FILE = "config.json"

DEFAULTS = {
    "source": {"kind": "link"},
    "hop": 0,
    "engine": "auto",
    "link": "serial",
    "ble_name": "painhelm",
    "heartbeat_ms": 250,
    "watchdog_ms": 8000,
    "autostart": False,
}

_TYPES = {"source": dict, "hop": int, "engine": str, "link": str, "ble_name": str,
          "heartbeat_ms": int, "watchdog_ms": int, "autostart": bool}


def merge(cfg, changes):
    """``cfg`` updated with ``changes``; ValueError naming the first bad key or value."""
    if not isinstance(changes, dict):
        raise ValueError("settings must be a json object")
    out = dict(cfg)
    for k in changes:
        if k not in _TYPES:
            raise ValueError("unknown setting %r (known: %s)" % (k, ", ".join(sorted(_TYPES))))
        v = changes[k]
        if not isinstance(v, _TYPES[k]) or (_TYPES[k] is int and isinstance(v, bool)):
            raise ValueError("setting %r must be %s" % (k, _TYPES[k].__name__))
        if _TYPES[k] is int and v < 0:
            raise ValueError("setting %r must not be negative" % k)
        out[k] = v
    if out["link"] not in ("serial", "ble"):
        raise ValueError("setting 'link' must be 'serial' or 'ble'")
    return out


def load(path=CONFIG_FILE):
    """Return ``(cfg, error)``: the defaults merged with ``path`` if it exists; a broken
    file gives the defaults and the reason (the helmet must still boot and say why)."""
    try:
        f = open(path)
    except OSError:
        return dict(DEFAULTS), None
    try:
        with f:
            return merge(DEFAULTS, json.loads(f.read())), None
    except ValueError as e:
        return dict(DEFAULTS), "%s: %s" % (path, e)
