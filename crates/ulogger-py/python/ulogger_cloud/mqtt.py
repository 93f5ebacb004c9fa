"""MQTT helpers: session-token retrieval, binary-log and core-dump publish,
telemetry publish, and the cloud's log configuration.

The SDK's functions, by name and signature, over the engine: the first call
for an :class:`MqttConfig` opens one persistent TLS connection, which every
later call and thread with an equal configuration reuses (the SDK opens a
new connection per call). Each function still returns only once the broker
acknowledged, and keeps the SDK's conventions: ``True``/``False``, a token
or ``None``, the reason logged.
"""

import gzip
import json
import logging

from . import _engines
from .errors import UloggerError

__all__ = [
    "MqttConfig",
    "LogConfig",
    "get_session_token",
    "publish_binary_log",
    "publish_core_dump",
    "publish_telemetry",
    "wait_for_log_config",
    "subscribe_log_config_loop",
]

_log = logging.getLogger(__name__)


class MqttConfig(object):
    """Connection parameters for the uLogger MQTT broker.

    The SDK's attributes, plus two of this package's, keyword-only in
    spirit:

    * ``ca_file``: a PEM file of CAs to trust instead of the public roots
      (a local broker, the emulator). ``SSL_CERT_FILE`` is honoured too,
      as the SDK's OpenSSL does.
    * ``pacing``: keep under the platform's per-connection limits (100
      publishes and 512 KiB per second; default ``True``). Turn it off only
      against a local broker.

    ``client``: bridge mode (see :mod:`ulogger_cloud.bridge`): a paho-mqtt
    client the application keeps connected; the engine runs over it, and
    ``broker``, ``port``, ``cert_file``, ``key_file`` and ``ca_file`` are
    not used.
    """

    __slots__ = (
        "broker",
        "port",
        "cert_file",
        "key_file",
        "customer_id",
        "group_id",
        "token_timeout",
        "client",
        "topic_prefix",
        "ca_file",
        "pacing",
    )

    def __init__(
        self,
        broker="mqtt.ulogger.ai",
        port=8883,
        cert_file=None,
        key_file=None,
        customer_id=0,
        group_id=0,
        token_timeout=15.0,
        client=None,
        topic_prefix="",
        ca_file=None,
        pacing=True,
    ):
        self.broker = broker
        self.port = port
        self.cert_file = cert_file
        self.key_file = key_file
        self.customer_id = customer_id
        self.group_id = group_id
        self.token_timeout = token_timeout
        self.client = client
        self.topic_prefix = topic_prefix or ""
        self.ca_file = ca_file
        self.pacing = pacing

    def __repr__(self):
        return (
            "MqttConfig(broker={0!r}, port={1!r}, cert_file={2!r}, key_file={3!r}, "
            "customer_id={4!r}, group_id={5!r}, token_timeout={6!r}, client={7}, "
            "topic_prefix={8!r})"
        ).format(
            self.broker,
            self.port,
            self.cert_file,
            self.key_file,
            self.customer_id,
            self.group_id,
            self.token_timeout,
            "<shared>" if self.client is not None else "None",
            self.topic_prefix,
        )


_LEVEL_NAMES = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LogConfig(object):
    """A log configuration from the cloud for one device (PROTOCOL section 7).

    ``log_level`` is a level name (``"DEBUG"`` ... ``"CRITICAL"``),
    ``module_flags`` the 32-bit enable mask, ``log_modules`` the module
    names the cloud sent, ``timeout_seconds`` how long the device keeps it.
    """

    __slots__ = ("log_level", "module_flags", "log_modules", "timeout_seconds")

    def __init__(self, log_level="INFO", module_flags=0xFFFFFFFF, log_modules=None, timeout_seconds=3600):
        self.log_level = log_level
        self.module_flags = module_flags
        self.log_modules = list(log_modules) if log_modules is not None else []
        self.timeout_seconds = timeout_seconds

    @classmethod
    def _from_native(cls, raw):
        level, flags, timeout, names = raw
        name = _LEVEL_NAMES[level] if level < len(_LEVEL_NAMES) else "INFO"
        return cls(log_level=name, module_flags=flags, log_modules=names, timeout_seconds=timeout)

    def __repr__(self):
        return (
            "LogConfig(log_level={0!r}, module_flags=0x{1:08X}, log_modules={2!r}, "
            "timeout_seconds={3!r})"
        ).format(self.log_level, self.module_flags, self.log_modules, self.timeout_seconds)


def _failed(what, error):
    _log.error("%s failed: %s", what, error)


def get_session_token(device_info, cfg):
    """Register the device (a boot round trip) and return its new token, or
    ``None`` on failure or timeout (the reason logged).

    Concurrent calls for one device share one registration, and the engine
    bounds the registration rate. A token of 0 is never returned.
    """
    try:
        token = _engines.engine_for(cfg).register(device_info)
    except (UloggerError, ValueError) as e:
        _failed("Boot registration of %r" % (device_info.device_serial,), e)
        return None
    if token == 0:
        _log.error(
            "Boot registration of %r: the cloud answered token 0, which is no token",
            device_info.device_serial,
        )
        return None
    return token


def _token_of(payload):
    """The session token in a binary log's header, or None when unreadable."""
    if len(payload) < 5:
        return None
    return int.from_bytes(bytes(payload[1:5]), "little")


def publish_binary_log(device_info, payload, cfg):
    """Publish ``payload`` as-is to ``binlog/v0/{customer_id}/{group_id}/{app_id}``
    and return ``True`` once the broker acknowledged it.

    A log whose header still holds session token 0 is refused (``False``):
    the cloud cannot attribute it. :func:`ulogger_cloud.upload_log` patches
    the token in.
    """
    if _token_of(payload) == 0:
        _log.error(
            "Refusing to publish a binary log with session token 0 for %r "
            "(use upload_log, which registers and patches the token in)",
            device_info.device_serial,
        )
        return False
    try:
        _engines.engine_for(cfg).publish_binary_log(device_info.application_id, bytes(payload))
        return True
    except (UloggerError, ValueError) as e:
        _failed("Binary-log publish", e)
        return False


def publish_core_dump(payload, cfg):
    """Publish a core dump as-is to ``core-dump/v0/{customer_id}/{group_id}``;
    ``True`` once acknowledged."""
    try:
        _engines.engine_for(cfg).publish_core_dump(bytes(payload))
        return True
    except (UloggerError, ValueError) as e:
        _failed("Core-dump publish", e)
        return False


def _parse_telemetry_topic(topic, cfg):
    """``(family, app_id)`` of a telemetry topic of ``cfg``'s customer and
    group, or raise ``ValueError``."""
    prefix = cfg.topic_prefix or ""
    if not topic.startswith(prefix):
        raise ValueError("topic %r does not start with the configured prefix %r" % (topic, prefix))
    parts = topic[len(prefix):].split("/")
    if (
        len(parts) != 5
        or parts[0] not in ("metrics", "events")
        or parts[1] != "v0"
        or parts[2] != str(cfg.customer_id)
        or parts[3] != str(cfg.group_id)
    ):
        raise ValueError(
            "topic %r is not metrics/v0/%s/%s/{app_id} or events/v0/%s/%s/{app_id}"
            % (topic, cfg.customer_id, cfg.group_id, cfg.customer_id, cfg.group_id)
        )
    return parts[0], parts[4]


def publish_telemetry(topic, payload, cfg, timeout=10.0):
    """Publish a metrics or events message to ``topic``; ``True`` once
    acknowledged.

    ``payload`` is a dict (one device: ``device_serial`` and ``metrics`` or
    ``events``; a batch: ``devices``) or its JSON as bytes, gzipped or not.
    Unlike the SDK, the topic must be this configuration's metrics or events
    topic (``[prefix]metrics/v0/{customer}/{group}/{app_id}``) and the
    message must be valid telemetry: it is rebuilt and checked by the
    engine, not sent blindly. ``timeout`` is kept for the signature; the
    engine's acknowledgement timeout (10 s) applies.
    """
    try:
        family, app_id = _parse_telemetry_topic(topic, cfg)
        compression = "auto"
        if isinstance(payload, (bytes, bytearray)):
            raw = bytes(payload)
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
                compression = "always"
            else:
                compression = "never"
            payload = json.loads(raw.decode("utf-8"))
        engine = _engines.engine_for(cfg, compression)
        if "devices" in payload:
            if family == "metrics":
                engine.publish_metrics_batch(app_id, payload["devices"])
            else:
                engine.publish_events_batch(app_id, payload["devices"])
        elif family == "metrics":
            engine.publish_metrics(payload["device_serial"], app_id, payload["metrics"])
        else:
            engine.publish_events(payload["device_serial"], app_id, payload["events"])
        return True
    except (UloggerError, ValueError, KeyError, TypeError) as e:
        _failed("Telemetry publish to %s" % (topic,), e)
        return False


def wait_for_log_config(device_info, cfg, timeout=30.0, on_config=None):
    """Wait up to ``timeout`` seconds (``None``: for ever) for the cloud's
    next log configuration for the device; the :class:`LogConfig`, or
    ``None`` on timeout or failure. ``on_config`` is called with it too."""
    try:
        configs = _engines.engine_for(cfg).log_configs(device_info)
        try:
            raw = configs.next(timeout)
        except StopIteration:
            raw = None
        finally:
            configs.close()
    except (UloggerError, ValueError) as e:
        _failed("Waiting for a log configuration", e)
        return None
    if raw is None:
        _log.warning("Timed out waiting for log config")
        return None
    config = LogConfig._from_native(raw)
    if on_config is not None:
        on_config(config)
    return config


# How often the loop looks at its stop event while no configuration comes.
_STOP_POLL_SECONDS = 0.2


def subscribe_log_config_loop(device_info, cfg, on_config, stop_event):
    """Call ``on_config`` with every log configuration for the device until
    ``stop_event`` (a ``threading.Event``) is set. Blocks: run it in a
    thread."""
    try:
        configs = _engines.engine_for(cfg).log_configs(device_info)
    except (UloggerError, ValueError) as e:
        _failed("Config loop", e)
        return
    try:
        while not stop_event.is_set():
            try:
                raw = configs.next(_STOP_POLL_SECONDS)
            except StopIteration:
                break
            except (UloggerError, ValueError) as e:
                _log.error("Config-loop message error: %s", e)
                continue
            if raw is None:
                continue
            try:
                on_config(LogConfig._from_native(raw))
            except Exception:  # noqa: BLE001 - the SDK logs and goes on too
                _log.exception("on_config raised")
    finally:
        configs.close()
        _log.info("Config-loop stopped")
