from typing import Any, Dict, List, Literal, Optional, Sequence, Union

from .mqtt import MqttConfig

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

DEFAULT_API_BASE_URL: str
COMPRESS_THRESHOLD_BYTES: int
MQTT_MAX_PAYLOAD_BYTES: int

_AppId = Union[int, str]
_Compress = Union[bool, Literal["auto"]]

def publish_metrics(
    device_serial: str,
    app_id: _AppId,
    metrics: Sequence[Dict[str, Any]],
    cfg: MqttConfig,
    api_token: Optional[str] = None,
    api_base_url: str = ...,
) -> bool: ...
def publish_events(
    device_serial: str,
    app_id: _AppId,
    events: Sequence[Dict[str, Any]],
    cfg: MqttConfig,
    api_token: Optional[str] = None,
    api_base_url: str = ...,
) -> bool: ...
def publish_heartbeat(
    device_serial: str,
    app_id: _AppId,
    cfg: MqttConfig,
    api_token: Optional[str] = None,
    api_base_url: str = ...,
    timestamp: Optional[int] = None,
) -> bool: ...
def publish_metrics_batch(
    devices: List[Dict[str, Any]],
    app_id: _AppId,
    cfg: MqttConfig,
    api_token: Optional[str] = None,
    api_base_url: str = ...,
    compress: _Compress = "auto",
) -> bool: ...
def publish_events_batch(
    devices: List[Dict[str, Any]],
    app_id: _AppId,
    cfg: MqttConfig,
    api_token: Optional[str] = None,
    api_base_url: str = ...,
    compress: _Compress = "auto",
) -> bool: ...
