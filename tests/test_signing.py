"""Signed bundles (docs/signing.md): HMAC-SHA256 on both sides, the helmet's refusals under
MicroPython, the host keystore, and `painhelm keys` / `painhelm flash` on a virtual helmet."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat

import pytest

from painhelm.firmware import bundle as fmt
from painhelm.firmware import sign, slots
from painhelm.host_tools import image, keys
from painhelm.host_tools.cli import main
from painhelm.host_tools.flash import FlashError, confirm_boot, flash, flash_helmet
from painhelm.host_tools.transport import SerialTransport
from painhelm.host_tools.virtual_helmet import VirtualHelmet

from .mpy import run_micropython

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_hmac_is_rfc2104_and_the_same_under_micropython():
    """The firmware's HMAC equals CPython's hmac module, and MicroPython computes the same."""
    for n in (0, 20, 32, 64, 100):
        k = bytes(range(n))
        assert sign.hmac_sha256(k, b"ab", b"c" * 200) == hmac.new(k, b"abc" + b"c" * 199, hashlib.sha256).digest()
    assert sign.equal(b"abc", b"abc") and not sign.equal(b"abc", b"abd") and not sign.equal(b"ab", b"abc")
    out = run_micropython("import sign\nfrom binascii import hexlify\n"
                          "print(hexlify(sign.hmac_sha256(bytes(range(32)), b'ab', b'c' * 200)).decode())")
    assert out.strip() == sign.hmac_sha256(KEY, b"abc" + b"c" * 199).hex()
    assert slots.KEY_FILE == sign.KEY_FILE  # slots has its own copy so an unkeyed helmet never imports sign


SLOTS_CODE = """
import os, json, slots
def load(root):
    return json.loads(open(root + '/manifest.json').read())['v']
r, slot, errors = slots.open_first(load)
print(json.dumps([r, slot, errors, slots.signing()]))
"""


def _stage(root, manifest: bytes, sig: bytes | None, active: bytes | None = None):
    """A fake model_bundle.new (and model_bundle) in ``root``: signature check only."""
    for folder, man, s in ((slots.PENDING, manifest, sig), (slots.ACTIVE, active, None)):
        if man is None:
            continue
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "manifest.json").write_bytes(man)
        if s is not None:
            (root / folder / sign.SIGNATURE_FILE).write_bytes(s)


def _open(root) -> list:
    return json.loads(run_micropython(SLOTS_CODE, cwd=root, heapsize="256K").strip().splitlines()[-1])


def test_micropython_slots_refuse_unsigned_tampered_and_wrong_key(tmp_path):
    """Under MicroPython: with a key, a signed pending bundle is promoted; an unsigned one, a
    manifest changed after signing, and one signed with another key are refused with their
    reason (kept in model_bundle.rejected) and the helmet keeps the old bundle; without a
    key, unsigned bundles load (signing off)."""
    new, old = b'{"v": "new"}', b'{"v": "old"}'
    old_sig = sign.signature(KEY, old, "h1")
    cases = [
        (sign.signature(KEY, new, "h1"), ["new", "model_bundle", [], True]),
        (None, "unsigned bundle refused"),
        (sign.signature(KEY, b'{"v": "new2"}', "h1"), "bundle signature does not match this helmet's key"),
        (sign.signature(OTHER, new, "h2"), "bundle signature does not match this helmet's key"),
        (b"garbage", "bundle signature is malformed"),
    ]
    for sig, want in cases:
        root = tmp_path / str(len(os.listdir(tmp_path)))
        (root / "keys").mkdir(parents=True)
        (root / sign.KEY_FILE).write_bytes(KEY)
        (root / sign.ID_FILE).write_text("h1\n")
        _stage(root, new, sig, active=old)
        (root / slots.ACTIVE / sign.SIGNATURE_FILE).write_bytes(old_sig)
        got = _open(root)
        if isinstance(want, list):
            assert got == want
            continue
        assert got[:2] == ["old", "model_bundle"] and got[3] is True
        assert got[2][0][0] == slots.PENDING and want in got[2][0][1]
        assert want in (root / slots.REASON_FILE).read_text()

    root = tmp_path / "nokey"
    _stage(root, new, None)
    assert _open(root) == ["new", "model_bundle", [], False]
    # a damaged key file refuses everything rather than turning signing off
    root = tmp_path / "badkey"
    _stage(root, new, sign.signature(KEY, new, "h1"))
    (root / "keys").mkdir()
    (root / sign.KEY_FILE).write_bytes(KEY[:5])
    assert "signing key damaged (5 bytes)" in _open(root)[2][0][1]


def test_keystore_files_and_fingerprints(tmp_path, monkeypatch):
    """Keys are 0600 files in a 0700 folder, listed by id and fingerprint; $PAINHELM_KEYS
    moves the keystore; errors name files and ids, never key bytes."""
    monkeypatch.setenv("PAINHELM_KEYS", str(tmp_path / "ks"))
    store = keys.KeyStore()
    assert store.dir == tmp_path / "ks"
    key = store.create("helmet-a")
    assert len(key) == 32 and store.get("helmet-a") == key and store.get("helmet-b") is None
    p = store.path("helmet-a")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(store.dir.stat().st_mode) == 0o700
    assert store.list() == [("helmet-a", keys.fingerprint(key))] and key.hex() not in keys.fingerprint(key)
    with pytest.raises(keys.KeyStoreError, match="already has a key for helmet-a"):
        store.create("helmet-a")
    with pytest.raises(keys.KeyStoreError, match="invalid device id '../x'"):
        store.path("../x")
    assert keys.read_key_file(p) == key
    (tmp_path / "raw.key").write_bytes(OTHER)
    assert keys.read_key_file(tmp_path / "raw.key") == OTHER
    (tmp_path / "bad.key").write_text("secret-looking-but-short")
    with pytest.raises(keys.KeyStoreError) as e:
        keys.read_key_file(tmp_path / "bad.key")
    assert "is not a painhelm key file" in str(e.value) and "secret-looking" not in str(e.value)


def _info(transport) -> dict:
    """The firmware's info after a reset (no bundle check: the test reads the verdict)."""
    return confirm_boot(transport, None, timeout=60)


def _write_pending(transport, files: dict[str, bytes]) -> dict:
    """Put bundle files straight into model_bundle.new (bypassing the host's checks, as a
    tampered copy would arrive) and reset: the helmet's verdict."""
    flash(transport, {f"/{slots.PENDING}/{n}": d for n, d in files.items()}, reset=True)
    return _info(transport)


def test_keys_and_signed_flash_on_a_virtual_helmet(tmp_path, tiny_bundle, capsys, caplog):
    """End to end at 256 KB: signing off accepts an unsigned bundle; `keys provision` turns
    it on (challenge-verified) and the unsigned bundle is refused; `flash` signs for the
    helmet; unsigned, tampered-file, tampered-manifest and wrong-key bundles are refused with
    their reason while the signed bundle keeps running; a keystore without the helmet's key
    is a clear error. No key appears in any output, log or error."""
    caplog.set_level(logging.DEBUG)
    ks, fs = tmp_path / "ks", tmp_path / "fs"
    fs.mkdir()
    outputs = []

    def cli(*argv):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        outputs.append(out + err)
        return rc, out, err

    src = tiny_bundle["bundle"]
    payload = image.check_bundle(src)
    model = image.model_sha256(payload)
    with VirtualHelmet(fs, heapsize="256K") as h:
        rc, out, err = cli("flash", "--port", h.port, "--bundle", src)
        assert rc == 0 and "signing is off on this helmet" in err
        rc, out, err = cli("info", "--port", h.port, "--json")
        assert json.loads(out)["signing"] == "off"

        rc, out, err = cli("keys", "provision", "--port", h.port, "--keys", ks, "--device-id", "helmet-t1")
        assert rc == 0, err
        assert "provisioned helmet helmet-t1" in out and "verified by a challenge" in out
        assert "the bundle on the helmet is not signed with this key and is refused now" in out
        key = keys.KeyStore(ks).get("helmet-t1")
        assert (fs / "keys" / "bundle.key").read_bytes() == key
        rc, out, err = cli("info", "--port", h.port)
        assert rc == 0 and "signing      on" in out and "unsigned bundle refused" in out  # its old bundle
        rc, out, err = cli("keys", "provision", "--port", h.port, "--keys", ks)  # idempotent, keeps the id
        assert rc == 0 and "helmet-t1" in out and "already holds key" in out
        rc, out, err = cli("keys", "list", "--keys", ks)
        assert out.split() == ["helmet-t1", keys.fingerprint(key)]
        rc, out, err = cli("keys", "provision", "--port", h.port, "--keys", tmp_path / "other")
        assert rc == 1 and "already has a signing key (id helmet-t1)" in err and "--force" in err

        rc, out, err = cli("flash", "--port", h.port, "--bundle", src, "--keys", tmp_path / "empty")
        assert rc == 1 and "helmet helmet-t1 only accepts bundles signed with its own key" in err
        rc, out, err = cli("flash", "--port", h.port, "--bundle", src, "--keys", ks)
        assert rc == 0, err
        assert "signature was verified there" in out and f"bundle model {model[:12]}" in out
        assert (fs / slots.ACTIVE / sign.SIGNATURE_FILE).read_bytes().startswith(b"hmac-sha256 helmet-t1 ")

        signed = keys.sign_payload(payload, key, "helmet-t1")
        other = tmp_path / "other.key"
        other.write_text(OTHER.hex())
        rc, out, err = cli("flash", "--port", h.port, "--bundle", src, "--key", other)
        assert rc == 1 and "the helmet refused the new bundle: model_bundle.new: bundle signature does not match " \
                           "this helmet's key; it kept the previous one" in err
        with SerialTransport(h.port) as t:
            unsigned = {n: d for n, d in signed.items() if n != sign.SIGNATURE_FILE}
            man = json.loads(signed[fmt.MANIFEST_FILE])
            tampered_manifest = dict(signed, **{fmt.MANIFEST_FILE: json.dumps(man, indent=2).encode()})
            topo = bytearray(signed[fmt.TOPOMAP_FILE])
            topo[0] ^= 1
            tampered_file = dict(signed, **{fmt.TOPOMAP_FILE: bytes(topo)})
            for files, why in ((unsigned, "unsigned bundle refused"),
                               (tampered_manifest, "bundle signature does not match this helmet's key"),
                               (tampered_file, "topomap.f32 does not match its SHA-256")):
                info = _write_pending(t, files)
                assert why in info["bundle_refused"], info
                assert info["bundle"] == slots.ACTIVE and info["model_sha256"] == model and info["signing"] == "on"
                assert why in (fs / slots.REASON_FILE).read_text()
        with pytest.raises(FlashError, match="has none for it"):
            with SerialTransport(h.port) as t:
                flash_helmet(t, bundle=src, keystore=tmp_path / "empty")

    logs = "\n".join(outputs) + caplog.text
    assert key.hex() not in logs and key.hex().upper() not in logs and repr(key)[2:-1] not in logs
