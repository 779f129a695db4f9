"""Serial link to a MicroPython helmet: raw REPL, raw-paste exec and filesystem helpers.

Same protocol as mpremote's ``transport_serial`` (raw REPL: Ctrl-A; raw-paste: ``\\x05A\\x01``
with flow control; exec output ends ``\\x04``, error output ``\\x04``, then the ``>`` prompt),
written for painhelm: one exception family, overall timeouts, errors that say what arrived.

Device paths are passed to the device verbatim, always quoted with ``repr``. On a board ``/``
is the flash filesystem; on the virtual helmet ``/`` is its folder.
"""

from __future__ import annotations

import ast
import binascii
import errno
import hashlib
import struct
import time
from typing import Callable

__all__ = ["SerialTransport", "TransportError", "TransportExecError"]

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
_POLL_S = 0.05  # pyserial read timeout; overall timeouts are enforced by our loops
WRITE_CHUNK = 2048  # bytes per base64 line sent to the device
WRITE_BATCH = 12288  # bytes per exec: its literals and their decoded copy must fit a 256 KB heap
HASH_BUF = 1024  # bytes read per step when the device hashes a file


class TransportError(Exception):
    """The serial link to the helmet failed (port missing or busy, no answer, bad reply)."""


class TransportExecError(TransportError):
    """Code sent to the helmet raised an exception there; ``error`` is its traceback."""

    def __init__(self, output: bytes, error: str, what: str = "code run on the device") -> None:
        self.output = output
        self.error = error
        last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        super().__init__(f"{what} failed: {last}\n{error.rstrip()}")


def _partial_suffix(data: bytes | bytearray, ending: bytes) -> int:
    """Length of the longest proper prefix of ``ending`` that ``data`` ends with."""
    for k in range(min(len(ending) - 1, len(data)), 0, -1):
        if data.endswith(ending[:k]):
            return k
    return 0


def _open_error(port: str, exc: BaseException) -> TransportError:
    """Turn a pyserial open failure into a sentence naming the port and the likely cause."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        why = "no such port (is the helmet plugged in? check the name, e.g. /dev/ttyUSB0)"
    elif code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in text.lower() or "busy" in text.lower():
        why = "the port may be in use by another program (close other serial terminals, mpremote or painhelm sessions)"
    elif code in (errno.EACCES, errno.EPERM) or "ermission" in text:
        why = "permission denied (on Linux add your user to the 'dialout' group, then log in again)"
    else:
        why = text
    return TransportError(f"cannot open serial port {port}: {why}")


class SerialTransport:
    """Talks to a MicroPython board (or the virtual helmet) over a serial port.

    ``serial`` is the open pyserial object; after :meth:`exit_raw_repl` or :meth:`soft_reset`
    the application link may read and write it directly (no bytes beyond the reset message
    have been consumed).
    """

    def __init__(self, port: str, baudrate: int = 115200, wait: float = 0.0) -> None:
        import serial  # pyserial; imported here so the module imports without it

        self.port = port
        self.in_raw_repl = False
        self.use_raw_paste = True
        self._rx = bytearray()  # bytes read past a reply (only by greedy exec reads)
        self._b64: bool | None = None  # the board has binascii.a2b_base64 (None: not asked yet)
        deadline = time.monotonic() + max(0.0, wait)
        kwargs = {"baudrate": baudrate, "timeout": _POLL_S, "write_timeout": 10}
        if "://" not in port:
            kwargs["exclusive"] = True  # refuse a port another program holds
        while True:
            try:
                self.serial = serial.serial_for_url(port, **kwargs)
                break
            except (serial.SerialException, OSError, ValueError) as exc:
                if time.monotonic() >= deadline:
                    raise _open_error(port, exc) from None
                time.sleep(0.25)

    # ----------------------------------------------------------------- raw bytes
    def write(self, data: bytes) -> None:
        """Write bytes to the port, as a TransportError if the link is gone."""
        try:
            self.serial.write(data)
        except Exception as exc:  # pyserial raises SerialException/OSError/SerialTimeoutException
            raise TransportError(f"lost the serial link to {self.port} while writing: {exc}") from None

    def _read(self, n: int) -> bytes:
        try:
            return self.serial.read(n)
        except Exception as exc:
            raise TransportError(f"lost the serial link to {self.port} while reading: {exc}") from None

    def _in_waiting(self) -> int:
        try:
            return self.serial.in_waiting
        except Exception as exc:
            raise TransportError(f"lost the serial link to {self.port}: {exc}") from None

    def read_until(self, ending: bytes, timeout: float = 10.0, *, greedy: bool = False) -> bytes:
        """Read until ``ending`` arrives (returned included); TransportError after ``timeout`` s.

        Never reads past ``ending`` unless ``greedy`` (faster for long replies followed by
        silence, e.g. raw-REPL exec output); extra bytes are kept for the next call.
        """
        deadline = time.monotonic() + timeout
        data = bytearray(self._rx)
        self._rx.clear()
        idx = data.find(ending)
        while idx < 0:
            if time.monotonic() >= deadline:
                shown = bytes(data[-300:])
                raise TransportError(
                    f"no reply from {self.port}: waited {timeout:g} s for {ending!r}, received "
                    f"{len(data)} bytes{' ending ' if len(data) > 300 else ': '}{shown!r}"
                )
            if greedy:
                n = max(1, self._in_waiting())
            else:
                n = len(ending) - _partial_suffix(data, ending)  # cannot overshoot ``ending``
            chunk = self._read(n)
            if chunk:
                start = max(0, len(data) - len(ending) + 1)
                data += chunk
                idx = data.find(ending, start)
        end = idx + len(ending)
        self._rx[:0] = data[end:]
        return bytes(data[:end])

    def _drain(self, quiet: float = 0.05, limit: float = 2.0) -> bytes:
        """Discard input until the line has been quiet for ``quiet`` s (at most ``limit`` s)."""
        got = bytearray(self._rx)
        self._rx.clear()
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < quiet:
            n = self._in_waiting()
            if n:
                got += self._read(n)
                last = time.monotonic()
            else:
                time.sleep(0.005)
        return bytes(got)

    # ----------------------------------------------------------------- REPL control
    def enter_raw_repl(self, soft_reset: bool = False, timeout: float = 10.0) -> None:
        """Interrupt any running program and enter the raw REPL (optionally soft-resetting).

        With ``soft_reset`` the board reboots inside the raw REPL, so main.py does not run.
        Retries a few times: a running main.py may swallow the first Ctrl-C, and a device
        already in the raw REPL answers with a second banner.
        """
        last_error: TransportError | None = None
        for attempt in range(3):
            self.write(b"\r\x03\x03")  # Ctrl-C twice: stop main.py even inside a try/except
            time.sleep(0.05 + 0.1 * attempt)
            self._drain(quiet=0.03)
            self.write(b"\r\x01")  # Ctrl-A: raw REPL
            try:
                self.read_until(RAW_BANNER + b">", timeout=min(timeout, 2.0 + 2.0 * attempt))
                self._drain(quiet=0.05)  # a retry can leave a second banner behind
                break
            except TransportError as exc:
                last_error = exc
        else:
            raise TransportError(
                f"could not enter the raw REPL on {self.port}; is a MicroPython board there? ({last_error})"
            )
        self.in_raw_repl = True
        if soft_reset:
            self.write(b"\x04")  # Ctrl-D in the raw REPL: soft reset, stays in raw mode
            self.read_until(b"soft reboot\r\n", timeout=timeout)
            self.read_until(RAW_BANNER + b">", timeout=timeout)

    def exit_raw_repl(self) -> None:
        """Leave the raw REPL for the friendly REPL (Ctrl-B)."""
        self.write(b"\r\x02")
        self.in_raw_repl = False

    def soft_reset(self, timeout: float = 10.0) -> None:
        """Soft-reset the board from the friendly REPL so boot.py and main.py run again."""
        if not self.in_raw_repl:
            self.enter_raw_repl(timeout=timeout)
        self.write(b"\r\x02")  # leave raw REPL: main.py only runs after a friendly-mode reset
        self.in_raw_repl = False
        self.read_until(b">>> ", timeout=timeout)
        self.write(b"\x04")
        self.read_until(b"soft reboot\r\n", timeout=timeout)

    def close(self) -> None:
        """Close the port (the board keeps running whatever it runs)."""
        try:
            self.serial.close()
        except Exception:
            pass

    def __enter__(self) -> "SerialTransport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- exec
    def _raw_paste_write(self, code: bytes, timeout: float) -> None:
        window = struct.unpack("<H", self.read_until_n(2, timeout))[0]
        remain = window
        i = 0
        while i < len(code):
            while remain == 0 or self._in_waiting():
                c = self.read_until_n(1, timeout)
                if c == b"\x01":
                    remain += window  # device granted another window
                elif c == b"\x04":
                    self.write(b"\x04")  # device ended the paste early (e.g. out of memory)
                    return
                else:
                    raise TransportError(f"unexpected byte {c!r} from {self.port} during raw-paste")
            block = code[i : i + remain]
            self.write(block)
            remain -= len(block)
            i += len(block)
        self.write(b"\x04")
        self.read_until(b"\x04", timeout=timeout)  # device acknowledges the end of the code

    def read_until_n(self, n: int, timeout: float = 10.0) -> bytes:
        """Read exactly ``n`` bytes or raise TransportError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        data = bytearray(self._rx[:n])
        del self._rx[:n]
        while len(data) < n:
            if time.monotonic() >= deadline:
                raise TransportError(f"no reply from {self.port}: expected {n} bytes, got {bytes(data)!r}")
            data += self._read(n - len(data))
        return bytes(data)

    def _send_code(self, code: bytes, timeout: float) -> None:
        if self.use_raw_paste:
            self.write(b"\x05A\x01")
            reply = self.read_until_n(2, timeout)
            if reply == b"R\x01":
                return self._raw_paste_write(code, timeout)
            if reply != b"R\x00":
                # The device does not know raw-paste; it re-printed the raw banner.
                self.read_until(b"w REPL; CTRL-B to exit\r\n>", timeout=timeout)
            self.use_raw_paste = False
        for i in range(0, len(code), 256):
            self.write(code[i : i + 256])
            time.sleep(0.01)  # plain raw mode has no flow control
        self.write(b"\x04")
        reply = self.read_until_n(2, timeout)
        if reply != b"OK":
            raise TransportError(f"{self.port} did not accept the code (reply {reply!r})")

    def exec_(self, code: str | bytes, timeout: float = 10.0) -> bytes:
        """Run ``code`` in the raw REPL; return its stdout, raise TransportExecError on error."""
        if not self.in_raw_repl:
            self.enter_raw_repl()
        data = code.encode() if isinstance(code, str) else bytes(code)
        try:
            self._send_code(data, timeout)
            out = self.read_until(b"\x04", timeout=timeout, greedy=True)[:-1]
            err = self.read_until(b"\x04", timeout=timeout, greedy=True)[:-1]
            self.read_until(b">", timeout=timeout)
        except TransportError:
            self.write(b"\x03")  # stop whatever still runs; the next call re-enters the raw REPL
            self.in_raw_repl = False
            self._rx.clear()
            raise
        if err:
            raise TransportExecError(out, err.decode(errors="replace").replace("\r\n", "\n"))
        return out

    def eval_(self, expr: str, timeout: float = 10.0) -> object:
        """Evaluate ``expr`` on the device and return it as a Python literal."""
        out = self.exec_(f"print(repr({expr}))", timeout)
        try:
            return ast.literal_eval(out.decode().strip())
        except (ValueError, SyntaxError) as exc:
            raise TransportError(f"device returned a value that is not a literal: {out[:200]!r}") from exc

    def _fs(self, what: str, code: str, timeout: float = 10.0) -> bytes:
        try:
            return self.exec_("import os\n" + code, timeout)
        except TransportExecError as exc:
            raise TransportExecError(exc.output, exc.error, what) from None

    # ----------------------------------------------------------------- filesystem
    def fs_listdir(self, path: str = "/") -> list[str]:
        """Names in a device folder."""
        out = self._fs(f"listing {path!r}", f"print(repr(os.listdir({path!r})))")
        return list(ast.literal_eval(out.decode().strip()))

    def fs_stat(self, path: str) -> tuple | None:
        """``os.stat`` of a device path, or None if it does not exist."""
        code = f"try:\n print(repr(tuple(os.stat({path!r}))))\nexcept OSError:\n print(None)"
        return ast.literal_eval(self._fs(f"stat of {path!r}", code).decode().strip())

    def fs_exists(self, path: str) -> bool:
        """True if the device path exists."""
        return self.fs_stat(path) is not None

    def fs_mkdir(self, path: str) -> None:
        """Create a device folder and its parents; existing ones are fine."""
        parts = [c for c in path.split("/") if c]
        lead = "/" if path.startswith("/") else ""
        prefixes = [lead + "/".join(parts[: i + 1]) for i in range(len(parts))]
        code = (
            f"for p in {prefixes!r}:\n try:\n  os.mkdir(p)\n except OSError as e:\n"
            "  if e.errno != 17:\n   raise"  # 17: EEXIST
        )
        self._fs(f"creating folder {path!r}", code)

    def fs_remove(self, path: str, missing_ok: bool = False) -> None:
        """Remove a device file (``missing_ok``: no error if it is absent)."""
        if missing_ok:
            code = f"try:\n os.remove({path!r})\nexcept OSError as e:\n if e.errno != 2:\n  raise"
        else:
            code = f"os.remove({path!r})"
        self._fs(f"removing {path!r}", code)

    def fs_rename(self, src: str, dst: str) -> None:
        """Rename a device file (replacing ``dst`` where the filesystem allows it)."""
        self._fs(f"renaming {src!r} to {dst!r}", f"os.rename({src!r}, {dst!r})")

    def device_facts(self) -> dict:
        """What the flasher needs to know about the board, in one exec.

        ``mpy``: ``sys.implementation._mpy`` (None when the port has none), ``sha256`` and
        ``base64``: whether hashlib.sha256 and binascii.a2b_base64 exist, ``storage_free``
        and ``storage_total`` (bytes, None without statvfs), ``platform``, ``version``.
        """
        code = (
            "import sys\nd = {'mpy': getattr(sys.implementation, '_mpy', None), 'platform': sys.platform,\n"
            " 'version': '.'.join(str(v) for v in sys.implementation.version[:3])}\n"
            "try:\n import hashlib\n d['sha256'] = hasattr(hashlib, 'sha256')\nexcept ImportError:\n d['sha256'] = False\n"
            "try:\n import binascii\n d['base64'] = hasattr(binascii, 'a2b_base64')\nexcept ImportError:\n d['base64'] = False\n"
            "try:\n s = os.statvfs('/')\n d['storage_free'] = s[0] * s[4]\n d['storage_total'] = s[0] * s[2]\n"
            "except (AttributeError, OSError):\n d['storage_free'] = d['storage_total'] = None\n"
            "print(repr(d))"
        )
        facts = ast.literal_eval(self._fs("reading the board's facts", code).decode().strip())
        self._b64 = bool(facts.get("base64"))
        return facts

    def fs_writefile(
        self,
        path: str,
        data: bytes,
        chunk_size: int = WRITE_CHUNK,
        progress: Callable[[int, int], None] | None = None,
        offset: int = 0,
    ) -> None:
        """Write ``data[offset:]`` to a device file, binary-safe; ``offset`` > 0 appends to
        the first ``offset`` bytes already there (resuming an interrupted write).

        Chunks travel as base64 (``binascii.a2b_base64``; repr'd bytes literals on a port
        without it), a few per exec, and the file is closed after each exec, so what an
        interrupted transfer leaves is a prefix of ``data`` that a later call can extend.
        ``progress(done, total)`` is called after each exec with bytes of ``data`` on the device.
        """
        if self._b64 is None:
            self.device_facts()
        total = len(data)
        done = max(0, min(int(offset), total))
        mode = "ab" if done else "wb"
        pre = "from binascii import a2b_base64 as _a\n" if self._b64 else ""
        while True:
            # One exec: open, a bounded batch of chunks, close. The batch's literals are all in
            # the device's RAM at once: WRITE_BATCH bytes keeps that small on a 256 KB heap.
            lines, size = [pre + f"_f = open({path!r}, {mode!r})\n_w = _f.write"], 0
            while done + size < total and size < WRITE_BATCH:
                chunk = data[done + size : done + size + chunk_size]
                lines.append(f"_w(_a({binascii.b2a_base64(chunk, newline=False)!r}))" if self._b64
                             else f"_w({chunk!r})")
                size += len(chunk)
            lines.append("_f.close()\ndel _f, _w")
            self._fs(f"writing {path!r}", "\n".join(lines))
            done += size
            mode = "ab"
            if progress is not None:
                progress(done, total)
            if done >= total:
                break

    def fs_readfile(self, path: str, chunk_size: int = 256) -> bytes:
        """Read a device file (chunks travel back as bytes literals, one per line)."""
        code = (
            f"f = open({path!r}, 'rb')\nwhile True:\n b = f.read({int(chunk_size)})\n"
            " if not b:\n  break\n print(repr(b))\nf.close()"
        )
        out = self._fs(f"reading {path!r}", code, timeout=60)
        return b"".join(ast.literal_eval(line) for line in out.decode().splitlines() if line.strip())

    def fs_hashes(self, paths: list[str], timeout: float = 60.0) -> dict[str, tuple[int, str | None]]:
        """``{path: (size, sha256 hex)}`` of the device files among ``paths``, in one exec.

        Paths that do not exist (or are folders) are left out. The hash is None on a port
        without hashlib.sha256 (``fs_sha256`` then reads the file back).
        """
        if not paths:
            return {}
        code = (
            "try:\n import hashlib\n _H = hashlib.sha256\nexcept (ImportError, AttributeError):\n _H = None\n"
            f"_b = bytearray({HASH_BUF})\n_m = memoryview(_b)\n"
            f"for _p in {list(paths)!r}:\n"
            " try:\n  _f = open(_p, 'rb')\n except OSError:\n  continue\n"
            " _n = 0\n _h = _H() if _H else None\n"
            " try:\n  while True:\n   _k = _f.readinto(_b)\n   if not _k:\n    break\n   _n += _k\n"
            "   if _h:\n    _h.update(_m[:_k])\n except OSError:\n  _f.close()\n  continue\n"
            " _f.close()\n print(repr((_p, _n, _h.digest() if _h else None)))\n"
            "del _b, _m, _H"
        )
        out = self._fs(f"hashing {len(paths)} files", code, timeout=timeout)
        found = {}
        for line in out.decode().splitlines():
            if line.strip():
                p, n, digest = ast.literal_eval(line)
                found[p] = (n, None if digest is None else bytes(digest).hex())
        return found

    def fs_sha256(self, path: str) -> str:
        """SHA-256 (hex) of a device file, hashed on the device when it has hashlib.sha256."""
        got = self.fs_hashes([path]).get(path)
        if got is None:
            raise TransportExecError(b"", f"OSError: [Errno 2] ENOENT: {path}", f"hashing {path!r}")
        if got[1] is None:  # no hashlib on this board: read it back and hash here
            return hashlib.sha256(self.fs_readfile(path)).hexdigest()
        return got[1]
