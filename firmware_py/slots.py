"""Which bundle the helmet boots with: a new one only after it proved itself, else the last good.

Three folders on the device's filesystem::

    model_bundle.new    written by the flasher; not trusted yet
    model_bundle        the bundle in use (the last one that loaded and passed its self-test)
    model_bundle.prev   the one before it, kept as a fallback

At boot, ``open_first`` tries ``.new``: if its hashes and self-test pass it is promoted
(``model_bundle`` -> ``.prev``, ``.new`` -> ``model_bundle``); if not, it is renamed
``model_bundle.rejected`` (kept for inspection) and the helmet goes on with the bundle it
had. A helmet with a signing key (``keys/bundle.key``) refuses every bundle whose signature
does not verify, before reading it (``sign.py``). Each rename is a single directory rename, so a power cut at any point leaves a state
this same procedure resolves at the next boot: the device never boots a half-written or
failing bundle while a good one exists.
"""

import gc
import os
import sys

try:
    from . import bundle
except ImportError:
    import bundle

ACTIVE = bundle.BUNDLE_DIR
PENDING = ACTIVE + ".new"
PREVIOUS = ACTIVE + ".prev"
REJECTED = ACTIVE + ".rejected"
REASON_FILE = REJECTED + "/refused.txt"  # why the rejected bundle was refused, kept across resets
KEY_FILE = "keys/bundle.key"  # = sign.KEY_FILE; here so a helmet without a key never imports sign


class NeedsReset(Exception):
    """A pending bundle was refused and the heap it left is too fragmented to load the
    previous one: reset, and the next boot loads it on a clean heap (the refused bundle is
    out of the way by then, so this cannot loop)."""


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def rmtree(path):
    """Remove a folder and everything in it (os.ilistdir where available)."""
    if not exists(path):
        return
    names = [e[0] for e in os.ilistdir(path)] if hasattr(os, "ilistdir") else os.listdir(path)
    for name in names:
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:  # S_IFDIR
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def _promote():
    """``.new`` becomes the bundle in use; the one it replaces is kept as ``.prev``."""
    if exists(ACTIVE):
        rmtree(PREVIOUS)
        os.rename(ACTIVE, PREVIOUS)
    os.rename(PENDING, ACTIVE)


def _reject(reason):
    rmtree(REJECTED)
    os.rename(PENDING, REJECTED)
    with open(REASON_FILE, "w") as f:
        f.write(reason)


def _last_refusal():
    try:
        with open(REASON_FILE) as f:
            return f.read()
    except OSError:
        return None


def signing():
    """True when this helmet has a signing key: every bundle must then carry its signature."""
    return exists(KEY_FILE)


def _verify(root):
    """Check ``root``'s signature with the helmet's key (sign.SignatureError if it fails).
    sign is imported for the check and dropped again: on a 256 KB board its code must not
    sit in the heap while the model is loaded."""
    gc.collect()
    try:
        from . import sign
    except ImportError:
        import sign
    try:
        sign.verify(root, sign.read_key())
    finally:
        sys.modules.pop("sign", None)  # the flat module on a helmet; the host keeps its package


def _signed(load):
    """``load`` behind the signature check when the helmet has a key (docs/signing.md):
    the manifest's MAC is checked before anything in the bundle is read or trusted."""
    if not signing():
        return load

    def checked(root):
        _verify(root)
        gc.collect()
        return load(root)
    return checked


def open_first(load, base="."):
    """Open the best bundle with ``load(root)`` (which raises ``bundle.BundleError`` or
    ValueError for a bad one). Return ``(result, slot, errors)``: ``slot`` is the folder the
    result came from (None when nothing loaded) and ``errors`` the ``(slot, message)`` pairs
    of the bundles refused on the way (a refusal from before a reset is remembered until a
    bundle is promoted). Raises NeedsReset when the heap has no room left after a refusal.
    """
    cwd = None
    if base != ".":
        cwd = os.getcwd()
        os.chdir(base)
    errors = []
    refused_now = False
    try:
        load = _signed(load)
        if exists(PENDING + "/" + bundle.MANIFEST_FILE):
            try:
                result = load(PENDING)
            except (bundle.BundleError, ValueError) as e:
                errors.append((PENDING, str(e)))
                _reject(str(e))
                refused_now = True
            else:
                _promote()
                rmtree(REJECTED)  # a good bundle replaces the memory of a refused one
                return result, ACTIVE, errors
        else:
            why = _last_refusal()
            if why is not None:
                errors.append((PENDING, why))
        for slot in (ACTIVE, PREVIOUS):
            if not exists(slot + "/" + bundle.MANIFEST_FILE) and not exists(slot):
                continue
            try:
                return load(slot), slot, errors
            except (bundle.BundleError, ValueError) as e:
                errors.append((slot, str(e)))
            except MemoryError:
                if refused_now:
                    raise NeedsReset()
                raise
        return None, None, errors
    finally:
        if cwd is not None:
            os.chdir(cwd)
