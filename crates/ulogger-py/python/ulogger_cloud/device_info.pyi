from typing import Union

__all__ = ["DeviceInfo"]

class DeviceInfo:
    application_id: Union[int, str]
    device_serial: str
    device_type: str
    git_version: str
    git_hash: str
    def __init__(
        self,
        application_id: Union[int, str],
        device_serial: str,
        device_type: str,
        git_version: str,
        git_hash: str,
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
