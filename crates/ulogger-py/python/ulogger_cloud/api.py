"""High-level API: validate, register and upload a binary log in one call.

As in the SDK, these functions look their collaborators up in this module
(``validate_checksum``, ``get_session_token``, ``patch_session_token``,
``publish_binary_log``, ``get_default_store``), so a test that patches one
of them here sees it used.
"""

import logging
import threading

from .checksum import patch_session_token, validate_checksum
from .mqtt import get_session_token, publish_binary_log
from .session_store import get_default_store

__all__ = ["get_or_fetch_token", "upload_log"]

_log = logging.getLogger(__name__)

# One registration at a time per serial: threads that miss the store for
# the same device wait for the first one's token instead of registering
# again (the platform quarantines customers whose devices register in
# storms, PROTOCOL section 3).
_registering = {}
_registering_lock = threading.Lock()


def _registration_lock(serial):
    with _registering_lock:
        lock = _registering.get(serial)
        if lock is None:
            lock = _registering[serial] = threading.Lock()
        return lock


def get_or_fetch_token(device_info, cfg, store=None):
    """A valid session token for ``device_info``: the one ``store`` (default:
    :func:`get_default_store`) holds for its serial and git hash, else a new
    one from a boot registration, which is then stored. ``None`` when
    registration failed (the reason logged). Threads asking for one device
    at once share one registration."""
    if store is None:
        store = get_default_store()
    serial = device_info.device_serial
    git_hash = device_info.git_hash
    cached = store.get_token(serial, git_hash)
    if cached is not None:
        return cached
    with _registration_lock(serial):
        # Another thread may have registered the device meanwhile.
        cached = store.get_token(serial, git_hash)
        if cached is not None:
            return cached
        token = get_session_token(device_info, cfg)
        if token is not None:
            store.set_token(serial, git_hash, token)
        return token


def upload_log(device_info, buf, cfg, store=None):
    """Validate ``buf``, patch the device's session token into it and
    publish it; ``True`` once the broker acknowledged it.

    A ``bytearray`` is patched in place; ``bytes`` are copied first and left
    unchanged. Unlike the SDK, without a token nothing is published
    (``False``, the reason logged): a log with token 0 is one the cloud
    cannot attribute.
    """
    if not validate_checksum(bytes(buf)):
        _log.error("Checksum validation failed - aborting upload.")
        return False
    if device_info is None:
        _log.warning("No device info - skipping session token and MQTT upload.")
        return False
    if not isinstance(buf, bytearray):
        buf = bytearray(buf)
    token = get_or_fetch_token(device_info, cfg, store)
    if token is None or token == 0:
        _log.error(
            "No session token for %r - not uploading (the SDK would publish token 0)",
            device_info.device_serial,
        )
        return False
    patch_session_token(buf, token)
    return publish_binary_log(device_info, bytes(buf), cfg)
