"""Bundle signatures: HMAC-SHA256 with a key provisioned per helmet (docs/signing.md).

One definition for both sides: the host signs with these functions and the helmet verifies
with them. Pure MicroPython over ``hashlib.sha256`` (in C on every board): a few hundred
bytes of code and a millisecond per bundle, where Ed25519 in Python would be tens of KB
and seconds. Imported by the helmet only when it has a key.

The MAC covers ``manifest.json`` byte for byte; the manifest holds the SHA-256 and size of
every other file, which ``bundle.load`` checks. Each use has its own prefix, so the answer
to a provisioning challenge can never serve as a bundle signature.
"""

from binascii import hexlify, unhexlify

try:
    from hashlib import sha256
except ImportError:  # a port without hashlib cannot check signatures: refuse, never skip
    sha256 = None

KEY_FILE = "keys/bundle.key"  # 32 raw bytes, relative to the filesystem root like model_bundle
ID_FILE = "keys/device_id"  # the helmet's name in the host keystore (text)
SIGNATURE_FILE = "signature"  # in the bundle folder: "hmac-sha256 <device id> <hex mac>\n"
KEY_SIZE = 32
ALG = "hmac-sha256"
BUNDLE_PREFIX = b"painhelm bundle v1\n"
CHALLENGE_PREFIX = b"painhelm challenge v1\n"


class SignatureError(ValueError):
    """The bundle's signature is missing, malformed or made with another key."""


def hmac_sha256(key, *parts):
    """HMAC-SHA256 (RFC 2104) of the concatenated ``parts`` (bytes) under ``key``."""
    if sha256 is None:
        raise SignatureError("this firmware has no hashlib.sha256 to check signatures")
    if len(key) > 64:
        key = sha256(key).digest()
    key = bytes(key) + bytes(64 - len(key))
    inner = sha256(bytes(b ^ 0x36 for b in key))
    for p in parts:
        inner.update(p)
    outer = sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def equal(a, b):
    """Constant-time comparison of two byte strings (their lengths are not secret)."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0


def signature(key, manifest, device_id):
    """The signature file's contents (bytes) for ``manifest`` (the manifest.json bytes)."""
    mac = hexlify(hmac_sha256(key, BUNDLE_PREFIX, manifest)).decode()
    return ("%s %s %s\n" % (ALG, device_id, mac)).encode()


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def read_key(path=KEY_FILE):
    """The provisioned key (bytes), or None when signing is off. SignatureError for a
    damaged key file: every bundle is refused then, the helmet is not silently open."""
    key = _read(path)
    if key is not None and len(key) != KEY_SIZE:
        raise SignatureError("signing key damaged (%d bytes): provision again" % len(key))
    return key


def verify(root, key):
    """Check ``root``'s signature file against its manifest; SignatureError saying why.
    Messages are short on purpose: they travel in the helmet's info on a 256 KB heap."""
    sig = _read(root + "/" + SIGNATURE_FILE)
    if sig is None:
        raise SignatureError("unsigned bundle refused")
    manifest = _read(root + "/manifest.json")
    if manifest is None:
        raise SignatureError("missing bundle file %s/manifest.json" % root)
    try:
        parts = sig.decode().split()
        mac = unhexlify(parts[2]) if len(parts) == 3 and parts[0] == ALG else None
    except ValueError:  # UnicodeError and bad hex are ValueErrors
        mac = None
    if mac is None:
        raise SignatureError("bundle signature is malformed")
    if not equal(mac, hmac_sha256(key, BUNDLE_PREFIX, manifest)):
        raise SignatureError("bundle signature does not match this helmet's key")


def answer(challenge_hex, path=KEY_FILE):
    """Hex HMAC of a host's random challenge: proves the key is in place without reading it."""
    key = read_key(path)
    if key is None:
        return None
    return hexlify(hmac_sha256(key, CHALLENGE_PREFIX, unhexlify(challenge_hex))).decode()
