"""The README's examples type-check with mypy against the package's stubs,
and a call with a wrong type is reported (so the stubs are what mypy
reads, not ``Any``). The Rust driver installs mypy (pinned) into the venv;
without it this is skipped (it is optional, the stubs test is not)."""

import os
import subprocess
import sys
import tempfile
import unittest

try:
    import mypy  # noqa: F401
except ImportError:
    mypy = None

README = '''
import threading
from pathlib import Path
from typing import Optional

import paho.mqtt.client as mqtt

from ulogger_cloud import (
    DEFAULT_FILE_STORE_PATH, BridgeSession, Client, DeviceInfo, LogConfig, MqttConfig,
    SessionStore, get_session_token, patch_session_token, publish_binary_log,
    subscribe_log_config_loop, upload_log, validate_checksum, wait_for_log_config,
)
from ulogger_cloud.aio import AsyncClient
from ulogger_cloud import errors

device = DeviceInfo(application_id=42, device_serial="ABC123", device_type="my_board",
                    git_version="v1.0.0", git_hash="abcdef0")
mqtt_cfg = MqttConfig(cert_file=Path("certificate.pem.crt"), key_file=Path("private.pem.key"),
                      customer_id=975773647)
buf = bytearray(b"...")
success: bool = upload_log(device, buf, mqtt_cfg)

store = SessionStore(path=DEFAULT_FILE_STORE_PATH)
success = upload_log(device, buf, mqtt_cfg, store=store)

if validate_checksum(buf):
    token: Optional[int] = get_session_token(device, mqtt_cfg)
    if token is not None:
        patch_session_token(buf, token)
        publish_binary_log(device, bytes(buf), mqtt_cfg)

config: Optional[LogConfig] = wait_for_log_config(device, mqtt_cfg, timeout=30.0)
stop = threading.Event()
subscribe_log_config_loop(device, mqtt_cfg, lambda c: print(c.log_level), stop)

with Client(975773647, "certificate.pem.crt", "private.pem.key",
            outbox_dir="/var/lib/gateway/outbox") as client:
    receipt = client.upload_log(device, buf)
    record: int = client.enqueue_log(device, buf)
    client.delivered(record)
    queued = client.outbox_status()["queued"]
    for log_config in client.log_configs(device):
        print(log_config.module_flags)
    client.upload_elf(b"\\x7fELF", 42, "my_board", "v1.0.0", "abcdef0", branch="main")

try:
    Client(1, "c", "k").upload_log(device, buf)
except errors.PayloadTooLargeError as e:
    print(e.size, e.limit, e.retryable)

paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cust-975773647-gw-1")
bridged = MqttConfig(client=paho, customer_id=975773647, topic_prefix="ulogger/")
upload_log(device, buf, bridged)
session = BridgeSession(bridged)
session.start()
session.upload_log(device, buf, callback=lambda ok: print(ok))


async def gateway() -> None:
    async with AsyncClient(975773647, "certificate.pem.crt", "private.pem.key") as aclient:
        await aclient.upload_log(device, buf)
'''

WRONG = '''
from ulogger_cloud import DeviceInfo, MqttConfig, upload_log

upload_log(DeviceInfo(42, "A", "b", "v", "h"), 42, MqttConfig())
'''


def run_mypy(source):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "example.py")
        with open(path, "w") as fh:
            fh.write(source)
        return subprocess.run(
            [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", os.devnull,
             "--python-version", "3.9", "--strict-optional", "--no-error-summary", path],
            capture_output=True, text=True, timeout=300,
        )


@unittest.skipIf(mypy is None, "mypy is not installed (optional)")
class TypeCheck(unittest.TestCase):
    def test_the_readme_examples_type_check(self):
        result = run_mypy(README)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_a_wrong_type_is_reported(self):
        result = run_mypy(WRONG)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn('Argument 2 to "upload_log" has incompatible type "int"', result.stdout)
