"""Shared fixtures of the Python tests: the emulator's parameters, the
control line to the Rust test driving them, logs, and captured logging."""

import json
import logging
import os
import struct
import sys

with open(os.environ["ULOGGER_TEST_PARAMS"]) as _fh:
    PARAMS = json.load(_fh)

CUSTOMER = PARAMS["customer_id"]
APP = 7


class _Capture(logging.Handler):
    """Every record of the ulogger_cloud loggers, for assertions."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, since=0):
        return [r.getMessage() for r in self.records[since:]]


CAPTURE = _Capture()
_root = logging.getLogger("ulogger_cloud")
_root.addHandler(CAPTURE)
_root.setLevel(logging.DEBUG)


def ctl(command):
    """Ask the Rust side (the emulator's owner) something; its JSON answer."""
    sys.stdout.write("@ctl %s\n" % command)
    sys.stdout.flush()
    return json.loads(sys.stdin.readline())


def records(**match):
    """The emulator's records whose fields equal ``match``."""
    return [r for r in ctl("records") if all(r.get(k) == v for k, v in match.items())]


def build_log(version=4, data=None, token=0, trailing=b""):
    """A valid binary log (PROTOCOL section 5) as a device hands it over."""
    if data is None:
        data = bytes((i * 31) % 251 for i in range(300))
    checksum = 0
    for b in data:
        checksum ^= b
    if version >= 4:
        header = struct.pack("<BIIIQHH", version, token, 1000, 32768, 1700000000000000, len(data), checksum)
    elif version == 3:
        header = struct.pack("<BIIIHH", version, token, 1000, 32768, len(data), checksum)
    else:
        header = struct.pack("<BIIHH", version, token, 1, len(data), checksum)
    return header + data + trailing
