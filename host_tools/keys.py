"""The host keystore: one bundle-signing key per helmet, and what the helmet side needs of it.

Keys live in ``$PAINHELM_KEYS`` (default ``$XDG_DATA_HOME/painhelm/keys``, i.e.
``~/.local/share/painhelm/keys``) as ``<device id>.key`` (64 hex digits, mode 0600, folder
0700). Nothing here prints, logs or puts a key into an exception message: callers see ids
and fingerprints only. See docs/signing.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from painhelm.firmware import sign
from painhelm.firmware.bundle import MANIFEST_FILE as MANIFEST

__all__ = ["KeyStoreError", "KeyStore", "default_dir", "fingerprint", "new_device_id", "read_key_file",
           "device_signing", "sign_payload"]

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


class KeyStoreError(Exception):
    """A keystore or key-file problem, said in one line without the key."""


def default_dir() -> Path:
    """Where keys are kept: ``$PAINHELM_KEYS``, else ``$XDG_DATA_HOME/painhelm/keys``."""
    env = os.environ.get("PAINHELM_KEYS")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "painhelm" / "keys"


def fingerprint(key: bytes) -> str:
    """A short public name for a key (16 hex digits); reveals nothing usable about it."""
    return hashlib.sha256(b"painhelm key fingerprint\n" + key).hexdigest()[:16]


def new_device_id() -> str:
    """A fresh random helmet id such as ``helmet-3f9a01c2``."""
    return "helmet-" + secrets.token_hex(4)


def check_id(device_id: str) -> str:
    """``device_id`` if it is a usable id (it is a file name on both sides), else KeyStoreError."""
    if not ID_PATTERN.match(device_id or ""):
        raise KeyStoreError(f"invalid device id {device_id!r}: use 1-40 letters, digits, '.', '_' or '-'")
    return device_id


def _parse(raw: bytes, where: str) -> bytes:
    """Key bytes from a key file: 64 hex digits (the keystore's format) or 32 raw bytes."""
    text = raw.strip()
    if len(text) == 2 * sign.KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(raw) == sign.KEY_SIZE:
        return raw
    raise KeyStoreError(f"{where} is not a painhelm key file (64 hex digits or {sign.KEY_SIZE} raw bytes)")


def read_key_file(path: str | os.PathLike[str]) -> bytes:
    """The key in a key file (``--key FILE``); KeyStoreError naming the file, never the contents."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    return _parse(raw, f"key file {path}")


class KeyStore:
    """A folder of ``<device id>.key`` files."""

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(folder).expanduser() if folder is not None else default_dir()

    def __repr__(self) -> str:
        return f"KeyStore({str(self.dir)!r})"

    def path(self, device_id: str) -> Path:
        """The key file of ``device_id`` (it may not exist)."""
        return self.dir / f"{check_id(device_id)}.key"

    def get(self, device_id: str) -> bytes | None:
        """The key of ``device_id``, or None when this keystore has none."""
        p = self.path(device_id)
        return read_key_file(p) if p.exists() else None

    def create(self, device_id: str) -> bytes:
        """A new random key for ``device_id``, written 0600 (an existing one is an error: a
        helmet provisioned with it would refuse bundles signed with a replacement)."""
        p = self.path(device_id)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(sign.KEY_SIZE)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyStoreError(f"the keystore {self.dir} already has a key for {device_id}") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot write {p}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        return key

    def get_or_create(self, device_id: str) -> tuple[bytes, bool]:
        """``(key, created)``."""
        key = self.get(device_id)
        return (key, False) if key is not None else (self.create(device_id), True)

    def list(self) -> list[tuple[str, str]]:
        """``(device id, fingerprint)`` of every key, sorted by id."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("*.key")):
            if ID_PATTERN.match(p.stem):
                out.append((p.stem, fingerprint(read_key_file(p))))
        return out


# --------------------------------------------------------------------------- the helmet side

def device_signing(transport) -> tuple[bool, str | None]:
    """``(has a key, device id)`` of the helmet behind a raw-REPL ``transport`` (one exec;
    the key itself is never read back)."""
    import ast

    code = (f"try:\n _k = os.stat({'/' + sign.KEY_FILE!r}) and True\nexcept OSError:\n _k = False\n"
            f"try:\n _f = open({'/' + sign.ID_FILE!r})\n _i = _f.read().strip()\n _f.close()\n"
            "except OSError:\n _i = None\nprint(repr((_k, _i)))\ndel _k, _i")
    has_key, device_id = ast.literal_eval(transport._fs("reading the helmet's signing state", code).decode().strip())
    return bool(has_key), device_id


def sign_payload(payload: dict[str, bytes], key: bytes, device_id: str) -> dict[str, bytes]:
    """Bundle files (manifest last, as ``image.check_bundle`` orders them) plus the signature
    file, placed just before the manifest so it is in place when the bundle is complete."""
    manifest = payload[MANIFEST]
    out = {n: d for n, d in payload.items() if n not in (MANIFEST, sign.SIGNATURE_FILE)}
    out[sign.SIGNATURE_FILE] = sign.signature(key, manifest, device_id)
    out[MANIFEST] = manifest
    return out

