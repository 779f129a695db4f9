"""A small device program for the link tests (MicroPython and CPython).

It serves wire frames over any link with the firmware's link interface (``readinto``,
``write``, ``connected``, ``close``): a SerialLink on the virtual helmet's pty, a BleLink on
the simulated radio. It is a test double of the serve loop, not the helmet application:
besides PING, COMMAND (through wire.CommandLog), SAMPLES and heartbeats it understands
three test-only message types.

* MSG_ECHO: answers MSG_ECHO with the same payload (frames of any size, both ways).
* MSG_STALL (u16 ms): stops reading the link for that long, then answers MSG_ECHO; the
  link's IRQs keep running meanwhile (the BLE ring can overflow).
* MSG_QUIT: answers MSG_ECHO, closes the link and returns.
* MSG_HOOK: calls ``on_hook(payload)`` (main_ble: make the next n notifications fail), then
  answers MSG_ECHO.
"""

import gc
import json
import struct
import sys
import time

try:
    import wire  # flat, as on the helmet
except ImportError:
    from painhelm.firmware import wire
try:
    from clock import sleep_ms, ticks_diff, ticks_ms
except ImportError:
    from painhelm.firmware.clock import sleep_ms, ticks_diff, ticks_ms

MSG_ECHO = 0x60
MSG_STALL = 0x61
MSG_QUIT = 0x62
MSG_HOOK = 0x63
WINDOW = 32  # samples per streamed report

def serve(link, heartbeat_ms=wire.HEARTBEAT_MS, run_ms=60000, on_hook=None):
    """Answer frames on ``link`` until MSG_QUIT or ``run_ms`` elapsed."""
    log = wire.CommandLog()
    st = {"state": wire.STATE_IDLE, "heartbeat_ms": heartbeat_ms, "samples": 0,
          "reports": 0, "quit": False, "runs": {}, "gaps": 0, "next_index": None}

    def send(msg_type, seq, payload):
        link.write(wire.encode_line(msg_type, seq, payload))

    def info():
        d = {"protocol": wire.PROTOCOL_VERSION, "impl": sys.implementation.name,
             "executed": log.executed, "replays": log.replays, "runs": st["runs"],
             "samples": st["samples"], "gaps": st["gaps"], "state": st["state"]}
        for k in ("mtu", "rx_dropped", "tx_dropped", "connections"):
            if hasattr(link, k):
                d[k] = getattr(link, k)
        if hasattr(gc, "mem_alloc"):  # MicroPython: heap in use after a collection (leak checks)
            gc.collect()
            d["mem_alloc"] = gc.mem_alloc()
        return json.dumps(d).encode()

    def execute(code, args):
        key = str(code)
        st["runs"][key] = st["runs"].get(key, 0) + 1
        if code == wire.CMD_START:
            st["state"] = wire.STATE_STREAMING
        elif code == wire.CMD_STOP:
            st["state"] = wire.STATE_IDLE
        elif code == wire.CMD_CONFIG:
            if "heartbeat_ms" in args:
                st["heartbeat_ms"] = int(args["heartbeat_ms"])
            return wire.ACK_OK, "config %s" % sorted(args)
        elif code == wire.CMD_RESET:
            raise ValueError("nothing to reset in the test device")
        else:
            return wire.ACK_UNKNOWN, "unknown command %d" % code
        return None

    def samples(seq, payload):
        n_ch, n, first, off = wire.unpack_samples_header(payload)
        if st["next_index"] is not None and first != st["next_index"]:
            st["gaps"] += 1
        st["next_index"] = first + n
        before = st["samples"] // WINDOW
        st["samples"] += n
        last = struct.unpack_from("<f", payload, off + 4 * (n * n_ch - 1))[0]
        for _ in range(st["samples"] // WINDOW - before):
            st["reports"] += 1
            # the last sample's value travels in ood so the test sees the data arrived intact
            send(wire.MSG_REPORT, 0, wire.pack_report(
                st["reports"], ticks_ms(), first + n, 1, 0, 200, 100, 0, 0, last, 0, 10, 20,
                [1, -2, 3], [4, -5]))

    def handle_frame(msg_type, seq, payload):
        if msg_type == wire.MSG_PING:
            send(wire.MSG_PONG, seq, info())
        elif msg_type == MSG_ECHO:
            send(MSG_ECHO, seq, payload)
        elif msg_type == MSG_STALL:
            ms = struct.unpack("<H", payload)[0]
            t0 = ticks_ms()
            while ticks_diff(ticks_ms(), t0) < ms:
                sleep_ms(1)  # scheduled BLE IRQs run here, the link is not read
            send(MSG_ECHO, seq, b"")
        elif msg_type == MSG_HOOK and on_hook is not None:
            on_hook(bytes(payload))
            send(MSG_ECHO, seq, payload)
        elif msg_type == MSG_QUIT:
            send(MSG_ECHO, seq, b"bye")
            st["quit"] = True
        elif msg_type == wire.MSG_COMMAND:
            reply_type, reply = log.answer(seq, payload, execute)
            send(reply_type, seq, reply)
        elif msg_type == wire.MSG_SAMPLES:
            try:
                samples(seq, payload)
            except ValueError as e:
                send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_BAD_PAYLOAD, e))
        else:
            send(wire.MSG_ERROR, seq, wire.pack_error(wire.ERR_UNKNOWN_TYPE, "unknown message type %d" % msg_type))

    def handle_error(exc):
        send(wire.MSG_ERROR, 0, wire.pack_error(wire.ERR_BAD_FRAME, exc))

    parser = wire.LineParser(handle_frame, None, handle_error)
    buf = bytearray(512)
    send(wire.MSG_PONG, 0, info())  # ready
    start = last_hb = ticks_ms()
    while not st["quit"] and ticks_diff(ticks_ms(), start) < run_ms:
        n = link.readinto(buf)
        if n:
            parser.feed(buf, n)
        now = ticks_ms()
        if ticks_diff(now, last_hb) >= st["heartbeat_ms"]:
            last_hb = now
            send(wire.MSG_HEARTBEAT, 0, wire.pack_heartbeat(now, st["reports"], 0, st["state"], 0))
        if not n:
            sleep_ms(1)
    link.close()


def main_serial(**kw):
    """Serve on the console (the virtual helmet's main.py calls this)."""
    import link_serial
    serve(link_serial.SerialLink(), **kw)


def main_ble(name="helmet-test", air=None, **kw):
    """Serve over the simulated radio at ``air`` ("host:port")."""
    import ble_sim
    import link_ble

    if air is not None:
        ble_sim.AIR = air
    link = link_ble.BleLink(name, bt=ble_sim, rx_size=kw.pop("rx_size", 4096), mtu=kw.pop("mtu", 247))
    print("advertising", name)

    def fail_notify(payload):
        ble_sim.BLE().sim_fail_notify(payload[0])

    serve(link, on_hook=fail_notify, **kw)
    print("done", link.connections, link.rx_dropped)
