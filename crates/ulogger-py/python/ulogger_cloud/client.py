"""The engine's own API, beyond the SDK: :class:`Client`.

Every method raises the typed exceptions of :mod:`ulogger_cloud.errors`
instead of returning ``False``/``None``, and returns a receipt (a dict) of
what the broker acknowledged.
"""

import os

from . import _engines, _native
from .errors import NoClientCertificateError
from .mqtt import LogConfig

__all__ = ["Client"]


class Client(object):
    """One persistent connection to the uLogger cloud (mutual TLS), with
    pacing, the token cache, registration deduplication and, with
    ``outbox_dir``, a durable outbox delivered in the background.

    Args:
        customer_id: The customer id.
        cert_file, key_file: The client certificate and key (PEM); required.
        broker, port: The broker (default the platform's).
        ca_file: CAs to trust instead of the public roots.
        group_id: The group level of the topics (default 0).
        topic_prefix: Put before every topic as-is.
        token_timeout: Seconds to wait for a boot reply.
        connect_timeout: Seconds an operation waits for the connection.
        pacing: Keep under the platform's per-connection limits.
        store: A :class:`~ulogger_cloud.SessionStore` for the tokens
            (default: in memory, this client only).
        outbox_dir: A directory for the durable outbox (enables
            :meth:`enqueue_log`, :meth:`delivered`, :meth:`outbox_status`).
        compression: Telemetry gzip: ``"auto"`` (over 1 KiB), ``"always"``,
            ``"never"``.

    Usable as a context manager; :meth:`close` disconnects.
    """

    def __init__(
        self,
        customer_id,
        cert_file,
        key_file,
        broker="mqtt.ulogger.ai",
        port=8883,
        ca_file=None,
        group_id=0,
        topic_prefix="",
        token_timeout=15.0,
        connect_timeout=10.0,
        pacing=True,
        store=None,
        outbox_dir=None,
        compression="auto",
    ):
        if not cert_file or not key_file:
            raise NoClientCertificateError("a Client needs cert_file and key_file (mutual TLS)")
        path = lambda p: os.fspath(p) if p is not None else None  # noqa: E731
        self._engine = _native.Engine(
            int(customer_id),
            broker=broker,
            port=int(port),
            cert_file=path(cert_file),
            key_file=path(key_file),
            ca_file=path(ca_file),
            group_id=group_id,
            topic_prefix=topic_prefix or "",
            token_timeout=float(token_timeout),
            connect_timeout=float(connect_timeout),
            pacing=bool(pacing),
            store=store._native if store is not None else None,
            outbox_dir=path(outbox_dir),
            compression=compression,
        )
        _engines._client_engines.add(self._engine)

    @property
    def client_id(self):
        """The connection's MQTT client id."""
        return self._engine.client_id

    def connected(self):
        """Wait until the connection is up; raise why it is not."""
        self._engine.connected()

    def session_token(self, device):
        """The device's token: cached, else one boot registration."""
        return self._engine.session_token(device)

    def register(self, device):
        """A new boot registration whatever the cache holds."""
        return self._engine.register(device)

    def upload_log(self, device, log):
        """Validate, patch the token in, publish, wait for the PUBACK.

        Returns ``{"topic", "token", "size", "header_version",
        "epoch_time_us"}``. ``log`` is not modified.
        """
        return self._engine.upload_log(device, bytes(log))

    def publish_core_dump(self, dump):
        """Publish a core dump; ``{"topic", "size"}``."""
        return self._engine.publish_core_dump(bytes(dump))

    def publish_metrics(self, serial, app_id, metrics):
        """One device's metrics; ``{"topic", "size", "compressed"}``."""
        return self._engine.publish_metrics(serial, app_id, metrics)

    def publish_events(self, serial, app_id, events):
        """One device's events."""
        return self._engine.publish_events(serial, app_id, events)

    def publish_heartbeat(self, serial, app_id, timestamp=None):
        """A heartbeat on behalf of a device."""
        return self._engine.publish_heartbeat(serial, app_id, timestamp)

    def publish_metrics_batch(self, app_id, devices):
        """Many devices' metrics in one message."""
        return self._engine.publish_metrics_batch(app_id, devices)

    def publish_events_batch(self, app_id, devices):
        """Many devices' events in one message."""
        return self._engine.publish_events_batch(app_id, devices)

    def upload_elf(self, elf, application_id, device_type, version, git_hash, branch="",
                   reply_timeout=30.0, put_timeout=300.0, retries=3):
        """Upload a firmware ELF (the bytes of the linked image) so the cloud
        can decode the logs of devices that report ``version``: the request
        over MQTT, the file over HTTPS to the URL the cloud answers, retried
        ``retries`` times for passing failures.

        Returns ``{"upload_id", "topic", "upload_host", "status", "size",
        "attempts", "elf_class", "machine", "has_debug_modules"}``; raises
        :class:`~ulogger_cloud.errors.InvalidElfError` for a file that is
        not an ELF, and the upload's typed errors.
        """
        return self._engine.upload_elf(
            bytes(elf),
            application_id,
            device_type,
            version,
            git_hash,
            branch=branch,
            reply_timeout=float(reply_timeout),
            put_timeout=float(put_timeout),
            retries=int(retries),
        )

    def enqueue_log(self, device, log):
        """Put a log in the outbox; returns its record id once it is on
        disk (fsynced). The background sender delivers it."""
        return self._engine.enqueue_log(device, bytes(log))

    def delivered(self, record_id):
        """Wait until record ``record_id`` is acknowledged by the broker;
        raise :class:`~ulogger_cloud.errors.DeadLetterError` or
        :class:`~ulogger_cloud.errors.EvictedError` if it never will be."""
        self._engine.delivered(record_id)

    def outbox_status(self):
        """The outbox's counters: ``queued``, ``queued_bytes``,
        ``in_flight``, ``delivered``, ``dead``, ``last_error``, ..."""
        return self._engine.outbox_status()

    def wait_for_log_config(self, device, timeout=30.0):
        """The cloud's next :class:`~ulogger_cloud.LogConfig` for the
        device; raises :class:`~ulogger_cloud.errors.TimeoutError`."""
        return LogConfig._from_native(self._engine.wait_for_log_config(device, float(timeout)))

    def log_configs(self, device):
        """The device's log configurations as they arrive: an iterator of
        :class:`~ulogger_cloud.LogConfig` (subscribed when this returns;
        ``close()`` it to unsubscribe)."""
        return LogConfigs(self._engine.log_configs(device))

    def close(self):
        """Finish what is in flight and disconnect."""
        self._engine.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class LogConfigs(object):
    """An iterator of :class:`~ulogger_cloud.LogConfig`; ends when the
    client closes."""

    def __init__(self, native):
        self._native = native

    def __iter__(self):
        return self

    def __next__(self):
        return LogConfig._from_native(next(self._native))

    def next(self, timeout=None):
        """The next configuration within ``timeout`` seconds, or ``None``."""
        raw = self._native.next(timeout)
        return None if raw is None else LogConfig._from_native(raw)

    def close(self):
        """Unsubscribe."""
        self._native.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
