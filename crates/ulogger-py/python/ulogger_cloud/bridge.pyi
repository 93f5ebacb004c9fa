from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

from .device_info import DeviceInfo
from .mqtt import MqttConfig
from .session_store import SessionStore

__all__ = ["BridgeSession"]

class BridgeSession:
    def __init__(
        self,
        cfg: MqttConfig,
        store: Optional[SessionStore] = None,
        call_later: Optional[Callable[[float, Callable[[], Any]], Any]] = None,
        cancel_timer: Optional[Callable[[Any], Any]] = None,
    ) -> None: ...
    def start(self) -> Tuple[int, Optional[int]]: ...
    def stop(self) -> None: ...
    def ensure_token(
        self, device_info: DeviceInfo, callback: Optional[Callable[[Optional[int]], Any]] = None
    ) -> None: ...
    def upload_log(
        self,
        device_info: Optional[DeviceInfo],
        buf: Union[bytes, bytearray],
        callback: Optional[Callable[[bool], Any]] = None,
    ) -> None: ...
    def publish_core_dump(
        self, payload: Union[bytes, bytearray], callback: Optional[Callable[[bool], Any]] = None
    ) -> bool: ...
    def publish_metrics_batch(
        self,
        devices: List[Dict[str, Any]],
        app_id: Union[int, str],
        callback: Optional[Callable[[bool], Any]] = None,
        compress: Union[bool, Literal["auto"]] = "auto",
    ) -> bool: ...
    def publish_events_batch(
        self,
        devices: List[Dict[str, Any]],
        app_id: Union[int, str],
        callback: Optional[Callable[[bool], Any]] = None,
        compress: Union[bool, Literal["auto"]] = "auto",
    ) -> bool: ...
