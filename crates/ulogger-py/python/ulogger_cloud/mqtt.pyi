import threading
from os import PathLike
from typing import Any, Callable, Dict, List, Optional, Union

from .device_info import DeviceInfo

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

_Path = Union[str, "PathLike[str]"]

class MqttConfig:
    broker: str
    port: int
    cert_file: Optional[_Path]
    key_file: Optional[_Path]
    customer_id: int
    group_id: Optional[int]
    token_timeout: float
    client: Any
    topic_prefix: str
    ca_file: Optional[_Path]
    pacing: bool
    def __init__(
        self,
        broker: str = "mqtt.ulogger.ai",
        port: int = 8883,
        cert_file: Optional[_Path] = None,
        key_file: Optional[_Path] = None,
        customer_id: int = 0,
        group_id: Optional[int] = 0,
        token_timeout: float = 15.0,
        client: Any = None,
        topic_prefix: str = "",
        ca_file: Optional[_Path] = None,
        pacing: bool = True,
    ) -> None: ...

class LogConfig:
    log_level: str
    module_flags: int
    log_modules: List[str]
    timeout_seconds: int
    def __init__(
        self,
        log_level: str = "INFO",
        module_flags: int = 0xFFFFFFFF,
        log_modules: Optional[List[str]] = None,
        timeout_seconds: int = 3600,
    ) -> None: ...

def get_session_token(device_info: DeviceInfo, cfg: MqttConfig) -> Optional[int]: ...
def publish_binary_log(
    device_info: DeviceInfo, payload: Union[bytes, bytearray], cfg: MqttConfig
) -> bool: ...
def publish_core_dump(payload: Union[bytes, bytearray], cfg: MqttConfig) -> bool: ...
def publish_telemetry(
    topic: str,
    payload: Union[Dict[str, Any], bytes, bytearray],
    cfg: MqttConfig,
    timeout: float = 10.0,
) -> bool: ...
def wait_for_log_config(
    device_info: DeviceInfo,
    cfg: MqttConfig,
    timeout: Optional[float] = 30.0,
    on_config: Optional[Callable[[LogConfig], Any]] = None,
) -> Optional[LogConfig]: ...
def subscribe_log_config_loop(
    device_info: DeviceInfo,
    cfg: MqttConfig,
    on_config: Callable[[LogConfig], Any],
    stop_event: threading.Event,
) -> None: ...
