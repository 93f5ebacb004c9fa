"""One engine (one persistent connection) per configuration, shared by
every call and thread of the process, and closed at interpreter exit."""

import atexit
import logging
import os
import threading
import weakref

from . import _native, _paho_link
from .errors import BridgeModeError, NoClientCertificateError, ShutdownError

_log = logging.getLogger("ulogger_cloud")

_engines = {}
# The paho adapters of bridged engines, to give the clients' callbacks back.
_links = {}
# The engines of live Client objects: closed at exit too.
_client_engines = weakref.WeakSet()
_lock = threading.Lock()
_closed = False
# Engines inherited through fork(): their threads are gone in the child, so
# they are kept (never used, never dropped) rather than closed.
_inherited = []

DIFFERENCES = (
    "ulogger_cloud runs on the ulogger-cloud Rust engine (one persistent, paced "
    "connection per configuration). Unlike the Python SDK it never connects without "
    "TLS (missing certificates are an error), never publishes a log with session "
    "token 0, and refuses ids that would change a topic (+ # / NUL). See docs/python.md."
)
_announced = False


def _path(value):
    return os.fspath(value) if value is not None else None


def ca_file(cfg):
    """The CA file of ``cfg``: its ``ca_file`` attribute, else the file in
    ``SSL_CERT_FILE`` (what the SDK's OpenSSL trusts instead of the system
    store), else None for the public roots."""
    return _path(getattr(cfg, "ca_file", None)) or os.environ.get("SSL_CERT_FILE") or None


def key(cfg, compression="auto"):
    """What makes two configurations one connection."""
    return (
        cfg.broker,
        int(cfg.port),
        _path(cfg.cert_file),
        _path(cfg.key_file),
        ca_file(cfg),
        int(cfg.customer_id),
        None if cfg.group_id is None else int(cfg.group_id),
        cfg.topic_prefix or "",
        float(cfg.token_timeout),
        bool(getattr(cfg, "pacing", True)),
        compression,
    )


def _get_or_start(k, start):
    """The engine under ``k``; made by ``start()`` under the lock the first
    time, once, however many threads ask at once."""
    engine = _engines.get(k)
    if engine is not None:
        return engine
    with _lock:
        if _closed:
            raise ShutdownError("the interpreter is exiting: ulogger_cloud is shut down")
        engine = _engines.get(k)
        if engine is None:
            engine = start()
            _engines[k] = engine
    return engine


def engine_for(cfg, compression="auto"):
    """The engine of ``cfg``, started on first use.

    With ``cfg.client`` (bridge mode) the engine runs over that paho
    client, one engine per client object. Raises
    :class:`~ulogger_cloud.errors.BridgeModeError` when called on that
    client's own network thread (the call would wait for an
    acknowledgement only that thread can read),
    :class:`~ulogger_cloud.errors.NoClientCertificateError` without a
    certificate and key, and the engine's errors for files it cannot use.
    """
    if getattr(cfg, "client", None) is not None:
        return _bridged_engine_for(cfg, compression)
    if not cfg.cert_file or not cfg.key_file:
        raise NoClientCertificateError(
            "no client certificate: MqttConfig needs cert_file and key_file (the Python "
            "SDK would connect without TLS; this package never does)"
        )
    k = key(cfg, compression)

    def start():
        global _announced
        if not _announced:
            _announced = True
            _log.info("%s", DIFFERENCES)
        return _native.Engine(
            k[5],
            broker=k[0],
            port=k[1],
            cert_file=k[2],
            key_file=k[3],
            ca_file=k[4],
            group_id=k[6],
            topic_prefix=k[7],
            token_timeout=k[8],
            pacing=k[9],
            compression=compression,
        )

    return _get_or_start(k, start)


def _bridged_engine_for(cfg, compression):
    client = cfg.client
    if threading.current_thread() is getattr(client, "_thread", None):
        raise BridgeModeError(
            "called on the paho client's network thread (in one of its callbacks): the "
            "call would wait for an acknowledgement that only this thread can read; use "
            "BridgeSession, or call from another thread"
        )
    # The engine keeps the client alive, so its id is not reused meanwhile.
    k = (
        "bridge",
        id(client),
        int(cfg.customer_id),
        None if cfg.group_id is None else int(cfg.group_id),
        cfg.topic_prefix or "",
        float(cfg.token_timeout),
        bool(getattr(cfg, "pacing", True)),
        compression,
    )

    def start():
        link = _paho_link.PahoLink(client)
        engine = _native.Engine(
            k[2],
            broker=cfg.broker or "mqtt.ulogger.ai",
            port=int(cfg.port or 8883),
            group_id=k[3],
            topic_prefix=k[4],
            token_timeout=k[5],
            pacing=k[6],
            compression=compression,
            link=link,
        )
        _links[k] = link
        return engine

    return _get_or_start(k, start)


def http_engine_for(cfg, api_token, api_base_url, compression="auto"):
    """The HTTPS telemetry client for ``api_token`` at ``api_base_url``
    (the SDK's fallback without MQTT certificates), started on first use."""
    k = ("http", api_token, api_base_url, int(cfg.group_id or 0), compression, ca_file(cfg))
    return _get_or_start(
        k,
        lambda: _native.HttpEngine(
            api_token,
            base_url=api_base_url,
            group_id=k[3],
            compression=compression,
            ca_file=k[5],
        ),
    )


def connection_count():
    """How many engines (connections) this process holds."""
    return len(_engines)


def shutdown():
    """Closes every engine: what is in flight finishes, then each
    connection disconnects. Runs at interpreter exit; later calls fail."""
    global _closed
    with _lock:
        _closed = True
        engines = list(_engines.values()) + list(_client_engines)
        links = list(_links.values())
        _engines.clear()
        _links.clear()
    for engine in engines:
        if not hasattr(engine, "shutdown"):
            continue
        try:
            engine.shutdown()
        except Exception:  # noqa: BLE001 - exiting anyway
            _log.debug("engine shutdown failed", exc_info=True)
    for link in links:
        link.detach()


def _after_fork_in_child():
    global _lock
    _inherited.extend(_engines.values())
    _engines.clear()
    _links.clear()
    _lock = threading.Lock()


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
