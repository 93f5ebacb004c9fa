"""Binary-log header checks and in-place patching (PROTOCOL section 5).

``validate_checksum`` is the engine's own check (the same one every upload
runs); the patch functions write into a ``bytearray`` in place, as the
SDK's do.
"""

import logging
import struct
import time

from . import _native

__all__ = [
    "HEADER_SIZE",
    "HEADER_SIZE_V2",
    "HEADER_SIZE_V3",
    "HEADER_SIZE_V4",
    "validate_checksum",
    "patch_session_token",
    "patch_epoch_time_us",
]

_log = logging.getLogger(__name__)

HEADER_SIZE_V2 = 13
HEADER_SIZE_V3 = 17
HEADER_SIZE_V4 = 25

#: The version 1/2 header size, as the SDK exports it.
HEADER_SIZE = HEADER_SIZE_V2


def validate_checksum(buf):
    """Check the header of ``buf`` (``bytes`` or ``bytearray``) and the XOR
    checksum of its data.

    Returns ``True`` when the log is valid, ``False`` otherwise (the reason
    is logged at ERROR).
    """
    problem = _native.checksum_problem(bytes(buf))
    if problem is not None:
        _log.error("Invalid binary log: %s", problem)
        return False
    return True


def patch_session_token(buf, token):
    """Write ``token`` into bytes 1-4 of the header (little-endian u32).

    ``buf`` must be a ``bytearray``; it is changed in place.
    """
    struct.pack_into("<I", buf, 1, token & 0xFFFFFFFF)


def patch_epoch_time_us(buf, epoch_us=None):
    """Write ``epoch_us`` (default: now) into bytes 13-20 of a version 4
    header (little-endian u64), in place.

    Raises ``ValueError`` for headers before version 4, which have no such
    field.
    """
    version = buf[0]
    if version < 4:
        raise ValueError(
            "Cannot patch epoch_time_us into a v%d header (field only exists in v4+)" % version
        )
    if epoch_us is None:
        epoch_us = int(time.time() * 1000000)
    struct.pack_into("<Q", buf, 13, epoch_us & 0xFFFFFFFFFFFFFFFF)
