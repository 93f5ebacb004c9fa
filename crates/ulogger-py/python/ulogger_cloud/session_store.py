"""Mapping of device serial numbers to session tokens (PROTOCOL section 9).

In memory by default; with a ``path``, the JSON file the Python SDK writes
(``~/.ulogger/session_tokens.json`` is :data:`DEFAULT_FILE_STORE_PATH`),
read and written by the engine: written atomically and durably, shared with
other processes, the least recently used entry evicted at ``max_entries``.
"""

import os
import threading

from . import _native

__all__ = ["SessionStore", "get_default_store", "DEFAULT_FILE_STORE_PATH"]

#: The token file the SDK and the ``ulogger`` command use when asked for
#: file persistence.
DEFAULT_FILE_STORE_PATH = os.path.join(os.path.expanduser("~"), ".ulogger", "session_tokens.json")


class SessionStore(object):
    """Thread-safe store of serial -> (token, git hash).

    Args:
        path: Optional path (``str`` or ``pathlib.Path``) of the JSON file;
            ``None`` keeps the tokens in memory only.
        max_entries: At most this many tokens (least recently used
            evicted); ``None`` for no limit.
    """

    def __init__(self, path=None, max_entries=None):
        if max_entries is not None and max_entries < 1:
            raise ValueError("max_entries must be >= 1 or None")
        self.path = os.fspath(path) if path is not None else None
        self.max_entries = max_entries
        self._native = _native.TokenStore(self.path, max_entries)

    def get_token(self, serial, git_hash):
        """The token of ``serial`` if stored for firmware ``git_hash``,
        else ``None`` (never registered, or a firmware change)."""
        return self._native.get(serial, git_hash)

    def set_token(self, serial, git_hash, token):
        """Store ``token`` for ``serial`` at firmware ``git_hash``."""
        self._native.set(serial, git_hash, token)

    def remove(self, serial):
        """Forget ``serial`` (to force a new registration)."""
        self._native.remove(serial)

    def clear(self):
        """Forget every token."""
        self._native.clear()

    def __len__(self):
        return len(self._native)

    def __repr__(self):
        backend = ("file=%r" % self.path) if self.path is not None else "in-memory"
        cap = (", max_entries=%d" % self.max_entries) if self.max_entries is not None else ""
        return "SessionStore(%s, entries=%d%s)" % (backend, len(self), cap)


_default_store = None
_default_store_lock = threading.Lock()


def get_default_store():
    """The process-wide default :class:`SessionStore` (in memory), created
    on first use."""
    global _default_store
    if _default_store is None:
        with _default_store_lock:
            if _default_store is None:
                _default_store = SessionStore()
    return _default_store
