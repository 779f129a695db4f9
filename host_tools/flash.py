"""Flash files onto a helmet safely: skip unchanged files, resume, verify, then switch over at once.

Device paths are absolute (``/main.py``, ``/model_bundle.new/model.tflite``). A relative path
is taken relative to the filesystem root (the device's working directory after boot), so
``lib/wire.py`` means ``/lib/wire.py``. On the virtual helmet ``/`` is its folder.

Two phases:

1. Stage: each changed file is written to ``<path>.tmp`` and its SHA-256 is checked on the
   device. Nothing the firmware uses has changed yet; an interrupted flash (cable, power,
   Ctrl-C) leaves the old files in place plus ``.tmp`` files. The next flash hashes those:
   a complete one is reused, a partial one that matches the start of the file is extended
   from where it stopped, anything else is rewritten.
2. Commit: one exec on the device renames every staged file over its target (``main.py``
   last), removes stale files (a ``.py`` that would shadow a new ``.mpy``) and leftover
   ``.tmp`` files. It runs on the device without the host, in milliseconds, so only a power
   cut inside that window can leave old and new modules mixed; flashing again repairs it.

:func:`flash` flashes any files; :func:`flash_helmet` is what ``painhelm flash`` does
(firmware as .mpy or .py, the bundle into its ``model_bundle.new`` slot, the settings, then a
reset and a check that the helmet booted the new firmware and promoted the bundle).
"""

from __future__ import annotations

import hashlib
import posixpath
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from .transport import SerialTransport, TransportError

__all__ = ["FlashError", "Plan", "device_path", "flash", "flash_helmet", "format_plan", "progress_bar"]

# (file being written, bytes sent so far, bytes to send in all)
Progress = Callable[[str, int, int], None]

SPACE_MARGIN = 8192  # bytes kept free on the device: littlefs needs a few blocks to rename


class FlashError(Exception):
    """Flashing failed; the message says which file and why."""


def device_path(path: str) -> str:
    """Normalise a device path to an absolute one; reject ``..`` and empty names."""
    norm = posixpath.normpath("/" + path.lstrip("/"))
    if norm == "/" or ".." in path.split("/"):
        raise FlashError(f"invalid device path {path!r}: give a file path such as '/main.py'")
    return norm


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Step:
    """One file to stage: ``offset`` bytes of ``<path>.tmp`` are already on the device."""

    def __init__(self, path: str, data: bytes, sha: str, offset: int, why: str) -> None:
        self.path, self.data, self.sha, self.offset, self.why = path, data, sha, offset, why

    @property
    def to_send(self) -> int:
        return len(self.data) - self.offset


class Plan:
    """What a flash will do, worked out from the device's hashes before anything is written.

    ``steps``: files to stage (new, changed, resumed, or already staged); ``skipped``:
    unchanged paths; ``delete``: existing device files that go; ``stale_tmp``: leftover
    ``.tmp`` files of earlier flashes that are removed; ``sizes``: device path -> size.
    """

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.skipped: list[str] = []
        self.delete: list[str] = []
        self.stale_tmp: list[str] = []
        self.sizes: dict[str, int] = {}
        self.rmdirs: list[str] = []

    @property
    def bytes_to_send(self) -> int:
        return sum(s.to_send for s in self.steps)

    def summary(self) -> dict:
        """The plan as a JSON-able dict (what ``flash(..., dry_run=True)`` returns)."""
        return {"written": [s.path for s in self.steps], "skipped": list(self.skipped),
                "deleted": list(self.delete), "stale_tmp": list(self.stale_tmp),
                "resumed": {s.path: s.offset for s in self.steps if s.offset},
                "bytes": self.bytes_to_send, "sizes": dict(self.sizes),
                "why": {s.path: s.why for s in self.steps}}


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n} B"


def format_plan(summary: dict, verbose: bool = True) -> list[str]:
    """Lines describing a plan or a flash summary: each write/delete, then the counts."""
    lines = []
    sizes = summary.get("sizes", {})
    why = summary.get("why", {})
    resumed = summary.get("resumed", {})
    if verbose:
        for p in summary["written"]:
            size = sizes.get(p, 0)
            note = why.get(p, "")
            if p in resumed:
                note = f"resume from {_kb(resumed[p])}"
            lines.append(f"  write   {p}  {_kb(size)}" + (f"  ({note})" if note else ""))
        for p in summary.get("deleted", []):
            lines.append(f"  delete  {p}")
        for p in summary.get("stale_tmp", []):
            lines.append(f"  delete  {p}  (left by an interrupted flash)")
    skipped = summary.get("skipped", [])
    lines.append(f"{len(summary['written'])} files to write ({_kb(summary['bytes'])} to send), "
                 f"{len(skipped)} unchanged ({_kb(sum(sizes.get(p, 0) for p in skipped))}), "
                 f"{len(summary.get('deleted', [])) + len(summary.get('stale_tmp', []))} to delete")
    return lines


def plan(transport: SerialTransport, files: Mapping[str, bytes], delete: Iterable[str] = ()) -> Plan:
    """Compare ``files`` with the device (one exec lists folders, one hashes); no writes.

    ``delete``: device paths to remove if they exist. Leftover ``.tmp`` files in the folders
    of ``files`` and ``delete`` are found too.
    """
    files = {device_path(p): bytes(d) for p, d in files.items()}
    delete = [device_path(p) for p in delete if device_path(p) not in files]
    dirs = sorted({posixpath.dirname(p) for p in files} | {posixpath.dirname(p) for p in delete})
    listing = _list_dirs(transport, dirs)
    tmps = {p + ".tmp" for p in files}
    stale = sorted(posixpath.join(d, n) for d, names in listing.items() for n in names
                   if n.endswith(".tmp") and posixpath.join(d, n) not in tmps and posixpath.join(d, n) not in delete)
    found = transport.fs_hashes(list(files) + sorted(tmps) + delete)
    found = _fill_missing_hashes(transport, found)
    out = Plan()
    out.delete = [p for p in delete if p in found]
    out.stale_tmp = stale
    for path, data in files.items():
        out.sizes[path] = len(data)
        local = _sha(data)
        if found.get(path) == (len(data), local):
            out.skipped.append(path)
            continue
        why = "changed" if path in found else "new"
        offset = 0
        tmp = found.get(path + ".tmp")
        if tmp is not None:
            n, remote = tmp
            if n == len(data) and remote == local:
                offset, why = n, "staged by an interrupted flash"
            elif 0 < n < len(data) and remote == _sha(data[:n]):
                offset, why = n, f"resume from {_kb(n)}"
        out.steps.append(Step(path, data, local, offset, why))
    return out


def _list_dirs(transport: SerialTransport, dirs: list[str]) -> dict[str, list[str]]:
    """``{folder: names}`` for the folders that exist, in one exec."""
    import ast

    code = (f"for _d in {dirs!r}:\n try:\n  print(repr((_d, os.listdir(_d))))\n except OSError:\n  pass")
    out = transport._fs("listing folders", code)
    return dict(ast.literal_eval(line) for line in out.decode().splitlines() if line.strip())


def _fill_missing_hashes(transport: SerialTransport, found: dict) -> dict:
    """A port without hashlib: read those files back and hash them here."""
    for p, (n, digest) in list(found.items()):
        if digest is None:
            found[p] = (n, _sha(transport.fs_readfile(p)))
    return found


def _commit(transport: SerialTransport, renames: list[tuple[str, str]], delete: list[str],
            tmp_dirs: list[str], rmdirs: list[str]) -> None:
    """Switch over in one exec: renames (in order), deletions, leftover .tmp files."""
    code = (
        "def _mv(a, b):\n"
        " try:\n  os.rename(a, b)\n except OSError:\n"
        "  os.remove(b)\n  os.rename(a, b)\n"  # FAT refuses to rename over an existing file
        f"for _a, _b in {renames!r}:\n _mv(_a, _b)\n"
        f"for _p in {delete!r}:\n try:\n  os.remove(_p)\n except OSError:\n  pass\n"
        f"for _d in {tmp_dirs!r}:\n try:\n  _ns = os.listdir(_d)\n except OSError:\n  _ns = []\n"
        " for _n in _ns:\n  if _n.endswith('.tmp'):\n   os.remove(_d.rstrip('/') + '/' + _n)\n"
        f"for _d in {rmdirs!r}:\n try:\n  os.rmdir(_d)\n except OSError:\n  pass\n"
        "del _mv"
    )
    transport._fs("switching over to the new files", code)


def _stage(transport: SerialTransport, step: Step, sent: int, total: int, progress: Progress | None) -> None:
    """Write (or finish) ``<path>.tmp`` and check its SHA-256 on the device."""
    tmp = step.path + ".tmp"
    if step.offset < len(step.data) or not step.data:
        cb = None
        if progress is not None:
            cb = lambda done, _n: progress(step.path, sent + done - step.offset, total)  # noqa: E731
        transport.fs_writefile(tmp, step.data, progress=cb, offset=step.offset)
    got = transport.fs_hashes([tmp]).get(tmp)
    if got is not None and got[1] is None:
        got = (got[0], _sha(transport.fs_readfile(tmp)))
    if got != (len(step.data), step.sha):
        transport.fs_remove(tmp, missing_ok=True)
        shown = "nothing" if got is None else f"{got[0]} bytes with SHA-256 {got[1][:16]}..."
        raise FlashError(
            f"verification failed for {step.path}: the device holds {shown}, expected {len(step.data)} bytes "
            f"with SHA-256 {step.sha[:16]}... (the link corrupted data?); the old file was left in place"
        )


def _enter(transport: SerialTransport) -> dict:
    """Stop whatever runs (soft reset inside the raw REPL: main.py does not start again, the
    heap is empty for the transfer) and read the board's facts."""
    transport.enter_raw_repl(soft_reset=True)
    return transport.device_facts()


def _check_space(facts: dict, p: Plan) -> None:
    free = facts.get("storage_free")
    need = sum(len(s.data) for s in p.steps)  # old and new copies coexist until the switch-over
    if free is not None and need + SPACE_MARGIN > free:
        raise FlashError(f"not enough space on the helmet: this flash stages {_kb(need)}, "
                         f"{_kb(free)} are free (remove files or flash a smaller bundle)")


def _run(transport: SerialTransport, files: Mapping[str, bytes], facts: dict, progress: Progress | None,
         reset: bool, delete: Iterable[str], dry_run: bool, rmdirs: Iterable[str] = ()) -> dict:
    t0 = time.monotonic()
    p = plan(transport, files, delete)
    p.rmdirs = [device_path(d) for d in rmdirs]
    if dry_run:
        if reset:
            transport.soft_reset()  # leave the helmet running as before
        return dict(p.summary(), dry_run=True)
    _check_space(facts, p)
    made = {"/"}
    for step in p.steps:
        parent = posixpath.dirname(step.path)
        if parent not in made:
            transport.fs_mkdir(parent)
            made.add(parent)
    total, sent = p.bytes_to_send, 0
    if progress is not None:
        progress("", 0, total)
    for step in p.steps:
        _stage(transport, step, sent, total, progress)
        sent += step.to_send
    # one switch-over; main.py (the entry point) last, so it never starts with missing modules
    order = sorted(p.steps, key=lambda s: s.path == "/main.py")
    dirs = sorted({posixpath.dirname(s.path) for s in p.steps} | {posixpath.dirname(x) for x in p.stale_tmp})
    _commit(transport, [(s.path + ".tmp", s.path) for s in order], p.delete, dirs, p.rmdirs)
    if reset:
        transport.soft_reset()
    return dict(p.summary(), seconds=round(time.monotonic() - t0, 3))


def flash(
    transport: SerialTransport,
    files: Mapping[str, bytes],
    progress: Progress | None = None,
    reset: bool = True,
    *,
    delete: Iterable[str] = (),
    dry_run: bool = False,
) -> dict:
    """Write ``files`` (device path -> content) to the helmet; return a summary.

    Unchanged files (same size and SHA-256 on the device) are skipped; an interrupted earlier
    flash is resumed. ``progress(path, sent, total)`` reports bytes sent over the whole
    flash. ``delete``: device paths removed at the switch-over. With ``reset`` the board
    soft-resets at the end so boot.py and main.py start the new firmware. ``dry_run``: work
    out and return the plan, write nothing. Returns ``{"written": [...], "skipped": [...],
    "deleted": [...], "resumed": {path: offset}, "bytes": n, ...}`` with device paths and
    the number of bytes sent.
    """
    try:
        return _run(transport, files, _enter(transport), progress, reset, delete, dry_run)
    except TransportError as exc:
        raise FlashError(f"flashing failed: {exc}") from None


def flash_helmet(
    transport: SerialTransport,
    bundle: str | Path | None = None,
    config: str | Path | None = None,
    mpy: bool | None = None,
    progress: Progress | None = None,
    reset: bool = True,
    dry_run: bool = False,
    timeout: float = 60.0,
    key: bytes | None = None,
    keystore: str | Path | None = None,
) -> dict:
    """Flash the painhelm firmware, optionally a bundle folder and a settings file; return a summary.

    ``mpy``: None compiles the firmware to .mpy when the board's ``sys.implementation._mpy``
    matches mpy-cross (else .py, with a note), True insists on .mpy, False sends .py.
    The bundle goes to ``model_bundle.new/`` (manifest last) unless the helmet already runs
    an identical one. With ``reset`` the helmet reboots and this waits (``timeout`` s) for
    the firmware's answer: it must be this firmware version and, with a bundle, it must have
    promoted the new bundle, else FlashError with the helmet's reason. The summary adds
    ``mpy`` (the arch or None), ``notes`` and ``info`` (the firmware's answer).
    The bundle is signed for this helmet (docs/signing.md) with ``key``, else, when the
    helmet has signing on, with its key from ``keystore`` (default: ``keys.default_dir()``).
    """
    from painhelm.firmware import slots

    from . import image

    pending = "/" + slots.PENDING
    active = "/" + slots.ACTIVE
    payload = image.check_bundle(bundle) if bundle is not None else None  # host checks first
    cfg = image.check_config(config) if config is not None else None
    try:
        facts = _enter(transport)
        arch, note = image.mpy_target(facts.get("mpy"), mpy)
        fw = image.firmware_files(mpy=arch is not None, arch=arch or "x64", flags=image.mpy_flags(facts.get("mpy")))
        files: dict[str, bytes] = {}
        delete: list[str] = []
        for name, data in fw.items():
            if name == "main.py":
                continue
            files["/" + name] = data
            stem, ext = name.rsplit(".", 1)
            if name not in image.SOURCE_ONLY:  # MicroPython imports X.py before X.mpy
                delete.append(f"/{stem}.{'py' if ext == 'mpy' else 'mpy'}")
        if cfg is not None:
            files["/" + image.CONFIG_FILE] = cfg
        rmdirs: list[str] = []
        notes = [note] if note else []
        staged = False  # a new bundle goes to model_bundle.new this time
        if payload is not None:
            payload = _sign_bundle(transport, payload, key, keystore, notes)
            names = list(payload)
            in_use = transport.fs_hashes([f"{active}/{n}" for n in names])
            listed = _list_dirs(transport, [pending]).get(pending, [])
            if all(in_use.get(f"{active}/{n}") == (len(d), _sha(d)) for n, d in payload.items()):
                # the helmet runs this bundle already: write nothing, and drop any pending one
                # (it would replace this bundle at the next boot)
                delete += [f"{pending}/{n}" for n in listed]
                rmdirs.append(pending)
                notes.append("the helmet already runs this bundle")
            else:
                staged = True
                for n in names:  # manifest last (check_bundle's order): it marks the copy complete
                    files[f"{pending}/{n}"] = payload[n]
                delete += [f"{pending}/{n}" for n in listed if n not in payload and not n.endswith(".tmp")]
        files["/main.py"] = fw["main.py"]
        summary = _run(transport, files, facts, progress, reset and not dry_run, delete, dry_run, rmdirs)
        if dry_run and reset:
            transport.soft_reset()
    except TransportError as exc:
        raise FlashError(f"flashing failed: {exc}") from None
    summary.update(mpy=arch, notes=notes, facts=facts)
    if reset and not dry_run:
        want = None if payload is None else image.model_sha256(payload)
        summary["info"] = confirm_boot(transport, want, timeout, staged)
    return summary


def _sign_bundle(transport: SerialTransport, payload: dict[str, bytes], key: bytes | None,
                 keystore: str | Path | None, notes: list[str]) -> dict[str, bytes]:
    """The bundle files plus the signature this helmet checks (unchanged, with a note, for a
    helmet with signing off and no ``key``)."""
    from . import keys

    has_key, device_id = keys.device_signing(transport)
    if key is None and has_key:
        store = keys.KeyStore(keystore)
        if device_id is None:
            raise FlashError("this helmet has a signing key but no device id: provision it again "
                             "(`painhelm keys provision`)")
        try:
            key = store.get(device_id)
        except keys.KeyStoreError as exc:
            raise FlashError(str(exc)) from None
        if key is None:
            raise FlashError(f"helmet {device_id} only accepts bundles signed with its own key and the keystore "
                             f"{store.dir} has none for it: use the keystore that provisioned it "
                             "(--keys DIR or $PAINHELM_KEYS) or --key FILE")
    if key is None:
        notes.append("signing is off on this helmet: it accepts unsigned bundles (`painhelm keys provision` "
                     "turns it on)")
        return payload
    return keys.sign_payload(payload, key, device_id or "-")


def confirm_boot(transport: SerialTransport, model_sha256: str | None, timeout: float = 60.0,
                 staged: bool = True) -> dict:
    """After the reset: wait for the firmware's answer on the transport's port; check that it
    is this firmware and (``model_sha256`` given) that it promoted and loaded that model.
    ``staged``: a new bundle was written this time, so a refusal the helmet reports is this
    flash's (the helmet remembers the last refusal until a bundle is promoted).
    Returns the firmware's info; FlashError with the helmet's reason otherwise."""
    from painhelm.firmware import slots, version, wire

    from .link import HelmetLink, LinkError

    link = HelmetLink(transport.serial, timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = link.ping(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            break
        except LinkError as exc:
            crash = _crash(list(link.text))
            if crash is not None or time.monotonic() >= deadline:
                said = b" | ".join(list(link.text)[-4:]).decode(errors="replace").strip()
                why = (f"its firmware stopped: {crash}" if crash is not None
                       else f"no answer within {timeout:g} s ({exc})" + (f"; it printed: {said[-300:]}" if said else ""))
                raise FlashError(f"the helmet did not start the new firmware: {why}") from None
        except (OSError, ValueError) as exc:
            raise FlashError(f"lost the serial link to {transport.port} after flashing: {exc}") from None
    if info.get("firmware") != version.VERSION or info.get("protocol") != wire.PROTOCOL_VERSION:
        raise FlashError(f"after flashing, the helmet reports firmware {info.get('firmware')} protocol "
                         f"v{info.get('protocol')}, expected {version.VERSION} v{wire.PROTOCOL_VERSION} "
                         "(is another main.py or a frozen firmware taking precedence?)")
    # a refusal the boot announced (ERR_BUNDLE_REFUSED after its ready PONG) or the info
    # reports: the helmet repeats it at every boot until a bundle is promoted, so it is this
    # flash's only when this flash staged a bundle (else it is an old one, already reported)
    refused = None
    if staged:
        announced = [text for _, code, text in link.device_errors if code == wire.ERR_BUNDLE_REFUSED]
        refused = (announced[-1] if announced else None) or info.get("bundle_refused")
    refused = refused or info.get("bundle_error")
    if model_sha256 is not None and (refused or info.get("bundle") != slots.ACTIVE
                                     or info.get("model_sha256") != model_sha256):
        reason = refused or "it did not load it"
        kept = info.get("model_sha256")
        then = f"it kept the previous one (model {kept[:12]})" if kept else "it has no usable bundle now"
        raise FlashError(f"the helmet refused the new bundle: {reason}; {then}")
    return info


def _crash(lines: list[bytes]) -> str | None:
    """The exception that ended main.py, from the console lines the link saw (None: no crash).

    The first traceback is the firmware's own; later ones come from our PING frames reaching
    the REPL that took over after it."""
    for i, line in enumerate(lines):
        if line.strip().startswith(b"Traceback"):
            for later in lines[i + 1:]:
                text = later.decode(errors="replace").strip()
                if text and not later.startswith((b" ", b"\t")) and ":" in text:
                    return text
            return "a traceback"
    return None


def progress_bar(desc: str = "flash") -> Progress:
    """A flash progress callback ``(path, sent, total)`` drawing one tqdm bar over all bytes."""
    from tqdm.auto import tqdm

    state: dict = {}

    def cb(path: str, done: int, total: int) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                                      leave=False)
        if path:
            bar.set_postfix_str(path.rsplit("/", 1)[-1], refresh=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return cb
