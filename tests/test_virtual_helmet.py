"""The virtual helmet: MicroPython unix port behind a pty that behaves like a board's port."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest
import serial

from painhelm.host_tools.transport import SerialTransport
from painhelm.host_tools.virtual_helmet import VirtualHelmet, VirtualHelmetError

ECHO_MAIN = """\
import sys
sys.stdout.buffer.write(b"MAIN-MARKER\\n")
while True:
    line = sys.stdin.buffer.readline()
    sys.stdout.buffer.write(line)
"""

BUSY_MAIN = """\
with open("/runs.txt", "a") as f:
    f.write("x")
n = 0
while True:
    n += 1
"""


def read_until(ser: serial.Serial, ending: bytes, timeout: float = 5.0) -> bytes:
    """Read from ``ser`` until ``ending`` arrives; fail the test on timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while ending not in data:
        assert time.monotonic() < deadline, f"timed out waiting for {ending!r}, got {data[-300:]!r}"
        data += ser.read(max(1, ser.in_waiting))
    return data


def wait_for_file(path, content: str = "x", timeout: float = 5.0) -> None:
    """Wait until main.py has written ``content`` to ``path`` (so a Ctrl-C hits main.py, not boot)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text() == content):
        assert time.monotonic() < deadline, f"{path} never appeared: main.py did not run"
        time.sleep(0.01)


@pytest.fixture
def make_helmet(tmp_path):
    """Factory: write files into a fresh helmet folder and start a helmet on it."""
    helmets = []

    def make(files: dict[str, str] | None = None, **kwargs) -> VirtualHelmet:
        fs = tmp_path / "fs"
        fs.mkdir(exist_ok=True)
        for name, text in (files or {}).items():
            (fs / name).write_text(text)
        helmet = VirtualHelmet(fs, **kwargs).start()
        helmets.append(helmet)
        return helmet

    yield make
    for helmet in helmets:
        helmet.stop()


def test_repl_answers(make_helmet):
    """The friendly REPL evaluates print(1+1) and ends lines with \\r\\n like a board."""
    helmet = make_helmet()
    with serial.Serial(helmet.port, timeout=0.05) as ser:
        ser.write(b"print(1+1)\r")
        out = read_until(ser, b"2\r\n>>> ")
    assert b"print(1+1)\r\n2\r\n>>> " in out


def test_boot_and_main_run_at_start(make_helmet):
    """boot.py then main.py run at power-on; main.py's marker line reaches the port."""
    helmet = make_helmet({"boot.py": "print('BOOT-OK')\n", "main.py": ECHO_MAIN})
    # os.open, not pyserial: opening with pyserial discards what arrived before (like a real port).
    fd = os.open(helmet.port, os.O_RDWR | os.O_NOCTTY)
    try:
        data = b""
        deadline = time.monotonic() + 5
        while b"MAIN-MARKER\n" not in data and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                data += os.read(fd, 4096)
    finally:
        os.close(fd)
    assert b"BOOT-OK\r\n" in data and b"MAIN-MARKER\n" in data
    assert data.index(b"BOOT-OK") < data.index(b"MAIN-MARKER")


def test_ctrl_c_interrupts_main_and_raw_repl_works(make_helmet):
    """Ctrl-C interrupts a main.py that loops forever, then the raw REPL executes code."""
    helmet = make_helmet({"main.py": BUSY_MAIN})
    wait_for_file(Path(helmet.fs_dir) / "runs.txt")
    with SerialTransport(helmet.port) as t:
        t.enter_raw_repl()
        assert t.exec_("print(n > 0, 6 * 7)") == b"True 42\r\n"
    assert helmet.restarts == 0


def test_soft_reset_respawns_and_reruns_main(make_helmet):
    """A friendly-mode soft reset prints 'soft reboot', respawns and runs main.py again."""
    helmet = make_helmet({"main.py": BUSY_MAIN})
    wait_for_file(Path(helmet.fs_dir) / "runs.txt")
    with SerialTransport(helmet.port) as t:
        t.enter_raw_repl()
        t.soft_reset()
        assert helmet.restarts == 1
        wait_for_file(Path(helmet.fs_dir) / "runs.txt", "xx")
        t.enter_raw_repl()
        assert t.exec_("print(open('/runs.txt').read())") == b"xx\r\n"


def test_raw_mode_soft_reset_skips_main(make_helmet):
    """mpremote's enter_raw_repl(soft_reset=True) sequence works and main.py is skipped."""
    helmet = make_helmet({"main.py": BUSY_MAIN, "boot.py": "print('BOOTED')\n"})
    wait_for_file(Path(helmet.fs_dir) / "runs.txt")
    with serial.Serial(helmet.port, timeout=0.05) as ser:
        ser.write(b"\r\x03\x03")
        time.sleep(0.1)
        ser.reset_input_buffer()
        ser.write(b"\x01")
        read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        ser.write(b"\x04")
        out = read_until(ser, b"soft reboot\r\n")
        out += read_until(ser, b"raw REPL; CTRL-B to exit\r\n>")
        assert b"MicroPython" not in out  # the unix port's banner is suppressed
        assert b"BOOTED\r\n" in out
        ser.write(b"print(open('/runs.txt').read(), 'n' in globals())\x04")
        assert read_until(ser, b"\x04>").endswith(b"OKx False\r\n\x04\x04>")
    assert helmet.restarts == 1


def test_main_exit_soft_reboots(make_helmet):
    """machine.soft_reset() from the REPL restarts the interpreter like a board."""
    helmet = make_helmet()
    with serial.Serial(helmet.port, timeout=0.05) as ser:
        ser.write(b"import machine; machine.soft_reset()\r")
        read_until(ser, b"soft reboot\r\n")
        read_until(ser, b">>> ")
        ser.write(b"print(3*3)\r")
        assert b"9\r\n" in read_until(ser, b"9\r\n>>> ")
    assert helmet.restarts == 1


EXIT_ONCE_MAIN = """\
try:
    n = int(open("/runs.txt").read())
except OSError:
    n = 0
with open("/runs.txt", "w") as f:
    f.write(str(n + 1))
if n == 0:
    import sys
    sys.exit()
"""


def test_main_sys_exit_soft_reboots(make_helmet):
    """main.py ending with sys.exit() soft-reboots the helmet, which runs main.py again."""
    helmet = make_helmet({"main.py": EXIT_ONCE_MAIN})
    wait_for_file(Path(helmet.fs_dir) / "runs.txt", "2")
    assert helmet.restarts == 1
    with SerialTransport(helmet.port) as t:
        assert t.eval_("n") == 1


def test_binary_line_passes_unaltered(make_helmet):
    """A 10000-byte line with every byte value except 0x03 (and 0x0A inside) echoes back unaltered."""
    helmet = make_helmet({"main.py": ECHO_MAIN})
    body = bytes(b for b in range(256) if b not in (0x03, 0x0A))
    line = (body * 40)[:9999] + b"\n"
    with serial.Serial(helmet.port, timeout=0.05) as ser:
        ser.write(b"sync\n")
        read_until(ser, b"sync\n")
        ser.write(line)
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < len(line) and time.monotonic() < deadline:
            got += ser.read(len(line) - len(got))
    assert got == line


def test_small_heap_option(make_helmet):
    """heapsize is passed to the interpreter (256K emulates a small board)."""
    helmet = make_helmet(heapsize="256K")
    with SerialTransport(helmet.port) as t:
        total = t.eval_("__import__('gc').mem_free() + __import__('gc').mem_alloc()")
    assert 200_000 < total <= 256 * 1024


def test_missing_interpreter_is_a_clear_error(tmp_path):
    """A wrong MicroPython path raises VirtualHelmetError naming it."""
    with pytest.raises(VirtualHelmetError, match="not found"):
        VirtualHelmet(tmp_path, micropython=tmp_path / "no-such-micropython")


def test_device_root_is_the_helmet_folder(make_helmet):
    """The device's '/' is the helmet folder: absolute paths never reach the host's files."""
    helmet = make_helmet({"main.py": BUSY_MAIN})
    wait_for_file(Path(helmet.fs_dir) / "runs.txt")
    with SerialTransport(helmet.port) as t:
        assert sorted(t.fs_listdir("/")) == sorted(os.listdir(helmet.fs_dir))
        t.fs_writefile("/probe.bin", b"\x00\x01")
        t.fs_rename("/probe.bin", "/probe2.bin")
    assert (Path(helmet.fs_dir) / "probe2.bin").read_bytes() == b"\x00\x01"
