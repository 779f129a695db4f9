"""Firmware version: the one place both the helmet and the host read it from."""

VERSION = "0.1.0"
PROTOCOL_VERSION = 1
