from typing import Optional, Union

__all__ = [
    "HEADER_SIZE",
    "HEADER_SIZE_V2",
    "HEADER_SIZE_V3",
    "HEADER_SIZE_V4",
    "validate_checksum",
    "patch_session_token",
    "patch_epoch_time_us",
]

HEADER_SIZE: int
HEADER_SIZE_V2: int
HEADER_SIZE_V3: int
HEADER_SIZE_V4: int

def validate_checksum(buf: Union[bytes, bytearray, memoryview]) -> bool: ...
def patch_session_token(buf: bytearray, token: int) -> None: ...
def patch_epoch_time_us(buf: bytearray, epoch_us: Optional[int] = None) -> None: ...
