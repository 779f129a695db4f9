"""Open a helmet's port and check that painhelm firmware answers on it.

One place for the mistakes every command can meet: no such port, a port another program
holds, no permission, a board that is not running painhelm firmware, or firmware that
speaks another protocol version. Each becomes one :class:`ConnectError` sentence; the CLI
prints it without a traceback.

The port is opened with pyserial exactly like ``/dev/ttyUSB0`` (a virtual helmet's pty is
opened the same way), exclusively, so two painhelm commands cannot share one helmet.
"""

from __future__ import annotations

import time

from painhelm.firmware import wire

from .link import HelmetLink, LinkError

__all__ = ["ConnectError", "Helmet", "open_helmet", "open_port"]

BAUDRATE = 115200


class ConnectError(LinkError):
    """The port cannot be used, or no compatible painhelm firmware answers on it."""


def open_port(port: str, baudrate: int = BAUDRATE, wait: float = 0.0, timeout: float = 0.05):
    """Open ``port`` with pyserial (exclusive, ``timeout`` s reads); ConnectError says why not.

    ``wait``: keep trying this many seconds (a board re-enumerating after a reset)."""
    import serial

    from .transport import _open_error

    kwargs = {"baudrate": baudrate, "timeout": timeout, "write_timeout": 10}
    if "://" not in port:
        kwargs["exclusive"] = True
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            return serial.serial_for_url(port, **kwargs)
        except (serial.SerialException, OSError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise ConnectError(str(_open_error(port, exc))) from None
            time.sleep(0.25)


class Helmet:
    """An open port with painhelm firmware behind it: ``serial``, ``link`` (HelmetLink) and
    ``info`` (the firmware's PONG description). Close it, or use it as a context manager."""

    def __init__(self, port: str, serial, link: HelmetLink, info: dict) -> None:
        self.port, self.serial, self.link, self.info = port, serial, link, info

    def close(self) -> None:
        try:
            self.serial.close()
        except Exception:
            pass

    def __enter__(self) -> "Helmet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _not_painhelm(port: str, link: HelmetLink, timeout: float) -> ConnectError:
    said = b" ".join(list(link.text)[-4:]).decode(errors="replace").strip()
    bad = str(getattr(link, "last_bad_frame", None) or "")
    if bad.startswith("protocol version"):  # painhelm frames, another protocol: older or newer firmware
        return ConnectError(f"the helmet on {port} sends frames of {bad.split(',')[0]}, this painhelm speaks "
                            f"v{wire.PROTOCOL_VERSION}: flash matching firmware with painhelm flash --port {port}")
    if b">>>" in b"".join(link.text) or "MicroPython" in said or "raw REPL" in said:
        why = "a MicroPython REPL answered, but no painhelm firmware runs there (flash it: painhelm flash --port %s)" % port
    elif said:
        why = f"it printed {said[-160:]!r}, not painhelm frames (is it a painhelm helmet? flash it: painhelm flash --port {port})"
    else:
        why = (f"nothing answered within {timeout:g} s (is the helmet powered and running painhelm firmware? "
               f"flash it with: painhelm flash --port {port})")
    return ConnectError(f"{port} is not a painhelm helmet: {why}")


def open_helmet(port: str, timeout: float = 10.0, wait: float = 0.0, link_timeout: float = 10.0) -> Helmet:
    """Open ``port``, ping until the firmware answers (at most ``timeout`` s), check the
    protocol version; return a :class:`Helmet`. ConnectError for every way this can fail.

    Nothing is sent but PING: a helmet that is streaming keeps streaming.
    """
    ser = open_port(port, wait=wait)
    link = HelmetLink(ser, timeout=link_timeout)
    try:
        try:
            info = link.wait_ready(timeout=timeout)
        except LinkError:
            raise _not_painhelm(port, link, timeout) from None
        except (OSError, ValueError) as exc:
            raise ConnectError(f"lost the serial link to {port}: {exc}") from None
        proto = info.get("protocol")
        if proto != wire.PROTOCOL_VERSION:
            raise ConnectError(
                f"the helmet on {port} speaks protocol v{proto} (firmware {info.get('firmware', '?')}), this "
                f"painhelm speaks v{wire.PROTOCOL_VERSION}: flash matching firmware with painhelm flash --port {port}")
    except BaseException:
        ser.close()
        raise
    return Helmet(port, ser, link, info)
