"""A bleak client against the fake BlueZ: scan, connect by address, read
config, subscribe to log_data, ack 0, receive the chunks, final ack.

Run by tests/bleak.rs with DBUS_SYSTEM_BUS_ADDRESS set to the private bus;
argv: address, name, and `start` (notifications as PropertiesChanged,
bleak's default) or `acquire` (AcquireNotify's socket). Prints `config <hex>` and `log <hex>`; any failure is
an exception (non-zero exit)."""

import asyncio
import struct
import sys

from bleak import BleakClient, BleakScanner

LOG_DATA = "1828e769-1420-4363-ab28-04037d9ff755"
LOG_ACK = "3828e769-1420-4363-ab28-04037d9ff755"
CONFIG = "3ad8119d-8f9d-4297-9302-aa56f2283a72"


async def main(address: str, name: str, mode: str) -> None:
    found = await BleakScanner.find_device_by_name(name, timeout=5.0)
    if found is None or found.address != address:
        raise SystemExit(f"scan by name found {found!r}")
    print("scanned", found.address, found.name, flush=True)

    # By address string: bleak scans for it again, then connects.
    async with BleakClient(address, timeout=10.0) as client:
        service = client.services.get_service("691fe31f-1a06-4c7c-88c7-0993ec53f40c")
        if service is None:
            raise SystemExit("uLogger service not resolved")
        config = await client.read_gatt_char(CONFIG)
        print("config", bytes(config).hex(), flush=True)

        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(
            LOG_DATA,
            lambda _c, data: chunks.put_nowait(bytes(data)),
            bluez={"use_start_notify": mode == "start"},
        )
        await client.write_gatt_char(LOG_ACK, struct.pack("<H", 0), response=False)
        log = b""
        total = None
        while total is None or len(log) < total:
            chunk = await asyncio.wait_for(chunks.get(), timeout=5.0)
            offset, total = struct.unpack_from("<HH", chunk)
            if offset != len(log):
                raise SystemExit(f"chunk at {offset}, expected {len(log)}")
            log += chunk[4:]
        print("log", log.hex(), flush=True)
        await client.write_gatt_char(LOG_ACK, struct.pack("<H", total), response=True)
        await client.stop_notify(LOG_DATA)
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
