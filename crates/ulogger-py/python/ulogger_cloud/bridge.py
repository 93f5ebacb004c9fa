"""Bridge mode: the engine over the application's own paho-mqtt client.

``MqttConfig(client=paho_client)`` makes every SDK function (and
:class:`BridgeSession`) run the engine over that client instead of a
connection of its own: the engine publishes through ``client.publish``
(QoS 1) and waits for that message's PUBACK, subscribes through
``client.subscribe`` and waits for the SUBACK, and receives boot replies
and log configurations through ``message_callback_add`` on the exact
topics it subscribed to. Pacing, the token cache, one registration per
serial and resubscription after a reconnect without a session are the
engine's, as on its own connection. The client's connection settings
(TLS, broker) are the application's; ``cert_file``/``key_file`` are not
read.

What the engine needs from the client: ``publish``, ``subscribe``,
``unsubscribe``, ``message_callback_add``/``remove``, ``is_connected``,
and the ``on_connect``, ``on_disconnect``, ``on_publish``,
``on_subscribe`` and ``on_unsubscribe`` callbacks, which it wraps (the
application's own are still called, with the same arguments). The
application keeps running paho's network loop (``loop_start()`` or its
own); a blocking call made *on* that loop's thread would wait for an
acknowledgement only that thread can read, and is refused with
:class:`~ulogger_cloud.errors.BridgeModeError`: use
:class:`BridgeSession` there.
"""

import logging
import threading

from . import _engines
from .checksum import patch_session_token, validate_checksum
from .errors import BridgeModeError, UloggerError
from .session_store import get_default_store
from .telemetry import _compression, _validate_batch

__all__ = ["BridgeSession"]

_log = logging.getLogger(__name__)


class BridgeSession(object):
    """The SDK's callback-driven bridge client, on the engine.

    Args:
        cfg: An :class:`~ulogger_cloud.MqttConfig` with ``client`` set (a
            paho-mqtt ``Client`` whose network loop the application runs).
        store: A :class:`~ulogger_cloud.SessionStore`; the default store
            when omitted.
        call_later, cancel_timer: Accepted for the SDK's signature and not
            used: the engine times registrations out itself
            (``cfg.token_timeout``).

    Every method returns at once; its ``callback`` is called later with
    the outcome, on a worker thread of the session (never on paho's
    network thread, never two at once). Unlike the SDK's, ``True`` means
    the broker acknowledged the message (PUBACK), not that paho queued
    it, and a log is never published with session token 0 (``False``).
    """

    def __init__(self, cfg, store=None, call_later=None, cancel_timer=None):
        if getattr(cfg, "client", None) is None:
            raise BridgeModeError(
                "BridgeSession requires MqttConfig.client; for an owned connection use "
                "the module-level helpers instead"
            )
        self._cfg = cfg
        self._store = store if store is not None else get_default_store()
        self._call_later = call_later
        self._cancel_timer = cancel_timer
        # Imported here: `import ulogger_cloud` stays fast (it is measured).
        import concurrent.futures

        # One thread runs the callbacks in order; the engine's calls wait
        # on a small pool of their own.
        self._calls = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="ulogger-bridge"
        )
        self._callbacks = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ulogger-bridge-callbacks"
        )
        self._stopped = threading.Event()
        self._registering = {}
        self._registering_lock = threading.Lock()

    def _engine(self):
        return _engines.engine_for(self._cfg)

    def start(self):
        """Starts the engine on the client (idempotent). The SDK asks for
        this after every reconnect; the engine notices reconnects itself
        and subscribes again, so calling it again is harmless."""
        self._stopped.clear()
        self._engine()
        return (0, None)

    def stop(self):
        """Later calls report failure (``None``/``False``); what is under way
        finishes. The engine stays up for the module-level functions."""
        self._stopped.set()

    def _invoke(self, callback, value):
        if callback is None:
            return
        try:
            callback(value)
        except Exception:  # noqa: BLE001 - as the SDK: logged, never raised
            _log.exception("BridgeSession callback raised")

    def _later(self, callback, work, failed):
        """Runs ``work()`` on the pool; ``callback`` gets its result, or
        ``failed`` when it raised (logged)."""
        if self._stopped.is_set():
            self._invoke(callback, failed)
            return

        def run():
            try:
                value = work()
            except (UloggerError, ValueError, KeyError, TypeError) as e:
                _log.error("Bridge call failed: %s", e)
                value = failed
            self._callbacks.submit(self._invoke, callback, value)

        self._calls.submit(run)

    def _token(self, device_info):
        serial = device_info.device_serial
        with self._registering_lock:
            lock = self._registering.setdefault(serial, threading.Lock())
        with lock:
            cached = self._store.get_token(serial, device_info.git_hash)
            if cached is not None:
                return cached
            token = self._engine().register(device_info)
            self._store.set_token(serial, device_info.git_hash, token)
            return token

    def ensure_token(self, device_info, callback=None):
        """``callback`` gets the device's token (cached: at once, on this
        thread, as the SDK does), or ``None`` when registration failed."""
        cached = self._store.get_token(device_info.device_serial, device_info.git_hash)
        if cached is not None:
            self._invoke(callback, cached)
            return
        self._later(callback, lambda: self._token(device_info), None)

    def upload_log(self, device_info, buf, callback=None):
        """Validate, token-patch and publish a binary log; ``callback`` gets
        ``True`` once the broker acknowledged it. ``buf`` is copied."""
        if not validate_checksum(bytes(buf)):
            _log.error("Checksum validation failed - aborting upload.")
            self._invoke(callback, False)
            return
        if device_info is None:
            _log.warning("No device info - skipping session token and MQTT upload.")
            self._invoke(callback, False)
            return
        payload = bytearray(buf)

        def work():
            patch_session_token(payload, self._token(device_info))
            self._engine().publish_binary_log(device_info.application_id, bytes(payload))
            return True

        self._later(callback, work, False)

    def publish_core_dump(self, payload, callback=None):
        """Publish a raw core dump; ``callback`` gets ``True`` once
        acknowledged. Returns ``True`` when the publish was handed over."""
        data = bytes(payload)

        def work():
            self._engine().publish_core_dump(data)
            return True

        self._later(callback, work, False)
        return not self._stopped.is_set()

    def publish_metrics_batch(self, devices, app_id, callback=None, compress="auto"):
        """Publish one metrics batch covering several devices."""
        return self._publish_batch("metrics", devices, app_id, callback, compress)

    def publish_events_batch(self, devices, app_id, callback=None, compress="auto"):
        """Publish one events batch covering several devices."""
        return self._publish_batch("events", devices, app_id, callback, compress)

    def _publish_batch(self, kind, devices, app_id, callback, compress):
        _validate_batch(kind, devices)
        compression = _compression(compress)

        def work():
            engine = _engines.engine_for(self._cfg, compression)
            if kind == "metrics":
                engine.publish_metrics_batch(app_id, devices)
            else:
                engine.publish_events_batch(app_id, devices)
            return True

        self._later(callback, work, False)
        return not self._stopped.is_set()
