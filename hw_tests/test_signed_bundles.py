"""Host in the loop: a helmet with a signing key runs only bundles signed for it (docs/signing.md).

Provisions the helmet (a real board with ``--port``, else the virtual helmet) with a test
key from a temporary keystore, flashes a signed bundle, then sends unsigned, tampered and
wrong-key bundles: each is refused with its reason and the signed bundle keeps running.
A board that already has a key is left alone (skipped); the test key is removed afterwards.
"""

from __future__ import annotations

import json

import pytest

from painhelm.firmware import bundle as fmt
from painhelm.firmware import sign, slots
from painhelm.host_tools import image, keys
from painhelm.host_tools.flash import FlashError, confirm_boot, flash, flash_helmet
from painhelm.host_tools.keys_cmd import provision

from .test_stream import stream_bundle  # noqa: F401 - the compact 256 KB bundle


@pytest.fixture(scope="module")
def keyed(helmet, tmp_path_factory):
    """The helmet provisioned with a fresh key; yields (transport, key). Unprovisioned after."""
    helmet.enter_raw_repl(soft_reset=True)
    if keys.device_signing(helmet)[0]:
        pytest.skip("this helmet already has a signing key: not replacing it")
    store = keys.KeyStore(tmp_path_factory.mktemp("keys"))
    did = provision(helmet, store, "hwtest")["device_id"]
    yield helmet, store.get(did)
    helmet.enter_raw_repl(soft_reset=True)
    for p in (sign.KEY_FILE, sign.ID_FILE):
        helmet.fs_remove("/" + p, missing_ok=True)
    helmet.soft_reset()


def test_only_bundles_signed_for_this_helmet_run(keyed, stream_bundle, tmp_path):  # noqa: F811
    t, key = keyed
    src = stream_bundle["bundle"]
    info = flash_helmet(t, bundle=src, key=key)["info"]
    model = image.model_sha256(image.check_bundle(src))
    assert info["signing"] == "on" and info["model_sha256"] == model and info["bundle"] == slots.ACTIVE

    other = bytes(32)
    with pytest.raises(FlashError, match="refused the new bundle: .*does not match this helmet's key; it kept"):
        flash_helmet(t, bundle=src, key=other)
    signed = keys.sign_payload(image.check_bundle(src), key, "hwtest")
    man = json.dumps(json.loads(signed[fmt.MANIFEST_FILE]), indent=2).encode()  # same content, other bytes
    assert man != signed[fmt.MANIFEST_FILE]
    pre = signed[fmt.PREPROC_FILE].replace(b"}", b" }", 1)
    for files, why in (({n: d for n, d in signed.items() if n != sign.SIGNATURE_FILE}, "unsigned bundle refused"),
                       (dict(signed, **{fmt.MANIFEST_FILE: man}), "does not match this helmet's key"),
                       (dict(signed, **{fmt.PREPROC_FILE: pre}), "preproc.json is")):
        flash(t, {f"/{slots.PENDING}/{n}": d for n, d in files.items()}, reset=True)
        info = confirm_boot(t, None, timeout=60)
        assert why in info["bundle_refused"] and info["model_sha256"] == model, info
