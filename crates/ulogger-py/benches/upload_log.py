"""The benchmark's Python side: `upload_log` called N times in a row,
through whichever `ulogger_cloud` this interpreter has (ours, or the
platform's SDK), against the broker in the parameters file.

Prints one JSON line: calls, failed calls, seconds, calls per second, CPU
seconds of this process per call, import time.

    python upload_log.py PARAMS.json CALLS
"""

import json
import sys
import time

started = time.perf_counter()
import ulogger_cloud  # noqa: E402

import_seconds = time.perf_counter() - started

params = json.load(open(sys.argv[1]))
calls = int(sys.argv[2])
settings = dict(
    broker=params["broker"],
    port=params["port"],
    cert_file=params["cert_file"],
    key_file=params["key_file"],
    customer_id=params["customer_id"],
)
if "ca_file" in ulogger_cloud.MqttConfig.__slots__:
    # Ours: the emulator's CA, and no pacing (as the benchmark asks).
    settings.update(ca_file=params["ca_file"], pacing=False)
cfg = ulogger_cloud.MqttConfig(**settings)
device = ulogger_cloud.DeviceInfo(7, "SN-BENCH", "bench_board", "v1.0.0", "abcdef0")
log = bytes.fromhex(params["log_hex"])
store = ulogger_cloud.SessionStore()

# Registration and the first connection are not what is measured.
assert ulogger_cloud.upload_log(device, log, cfg, store), "the warm-up upload failed"
cpu0, wall0 = time.process_time(), time.perf_counter()
failed = sum(0 if ulogger_cloud.upload_log(device, log, cfg, store) else 1 for _ in range(calls))
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
print(json.dumps({
    "calls": calls,
    "failed": failed,
    "seconds": wall,
    "calls_per_second": calls / wall,
    "cpu_seconds_per_call": cpu / calls,
    "import_seconds": import_seconds,
}))
