from os import PathLike
from types import TracebackType
from typing import Any, Dict, Iterator, Literal, Optional, Sequence, Type, Union

from .device_info import DeviceInfo
from .mqtt import LogConfig
from .session_store import SessionStore

__all__ = ["Client"]

_Path = Union[str, "PathLike[str]"]
_AppId = Union[int, str]
_Receipt = Dict[str, Any]

class Client:
    def __init__(
        self,
        customer_id: int,
        cert_file: _Path,
        key_file: _Path,
        broker: str = "mqtt.ulogger.ai",
        port: int = 8883,
        ca_file: Optional[_Path] = None,
        group_id: Optional[int] = 0,
        topic_prefix: str = "",
        token_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        pacing: bool = True,
        store: Optional[SessionStore] = None,
        outbox_dir: Optional[_Path] = None,
        compression: Literal["auto", "always", "never"] = "auto",
    ) -> None: ...
    @property
    def client_id(self) -> str: ...
    def connected(self) -> None: ...
    def session_token(self, device: DeviceInfo) -> int: ...
    def register(self, device: DeviceInfo) -> int: ...
    def upload_log(self, device: DeviceInfo, log: Union[bytes, bytearray]) -> _Receipt: ...
    def publish_core_dump(self, dump: Union[bytes, bytearray]) -> _Receipt: ...
    def publish_metrics(
        self, serial: str, app_id: _AppId, metrics: Sequence[Dict[str, Any]]
    ) -> _Receipt: ...
    def publish_events(
        self, serial: str, app_id: _AppId, events: Sequence[Dict[str, Any]]
    ) -> _Receipt: ...
    def publish_heartbeat(
        self, serial: str, app_id: _AppId, timestamp: Optional[int] = None
    ) -> _Receipt: ...
    def publish_metrics_batch(
        self, app_id: _AppId, devices: Sequence[Dict[str, Any]]
    ) -> _Receipt: ...
    def publish_events_batch(
        self, app_id: _AppId, devices: Sequence[Dict[str, Any]]
    ) -> _Receipt: ...
    def upload_elf(
        self,
        elf: Union[bytes, bytearray],
        application_id: _AppId,
        device_type: str,
        version: str,
        git_hash: str,
        branch: str = "",
        reply_timeout: float = 30.0,
        put_timeout: float = 300.0,
        retries: int = 3,
    ) -> _Receipt: ...
    def enqueue_log(self, device: DeviceInfo, log: Union[bytes, bytearray]) -> int: ...
    def delivered(self, record_id: int) -> None: ...
    def outbox_status(self) -> Dict[str, Any]: ...
    def wait_for_log_config(self, device: DeviceInfo, timeout: float = 30.0) -> LogConfig: ...
    def log_configs(self, device: DeviceInfo) -> LogConfigs: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Client": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class LogConfigs(Iterator[LogConfig]):
    def __iter__(self) -> "LogConfigs": ...
    def __next__(self) -> LogConfig: ...
    def next(self, timeout: Optional[float] = None) -> Optional[LogConfig]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "LogConfigs": ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
