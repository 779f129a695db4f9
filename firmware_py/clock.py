"""Ticks and sleep: MicroPython's ``time.ticks_*`` / ``sleep_ms``, with CPython stand-ins (a
Raspberry Pi) that never wrap. One definition for every firmware module."""

import time

if hasattr(time, "ticks_us"):
    ticks_us = time.ticks_us
    ticks_ms = time.ticks_ms
    ticks_diff = time.ticks_diff
    sleep_ms = time.sleep_ms
    sleep_us = time.sleep_us
else:  # CPython
    def ticks_us():
        return int(time.perf_counter() * 1000000)

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)

    def sleep_us(us):
        time.sleep(us / 1000000)
