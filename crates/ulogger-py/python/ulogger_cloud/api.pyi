from typing import Optional, Union

from .device_info import DeviceInfo
from .mqtt import MqttConfig
from .session_store import SessionStore

__all__ = ["get_or_fetch_token", "upload_log"]

def get_or_fetch_token(
    device_info: DeviceInfo, cfg: MqttConfig, store: Optional[SessionStore] = None
) -> Optional[int]: ...
def upload_log(
    device_info: Optional[DeviceInfo],
    buf: Union[bytes, bytearray],
    cfg: MqttConfig,
    store: Optional[SessionStore] = None,
) -> bool: ...
