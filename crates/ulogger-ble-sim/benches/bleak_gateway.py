"""The reference gateway's pull, on bleak, for benches/ble_gateway.rs.

What uLogger's reference `bluetooth.py` does per device (PROTOCOL §6):
connect, read `config`, start notifications on `log_data` (StartNotify,
bleak's default on BlueZ), ack 0, ack each chunk with the next offset
(write without response; the ack that reaches the total is the final
one, which makes the device erase the log), then write the buffer to a
file, after the final ack and without fsync, as the reference does. Unlike
the reference, all devices at once with asyncio (it pulls one at a time),
so both gateways of the bench do the same job.

argv: the output directory, then the devices' addresses. The bench sets
DBUS_SYSTEM_BUS_ADDRESS to its private bus. Prints `ready <cpu us>` once
bleak is imported (before any D-Bus call), `stored <address> <bytes>` per
device; any failure is an exception (non-zero exit).
"""

import asyncio
import os
import resource
import struct
import sys

from bleak import BleakClient, BleakScanner

LOG_DATA = "1828e769-1420-4363-ab28-04037d9ff755"
LOG_ACK = "3828e769-1420-4363-ab28-04037d9ff755"
CONFIG = "3ad8119d-8f9d-4297-9302-aa56f2283a72"


def cpu_us() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * 1e6)


async def scan(addresses: list[str]) -> dict:
    """One scan until every device has been seen, as the reference scans."""
    wanted = {a.upper() for a in addresses}
    found = {}
    all_seen = asyncio.Event()

    def seen(device, _advertisement):
        address = device.address.upper()
        if address in wanted and address not in found:
            found[address] = device
            if len(found) == len(wanted):
                all_seen.set()

    async with BleakScanner(detection_callback=seen):
        await asyncio.wait_for(all_seen.wait(), timeout=20.0)
    return found


async def pull(device, out_dir: str) -> None:
    async with BleakClient(device, timeout=20.0) as client:
        await client.read_gatt_char(CONFIG)
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        await client.start_notify(LOG_DATA, lambda _c, data: chunks.put_nowait(bytes(data)))
        await client.write_gatt_char(LOG_ACK, struct.pack("<H", 0), response=False)
        log = bytearray()
        total = None
        while total is None or len(log) < total:
            chunk = await asyncio.wait_for(chunks.get(), timeout=10.0)
            offset, total = struct.unpack_from("<HH", chunk)
            if offset == len(log):
                log += chunk[4:]
            # The next offset wanted; at the total, the final ack.
            await client.write_gatt_char(LOG_ACK, struct.pack("<H", len(log)), response=False)
        await client.stop_notify(LOG_DATA)
    # After the final ack, not fsynced: the reference's order.
    name = device.address.replace(":", "") + ".bin"
    with open(os.path.join(out_dir, name), "wb") as out:
        out.write(log)
    print("stored", device.address, len(log), flush=True)


async def main(out_dir: str, addresses: list[str]) -> None:
    print("ready", cpu_us(), flush=True)
    devices = await scan(addresses)
    await asyncio.gather(*(pull(devices[a.upper()], out_dir) for a in addresses))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
