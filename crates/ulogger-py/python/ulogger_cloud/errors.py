"""Typed exceptions of the engine, one class per kind of failure.

Raised by :class:`ulogger_cloud.Client`, :mod:`ulogger_cloud.aio` and the
low-level engine; the SDK-named functions keep the SDK's conventions
(``False`` / ``None``, the reason logged) instead.

Every instance has the Rust message as ``str(e)``, ``kind`` (its class
name), ``retryable`` (a later attempt may succeed: timeouts, lost
connections), ``is_timeout``, and the fields of its kind as attributes
(``PayloadTooLargeError.size`` and ``.limit``, ``TimeoutError.phase``,
``CertificateFileError.role``, ``.path`` and ``.reason``, ...).
"""

import builtins

__all__ = [
    "UloggerError",
    "ConfigError",
    "CertificateFileError",
    "KeyMismatchError",
    "NoClientCertificateError",
    "InvalidLogError",
    "InvalidTopicError",
    "InvalidTelemetryError",
    "InvalidTextLogsError",
    "PayloadTooLargeError",
    "InvalidBootReplyError",
    "InvalidLogConfigError",
    "TimeoutError",
    "ConnectError",
    "ConnectionRefusedError",
    "ConnectionLostError",
    "SubscribeRefusedError",
    "ProtocolError",
    "StoreError",
    "ShutdownError",
    "OutboxFullError",
    "OutboxLockedError",
    "OutboxError",
    "NoOutboxError",
    "DeadLetterError",
    "EvictedError",
    "HttpRefusedError",
    "InvalidHttpReplyError",
    "HttpConnectError",
    "InvalidElfError",
    "InvalidUploadReplyError",
    "ElfUploadRefusedError",
    "ElfUploadConnectError",
    "BridgeModeError",
]


class UloggerError(Exception):
    """Base of every error of this package."""

    kind = "UloggerError"
    retryable = False
    is_timeout = False


class ConfigError(UloggerError, ValueError):
    """A setting is invalid (``field``, ``reason``)."""


class CertificateFileError(ConfigError):
    """A certificate, key or CA file is missing or unreadable (``role``,
    ``path``, ``reason``)."""


class NoClientCertificateError(ConfigError):
    """No client certificate and key configured. The SDK would connect
    without TLS; this package never does."""


class KeyMismatchError(ConfigError):
    """The private key does not belong to the certificate (``cert``,
    ``key``)."""


class InvalidLogError(UloggerError, ValueError):
    """A binary log's header or checksum is wrong (``reason``)."""


class InvalidTopicError(UloggerError, ValueError):
    """An id would make an invalid topic (``reason``): ``+``, ``#``, ``/``
    or NUL in a serial, for instance."""


class InvalidTelemetryError(UloggerError, ValueError):
    """Metrics or events that cannot be sent (``reason``)."""


class InvalidTextLogsError(UloggerError, ValueError):
    """Text-log entries that cannot be sent (``reason``)."""


class PayloadTooLargeError(UloggerError, ValueError):
    """Over the broker's 128 KiB message limit (``size``, ``limit``)."""


class InvalidBootReplyError(UloggerError):
    """The cloud's boot reply is unusable, e.g. token 0 (``reason``)."""


class InvalidLogConfigError(UloggerError):
    """A log configuration from the cloud cannot be decoded (``reason``)."""


class TimeoutError(UloggerError, builtins.TimeoutError):
    """Nothing came in time (``phase``: connect, subscribe, boot reply,
    acknowledgement, ...)."""


class ConnectError(UloggerError, ConnectionError):
    """The broker cannot be reached (``broker``)."""


class ConnectionRefusedError(UloggerError, ConnectionError):
    """The broker refused the connection (``reason``)."""


class ConnectionLostError(UloggerError, ConnectionError):
    """The connection dropped while waiting."""


class SubscribeRefusedError(UloggerError):
    """The broker refused a subscription (``topic``)."""


class ProtocolError(UloggerError):
    """The broker broke the MQTT protocol (``reason``)."""


class StoreError(UloggerError, OSError):
    """The token store file cannot be read or written (``reason``)."""


class ShutdownError(UloggerError):
    """The client was shut down (``Client.close``, interpreter exit)."""


class OutboxFullError(UloggerError):
    """The outbox is at its bounds (``records``, ``bytes``)."""


class OutboxLockedError(UloggerError):
    """Another process owns the outbox directory (``dir``, ``pid``)."""


class OutboxError(UloggerError, OSError):
    """An outbox file cannot be used (``op``, ``path``)."""


class NoOutboxError(UloggerError):
    """The client has no outbox (``Client(outbox_dir=...)``)."""


class DeadLetterError(UloggerError):
    """An outbox record failed for good (``id``, ``reason``)."""


class EvictedError(UloggerError):
    """An outbox record was removed undelivered (``id``)."""


class HttpRefusedError(UloggerError):
    """The HTTP API refused a request (``status``, ``message``,
    ``attempts``)."""


class InvalidHttpReplyError(UloggerError):
    """The HTTP API's reply is unreadable (``status``, ``reason``)."""


class HttpConnectError(UloggerError, ConnectionError):
    """The HTTP API cannot be reached (``url``, ``attempts``)."""


class InvalidElfError(UloggerError, ValueError):
    """A firmware ELF that cannot be uploaded (``reason``)."""


class InvalidUploadReplyError(UloggerError):
    """The cloud's answer to an ELF upload request is unusable
    (``reason``)."""


class ElfUploadRefusedError(UloggerError):
    """The ELF upload URL refused the file (``status``, ``message``,
    ``attempts``)."""


class ElfUploadConnectError(UloggerError, ConnectionError):
    """The ELF upload URL cannot be reached (``host``, ``attempts``)."""


class BridgeModeError(UloggerError, RuntimeError):
    """Bridge mode (``MqttConfig(client=...)``) used where it cannot work:
    a blocking call on the paho client's own network thread, or a
    :class:`~ulogger_cloud.BridgeSession` without ``cfg.client``."""
