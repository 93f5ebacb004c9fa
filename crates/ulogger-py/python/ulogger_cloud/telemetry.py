"""Device metrics and events, over MQTT (one message per call, one
device or a batch of many).

The SDK's functions and signatures. Over MQTT they use the configuration's
persistent connection; without MQTT certificate files and with an
``api_token``, the SDK's HTTPS fallback (``POST {api_base_url}/publish/...``
with the token), on one connection pool per token. Either way the JSON is
checked by the engine (names, finite numbers, serials) and gzipped per
``compress``.
"""

import logging
import os

from . import _engines
from .errors import UloggerError

__all__ = [
    "DEFAULT_API_BASE_URL",
    "COMPRESS_THRESHOLD_BYTES",
    "MQTT_MAX_PAYLOAD_BYTES",
    "publish_metrics",
    "publish_events",
    "publish_heartbeat",
    "publish_metrics_batch",
    "publish_events_batch",
]

_log = logging.getLogger(__name__)

DEFAULT_API_BASE_URL = "https://api.ulogger.ai"
#: ``compress="auto"`` gzips JSON over this many bytes.
COMPRESS_THRESHOLD_BYTES = 1024
#: AWS IoT Core's limit for one MQTT message, compressed or not.
MQTT_MAX_PAYLOAD_BYTES = 128 * 1024


def _compression(compress):
    if compress is True:
        return "always"
    if compress is False:
        return "never"
    if compress == "auto":
        return "auto"
    raise ValueError("compress must be True, False, or 'auto'; got {0!r}".format(compress))


def _mqtt_available(cfg):
    """The SDK's rule: MQTT when bridge mode is set or both certificate files
    exist; else HTTPS if there is an API token."""
    if getattr(cfg, "client", None) is not None:
        return True
    cert, key = cfg.cert_file, cfg.key_file
    return bool(cert and key and os.path.exists(cert) and os.path.exists(key))


def _publish(what, cfg, api_token, api_base_url, compression, send):
    try:
        if _mqtt_available(cfg):
            engine = _engines.engine_for(cfg, compression)
        elif api_token:
            engine = _engines.http_engine_for(cfg, api_token, api_base_url, compression)
        else:
            _log.error("Cannot publish %s: no MQTT certificates and no API token provided", what)
            return False
        send(engine)
        return True
    except (UloggerError, ValueError, KeyError, TypeError) as e:
        _log.error("Publishing %s failed: %s", what, e)
        return False


def publish_metrics(device_serial, app_id, metrics, cfg, api_token=None, api_base_url=DEFAULT_API_BASE_URL):
    """Publish one device's metrics (``[{"name", "value", "timestamp"?}]``);
    ``True`` once acknowledged."""
    return _publish(
        "metrics",
        cfg,
        api_token,
        api_base_url,
        "auto",
        lambda engine: engine.publish_metrics(device_serial, app_id, metrics),
    )


def publish_events(device_serial, app_id, events, cfg, api_token=None, api_base_url=DEFAULT_API_BASE_URL):
    """Publish one device's events (``[{"type", "timestamp"?}]``); ``True``
    once acknowledged."""
    return _publish(
        "events",
        cfg,
        api_token,
        api_base_url,
        "auto",
        lambda engine: engine.publish_events(device_serial, app_id, events),
    )


def publish_heartbeat(device_serial, app_id, cfg, api_token=None, api_base_url=DEFAULT_API_BASE_URL, timestamp=None):
    """Publish the metric ``{"name": "heartbeat", "value": 1}`` on behalf of
    a device; ``True`` once acknowledged."""
    return _publish(
        "heartbeat",
        cfg,
        api_token,
        api_base_url,
        "auto",
        lambda engine: engine.publish_heartbeat(device_serial, app_id, timestamp),
    )


def _validate_batch(kind, devices):
    """The SDK's checks, raised as ``ValueError`` as the SDK does."""
    if not isinstance(devices, list) or not devices:
        raise ValueError("devices must be a non-empty list")
    for i, entry in enumerate(devices):
        if not isinstance(entry, dict):
            raise ValueError("devices[{0}] must be a dict".format(i))
        if not entry.get("device_serial"):
            raise ValueError("devices[{0}] is missing 'device_serial'".format(i))
        if not entry.get(kind):
            raise ValueError("devices[{0}] is missing a non-empty '{1}' list".format(i, kind))


def publish_metrics_batch(devices, app_id, cfg, api_token=None, api_base_url=DEFAULT_API_BASE_URL, compress="auto"):
    """Publish many devices' metrics in one message (entries
    ``{"device_serial", "metrics", "app_id"?}``); ``True`` once
    acknowledged. Raises ``ValueError`` for a malformed batch, as the SDK
    does; a batch over 128 KiB after compression is refused (``False``)."""
    _validate_batch("metrics", devices)
    return _publish(
        "metrics batch",
        cfg,
        api_token,
        api_base_url,
        _compression(compress),
        lambda engine: engine.publish_metrics_batch(app_id, devices),
    )


def publish_events_batch(devices, app_id, cfg, api_token=None, api_base_url=DEFAULT_API_BASE_URL, compress="auto"):
    """Publish many devices' events in one message; see
    :func:`publish_metrics_batch`."""
    _validate_batch("events", devices)
    return _publish(
        "events batch",
        cfg,
        api_token,
        api_base_url,
        _compression(compress),
        lambda engine: engine.publish_events_batch(app_id, devices),
    )
