"""ulogger_cloud on the ulogger-cloud Rust engine (distribution
``ulogger-cloud-rs``).

The Python SDK 1.2.x API, by name, signature and return convention, over
one persistent, paced MQTT connection per configuration; plus
:class:`Client` (receipts, typed exceptions, the durable outbox) and
:mod:`ulogger_cloud.aio`. Where this package differs from the SDK on
purpose (no plaintext fallback, never token 0, ids checked before they go
into a topic) it logs it once, on the ``ulogger_cloud`` logger.
"""

from . import errors
from ._native import ENGINE_VERSION as _ENGINE_VERSION
from .api import get_or_fetch_token, upload_log
from .bridge import BridgeSession
from .checksum import HEADER_SIZE, patch_epoch_time_us, patch_session_token, validate_checksum
from .client import Client
from .device_info import DeviceInfo
from .mqtt import (
    LogConfig,
    MqttConfig,
    get_session_token,
    publish_binary_log,
    publish_core_dump,
    publish_telemetry,
    subscribe_log_config_loop,
    wait_for_log_config,
)
from .session_store import DEFAULT_FILE_STORE_PATH, SessionStore, get_default_store
from .telemetry import (
    publish_events,
    publish_events_batch,
    publish_heartbeat,
    publish_metrics,
    publish_metrics_batch,
)

#: The version of this package (the Rust workspace's).
__version__ = _ENGINE_VERSION

__all__ = [
    "__version__",
    # Data types
    "BridgeSession",
    "DeviceInfo",
    "LogConfig",
    "MqttConfig",
    "SessionStore",
    # Token & upload helpers
    "DEFAULT_FILE_STORE_PATH",
    "get_default_store",
    "get_or_fetch_token",
    "upload_log",
    # Lower-level building blocks
    "HEADER_SIZE",
    "get_session_token",
    "patch_session_token",
    "patch_epoch_time_us",
    "publish_binary_log",
    "publish_core_dump",
    "publish_telemetry",
    "publish_metrics",
    "publish_events",
    "publish_heartbeat",
    "publish_metrics_batch",
    "publish_events_batch",
    "validate_checksum",
    "wait_for_log_config",
    "subscribe_log_config_loop",
    # Beyond the SDK
    "Client",
    "errors",
]
