from . import errors as errors
from .api import get_or_fetch_token as get_or_fetch_token
from .api import upload_log as upload_log
from .bridge import BridgeSession as BridgeSession
from .checksum import HEADER_SIZE as HEADER_SIZE
from .checksum import patch_epoch_time_us as patch_epoch_time_us
from .checksum import patch_session_token as patch_session_token
from .checksum import validate_checksum as validate_checksum
from .client import Client as Client
from .device_info import DeviceInfo as DeviceInfo
from .mqtt import LogConfig as LogConfig
from .mqtt import MqttConfig as MqttConfig
from .mqtt import get_session_token as get_session_token
from .mqtt import publish_binary_log as publish_binary_log
from .mqtt import publish_core_dump as publish_core_dump
from .mqtt import publish_telemetry as publish_telemetry
from .mqtt import subscribe_log_config_loop as subscribe_log_config_loop
from .mqtt import wait_for_log_config as wait_for_log_config
from .session_store import DEFAULT_FILE_STORE_PATH as DEFAULT_FILE_STORE_PATH
from .session_store import SessionStore as SessionStore
from .session_store import get_default_store as get_default_store
from .telemetry import publish_events as publish_events
from .telemetry import publish_events_batch as publish_events_batch
from .telemetry import publish_heartbeat as publish_heartbeat
from .telemetry import publish_metrics as publish_metrics
from .telemetry import publish_metrics_batch as publish_metrics_batch

__version__: str

__all__ = [
    "__version__",
    "BridgeSession",
    "DeviceInfo",
    "LogConfig",
    "MqttConfig",
    "SessionStore",
    "DEFAULT_FILE_STORE_PATH",
    "get_default_store",
    "get_or_fetch_token",
    "upload_log",
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
    "Client",
    "errors",
]
