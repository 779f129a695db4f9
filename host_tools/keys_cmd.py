"""`painhelm keys ...`: create, list and provision the per-helmet bundle-signing keys.

- ``painhelm keys create [--device-id ID]``: a random 32-byte key in the keystore.
- ``painhelm keys list``: ids and fingerprints (never the keys).
- ``painhelm keys provision --port P [--device-id ID]``: put a helmet's id and key on it
  (creating the key if needed) and prove it is in place with a challenge, not by reading it back.

The keystore is ``--keys DIR``, else ``$PAINHELM_KEYS``, else ``~/.local/share/painhelm/keys``.
See docs/signing.md.
"""

from __future__ import annotations

import argparse
import secrets
from pathlib import Path

from painhelm.firmware import bundle as fmt
from painhelm.firmware import sign

from . import keys

__all__ = ["do_keys", "parser_keys", "provision"]


def parser_keys(p: argparse.ArgumentParser) -> None:
    """Options of `painhelm keys`."""
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="create a random signing key for a helmet id in the keystore")
    c.add_argument("--device-id", default=None, help="helmet id (default: a new random helmet-XXXXXXXX)")
    ls = sub.add_parser("list", help="list the keystore's helmet ids and key fingerprints (never the keys)")
    v = sub.add_parser("provision", help="write a helmet's id and key to it over the raw REPL and verify them; "
                                         "it then refuses unsigned bundles")
    for q in (c, ls, v):
        q.add_argument("--keys", default=None, metavar="DIR",
                       help="keystore folder (default: $PAINHELM_KEYS or ~/.local/share/painhelm/keys)")
    v.add_argument("--port", required=True, help="serial port of the helmet")
    v.add_argument("--device-id", default=None,
                   help="helmet id (default: the id the helmet already has, else a new random one)")
    v.add_argument("--force", action="store_true", help="replace a different key the helmet already has")


def _ask_answer(transport, challenge: bytes) -> str | None:
    """The helmet's HMAC of ``challenge`` with the key it holds, computed by the firmware's
    sign module; on a board without the firmware yet, by the same sign.py sent as code."""
    from .transport import TransportExecError

    call = f"print(repr(answer({challenge.hex()!r}, {'/' + sign.KEY_FILE!r})))"
    try:
        out = transport.exec_("from sign import answer\n" + call)
    except TransportExecError as exc:
        if "ImportError" not in exc.error:
            raise
        out = transport.exec_(Path(sign.__file__).read_text() + "\n" + call)
    import ast

    return ast.literal_eval(out.decode().strip())


def _holds(transport, key: bytes) -> bool:
    challenge = secrets.token_bytes(16)
    want = sign.hmac_sha256(key, sign.CHALLENGE_PREFIX, challenge).hex()
    got = _ask_answer(transport, challenge)
    return got is not None and sign.equal(got.encode(), want.encode())


def provision(transport, store: keys.KeyStore, device_id: str | None = None, force: bool = False) -> dict:
    """Give the helmet behind ``transport`` its id and key; return what was done:
    ``{"device_id", "fingerprint", "created" (new key in the keystore), "written" (False: the
    helmet had this key already), "bundle_signed" (None: no bundle on it)}``.
    KeyStoreError for a refusal; the key never leaves this function except to the helmet."""
    transport.enter_raw_repl(soft_reset=True)
    try:
        return _provision(transport, store, device_id, force)
    finally:
        try:
            transport.soft_reset()  # the firmware starts again (now checking signatures)
        except Exception:  # noqa: BLE001 - the error that got us here matters more
            pass


def _provision(transport, store: keys.KeyStore, device_id: str | None, force: bool) -> dict:
    has_key, current = keys.device_signing(transport)
    did = keys.check_id(device_id or current or keys.new_device_id())
    key = store.get(did)
    written = True
    if has_key and key is not None and current == did and _holds(transport, key):
        written = False  # already provisioned with this key
    elif has_key and not force:
        raise keys.KeyStoreError(
            f"the helmet already has a signing key{f' (id {current})' if current else ''} that is not the "
            f"keystore's key for {did}: give --force to replace it (bundles signed with the old key are then refused)")
    created = key is None
    if created:
        key = store.create(did)
    if written:
        transport.fs_mkdir("/" + sign.KEY_FILE.rsplit("/", 1)[0])
        transport.fs_writefile("/" + sign.ID_FILE, did.encode())  # the id first: a key alone turns signing on
        transport.fs_writefile("/" + sign.KEY_FILE, key)
        if not _holds(transport, key):
            raise keys.KeyStoreError(f"the helmet did not prove it holds the key for {did} after writing it: "
                                     "provision it again")
    signed = None
    active = "/" + fmt.BUNDLE_DIR
    if transport.fs_exists(f"{active}/{fmt.MANIFEST_FILE}"):
        manifest = transport.fs_readfile(f"{active}/{fmt.MANIFEST_FILE}")
        sig = transport.fs_readfile(f"{active}/{sign.SIGNATURE_FILE}") if transport.fs_exists(
            f"{active}/{sign.SIGNATURE_FILE}") else None
        signed = sig is not None and sig.split()[-1:] == [sign.signature(key, manifest, did).split()[-1]]
    return {"device_id": did, "fingerprint": keys.fingerprint(key), "created": created, "written": written,
            "bundle_signed": signed}


def do_keys(args) -> int:
    """Run `painhelm keys ACTION`; keystore trouble becomes one CommandError line."""
    from .cli import CommandError

    store = keys.KeyStore(args.keys)
    try:
        if args.keys_command == "create":
            did = keys.check_id(args.device_id or keys.new_device_id())
            key = store.create(did)
            print(f"created key for {did} (fingerprint {keys.fingerprint(key)}) in {store.dir}")
            return 0
        if args.keys_command == "list":
            found = store.list()
            if not found:
                print(f"no keys in {store.dir} (create one with `painhelm keys create` or `painhelm keys provision`)")
            for did, fp in found:
                print(f"{did}  {fp}")
            return 0
        if args.keys_command == "provision":
            return _do_provision(args, store)
    except keys.KeyStoreError as exc:
        raise CommandError(str(exc)) from None
    raise AssertionError(args.keys_command)


def _do_provision(args, store: keys.KeyStore) -> int:
    from .transport import SerialTransport, TransportError
    from .cli import CommandError

    t = SerialTransport(args.port, wait=3.0)
    try:
        r = provision(t, store, args.device_id, args.force)
    except TransportError as exc:
        raise CommandError(f"provisioning failed: {exc}") from None
    finally:
        t.close()
    made = "created in" if r["created"] else "from"
    if r["written"]:
        print(f"provisioned helmet {r['device_id']} on {args.port}: key {r['fingerprint']} ({made} {store.dir}), "
              "verified by a challenge; signing is on: the helmet now refuses unsigned bundles")
    else:
        print(f"helmet {r['device_id']} on {args.port} already holds key {r['fingerprint']} (verified by a challenge)")
    if r["bundle_signed"] is False:
        print(f"note: the bundle on the helmet is not signed with this key and is refused now: flash it again "
              f"(painhelm flash --port {args.port} --bundle DIR) to sign it")
    return 0
