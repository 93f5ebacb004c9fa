"""The SDK's API, as its users write it, against the emulator."""

import inspect
import json
import os
import subprocess
import sys
import threading
import unittest
from pathlib import Path

import ulogger_cloud
from support import APP, CAPTURE, CUSTOMER, PARAMS, build_log, ctl, records

# The SDK 1.2.3's __all__, as published.
SDK_ALL = [
    "__version__", "BridgeSession", "DeviceInfo", "LogConfig", "MqttConfig",
    "SessionStore", "DEFAULT_FILE_STORE_PATH", "get_default_store",
    "get_or_fetch_token", "upload_log", "HEADER_SIZE", "get_session_token",
    "patch_session_token", "patch_epoch_time_us", "publish_binary_log",
    "publish_core_dump", "publish_telemetry", "publish_metrics", "publish_events",
    "publish_heartbeat", "publish_metrics_batch", "publish_events_batch",
    "validate_checksum", "wait_for_log_config", "subscribe_log_config_loop",
]

# The SDK 1.2.3's signatures of its public functions.
SDK_SIGNATURES = {
    "get_or_fetch_token": "(device_info, cfg, store=None)",
    "upload_log": "(device_info, buf, cfg, store=None)",
    "get_session_token": "(device_info, cfg)",
    "patch_session_token": "(buf, token)",
    "patch_epoch_time_us": "(buf, epoch_us=None)",
    "publish_binary_log": "(device_info, payload, cfg)",
    "publish_core_dump": "(payload, cfg)",
    "publish_telemetry": "(topic, payload, cfg, timeout=10.0)",
    "publish_metrics": "(device_serial, app_id, metrics, cfg, api_token=None, api_base_url='https://api.ulogger.ai')",
    "publish_events": "(device_serial, app_id, events, cfg, api_token=None, api_base_url='https://api.ulogger.ai')",
    "publish_heartbeat": "(device_serial, app_id, cfg, api_token=None, api_base_url='https://api.ulogger.ai', timestamp=None)",
    "publish_metrics_batch": "(devices, app_id, cfg, api_token=None, api_base_url='https://api.ulogger.ai', compress='auto')",
    "publish_events_batch": "(devices, app_id, cfg, api_token=None, api_base_url='https://api.ulogger.ai', compress='auto')",
    "validate_checksum": "(buf)",
    "wait_for_log_config": "(device_info, cfg, timeout=30.0, on_config=None)",
    "subscribe_log_config_loop": "(device_info, cfg, on_config, stop_event)",
    "get_default_store": "()",
}

SDK_SUBMODULES = {
    "api": ["get_or_fetch_token", "upload_log"],
    "mqtt": ["MqttConfig", "LogConfig", "get_session_token", "publish_binary_log",
             "publish_core_dump", "publish_telemetry", "wait_for_log_config",
             "subscribe_log_config_loop"],
    "telemetry": ["publish_metrics", "publish_events", "publish_heartbeat",
                  "publish_metrics_batch", "publish_events_batch"],
    "checksum": ["HEADER_SIZE", "validate_checksum", "patch_session_token", "patch_epoch_time_us"],
    "session_store": ["SessionStore", "get_default_store", "DEFAULT_FILE_STORE_PATH"],
    "device_info": ["DeviceInfo"],
    "bridge": ["BridgeSession"],
}


def config(**overrides):
    """The emulator's settings, as a customer sets the platform's."""
    settings = dict(
        broker=PARAMS["broker"],
        port=PARAMS["port"],
        cert_file=PARAMS["cert_file"],
        key_file=PARAMS["key_file"],
        customer_id=CUSTOMER,
        ca_file=PARAMS["ca_file"],
    )
    settings.update(overrides)
    return ulogger_cloud.MqttConfig(**settings)


def device(serial, git_hash="abcdef0"):
    return ulogger_cloud.DeviceInfo(APP, serial, "my_board", "v1.0.0", git_hash)


class PublicApi(unittest.TestCase):
    def test_every_sdk_name_is_exported(self):
        for name in SDK_ALL:
            self.assertIn(name, ulogger_cloud.__all__)
            self.assertTrue(hasattr(ulogger_cloud, name), name)

    def test_signatures_are_the_sdks(self):
        for name, expected in SDK_SIGNATURES.items():
            self.assertEqual(str(inspect.signature(getattr(ulogger_cloud, name))), expected, name)
        self.assertEqual(ulogger_cloud.HEADER_SIZE, 13)
        cfg = ulogger_cloud.MqttConfig()
        self.assertEqual((cfg.broker, cfg.port, cfg.customer_id, cfg.group_id, cfg.token_timeout,
                          cfg.client, cfg.topic_prefix),
                         ("mqtt.ulogger.ai", 8883, 0, 0, 15.0, None, ""))
        log_config = ulogger_cloud.LogConfig()
        self.assertEqual((log_config.log_level, log_config.module_flags, log_config.log_modules,
                          log_config.timeout_seconds), ("INFO", 0xFFFFFFFF, [], 3600))

    def test_sdk_submodules_hold_their_names(self):
        import importlib
        for module, names in SDK_SUBMODULES.items():
            loaded = importlib.import_module("ulogger_cloud." + module)
            for name in names:
                self.assertTrue(hasattr(loaded, name), "%s.%s" % (module, name))

    def test_patches_in_place(self):
        buf = bytearray(build_log())
        ulogger_cloud.patch_session_token(buf, 0x11223344)
        self.assertEqual(bytes(buf[1:5]), bytes.fromhex("44332211"))
        ulogger_cloud.patch_epoch_time_us(buf, 5)
        self.assertEqual(int.from_bytes(bytes(buf[13:21]), "little"), 5)
        with self.assertRaises(ValueError):
            ulogger_cloud.patch_epoch_time_us(bytearray(build_log(version=3)))
        self.assertTrue(ulogger_cloud.validate_checksum(bytes(buf)))
        buf[-1] ^= 0xFF
        self.assertFalse(ulogger_cloud.validate_checksum(buf))

    def test_device_info_is_the_sdks(self):
        a = ulogger_cloud.DeviceInfo(1, "S", "t", "v", "h")
        self.assertEqual(a, ulogger_cloud.DeviceInfo(1, "S", "t", "v", "h"))
        self.assertEqual(hash(a), hash(ulogger_cloud.DeviceInfo(1, "S", "t", "v", "h")))
        self.assertEqual(repr(a), "DeviceInfo(application_id=1, device_serial='S', "
                                  "device_type='t', git_version='v', git_hash='h')")


class ReadmeExamples(unittest.TestCase):
    """The seed's README (ulogger-cloud 0.3.0), only the broker, port and CA
    pointed at the emulator."""

    def test_quick_start(self):
        from pathlib import Path
        from ulogger_cloud import DeviceInfo, MqttConfig, upload_log

        # Device identification - normally parsed from a BLE characteristic
        device = DeviceInfo(
            application_id=42,
            device_serial="ABC123",
            device_type="my_board",
            git_version="v1.0.0",
            git_hash="abcdef0",
        )

        # MQTT broker configuration
        mqtt_cfg = MqttConfig(
            cert_file=Path(PARAMS["cert_file"]),
            key_file=Path(PARAMS["key_file"]),
            customer_id=CUSTOMER,
            broker=PARAMS["broker"], port=PARAMS["port"], ca_file=PARAMS["ca_file"],
        )

        # buf is a bytearray received over BLE
        buf = bytearray(build_log())
        success = upload_log(device, buf, mqtt_cfg)
        print("Upload OK" if success else "Upload failed")

        self.assertTrue(success)
        token = int.from_bytes(bytes(buf[1:5]), "little")
        self.assertNotEqual(token, 0, "the bytearray is patched in place")
        logs = records(kind="binary-log", serial="ABC123")
        self.assertEqual([r["token"] for r in logs], [token])
        self.assertEqual([r["verdict"] for r in logs], ["ok"])

    def test_persistent_session_token_cache(self):
        from ulogger_cloud import (
            DeviceInfo, MqttConfig, SessionStore,
            DEFAULT_FILE_STORE_PATH, upload_log,
        )

        device = DeviceInfo(42, "ABC124", "my_board", "v1.0.0", "abcdef0")
        mqtt_cfg = MqttConfig(cert_file=Path(PARAMS["cert_file"]), key_file=Path(PARAMS["key_file"]),
                              customer_id=CUSTOMER, broker=PARAMS["broker"], port=PARAMS["port"],
                              ca_file=PARAMS["ca_file"])
        buf = bytearray(build_log())
        store = SessionStore(path=DEFAULT_FILE_STORE_PATH)  # ~/.ulogger/session_tokens.json
        success = upload_log(device, buf, mqtt_cfg, store=store)

        self.assertTrue(success)
        self.assertTrue(DEFAULT_FILE_STORE_PATH.startswith(os.environ["HOME"]))
        with open(DEFAULT_FILE_STORE_PATH) as fh:
            saved = json.load(fh)
        self.assertEqual(saved["ABC124"]["git_hash"], "abcdef0")
        self.assertEqual(saved["ABC124"]["token"], int.from_bytes(bytes(buf[1:5]), "little"))
        # A second upload takes the cached token: no second registration.
        self.assertTrue(upload_log(device, bytearray(build_log()), mqtt_cfg, store=store))
        self.assertEqual(len(records(kind="boot", serial="ABC124")), 1)

    def test_low_level_building_blocks(self):
        from ulogger_cloud import (
            DeviceInfo, MqttConfig, get_session_token, patch_session_token,
            publish_binary_log, validate_checksum,
        )

        device = DeviceInfo(42, "ABC125", "my_board", "v1.0.0", "abcdef0")
        mqtt_cfg = config()
        buf = bytearray(build_log())
        self.assertTrue(validate_checksum(buf))
        token = get_session_token(device, mqtt_cfg)
        self.assertIsNotNone(token)
        patch_session_token(buf, token)
        self.assertTrue(publish_binary_log(device, bytes(buf), mqtt_cfg))
        self.assertEqual([r["token"] for r in records(kind="binary-log", serial="ABC125")], [token])


class SdkCalls(unittest.TestCase):
    def test_every_publish_is_routed_and_accepted(self):
        cfg = config()
        serial = "SN-CALLS"
        self.assertTrue(ulogger_cloud.upload_log(device(serial), build_log(), cfg))
        self.assertTrue(ulogger_cloud.publish_core_dump(b"\0" * 264 + b"cC" + bytes(100), cfg))
        self.assertTrue(ulogger_cloud.publish_metrics(
            serial, APP, [{"name": "temp", "value": 21.5, "timestamp": 1700000000},
                          {"name": "rssi", "value": -60}], cfg))
        self.assertTrue(ulogger_cloud.publish_events(serial, str(APP), [{"type": "boot"}], cfg))
        self.assertTrue(ulogger_cloud.publish_heartbeat(serial, APP, cfg))
        self.assertTrue(ulogger_cloud.publish_metrics_batch(
            [{"device_serial": "SN-B%03d" % i, "metrics": [{"name": "t", "value": i}]}
             for i in range(200)], APP, cfg))
        self.assertTrue(ulogger_cloud.publish_events_batch(
            [{"device_serial": "SN-E1", "events": [{"type": "door"}], "app_id": 9}], APP, cfg,
            compress=False))
        topic = "metrics/v0/%d/0/%d" % (CUSTOMER, APP)
        self.assertTrue(ulogger_cloud.publish_telemetry(
            topic, {"device_serial": serial, "metrics": [{"name": "x", "value": 1}]}, cfg))
        with self.assertRaises(ValueError):
            ulogger_cloud.publish_metrics_batch([], APP, cfg)
        bad = [r for r in ctl("records") if r["verdict"] != "ok"]
        self.assertEqual(bad, [])

    def test_http_fallback_without_certificates(self):
        cfg = ulogger_cloud.MqttConfig(customer_id=CUSTOMER, ca_file=PARAMS["ca_file"])
        http = dict(api_token=PARAMS["api_token"], api_base_url=PARAMS["http_url"])
        # Other tests' requests (the ELF upload's PUT) are not these.
        before = ctl("http_requests")
        self.assertTrue(ulogger_cloud.publish_metrics(
            "SN-HTTP", APP, [{"name": "temp", "value": 20}], cfg, **http))
        self.assertTrue(ulogger_cloud.publish_heartbeat("SN-HTTP", APP, cfg, **http))
        self.assertTrue(ulogger_cloud.publish_events_batch(
            [{"device_serial": "SN-HTTP", "events": [{"type": "door"}]}], APP, cfg,
            compress=True, **http))
        self.assertFalse(ulogger_cloud.publish_metrics(
            "SN-HTTP", APP, [{"name": "temp", "value": 20}], cfg,
            api_token="ulg_not_the_token", api_base_url=PARAMS["http_url"]))
        # Without certificates nor a token: refused, as by the SDK.
        self.assertFalse(ulogger_cloud.publish_metrics("SN-HTTP", APP, [{"name": "t", "value": 1}], cfg))
        self.assertEqual(ctl("http_requests") - before, 4)

    def test_threads_share_one_connection(self):
        # A configuration no other test uses: a connection of its own.
        cfg = config(token_timeout=14.5)
        before = set(ctl("clients"))
        serials = ["SN-T%d" % i for i in range(4)]
        results = []
        lock = threading.Lock()

        def work(n):
            for i in range(20):
                ok = ulogger_cloud.upload_log(device(serials[(n + i) % 4]), build_log(), cfg)
                with lock:
                    results.append(ok)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [True] * 160)
        new = set(ctl("clients")) - before
        self.assertEqual(len(new), 1, "one connection for the configuration: %r" % new)
        logs = [r for r in ctl("records") if r["kind"] == "binary-log" and r["serial"] in serials]
        self.assertEqual(len(logs), 160)
        from ulogger_cloud import _engines
        self.assertIn(_engines.key(cfg), _engines._engines)
        # One registration per device (the default store caches them).
        for serial in serials:
            self.assertEqual(len(records(kind="boot", serial=serial)), 1, serial)


class DeliberateDifferences(unittest.TestCase):
    def test_no_plaintext_fallback(self):
        mark = len(CAPTURE.records)
        before = len(ctl("records"))
        cfg = ulogger_cloud.MqttConfig(broker=PARAMS["broker"], port=PARAMS["port"], customer_id=CUSTOMER)
        self.assertFalse(ulogger_cloud.upload_log(device("SN-PLAIN"), build_log(), cfg))
        self.assertIsNone(ulogger_cloud.get_session_token(device("SN-PLAIN"), cfg))
        self.assertFalse(ulogger_cloud.publish_heartbeat("SN-PLAIN", APP, cfg))
        self.assertTrue(any("never does" in m for m in CAPTURE.messages(mark)), CAPTURE.messages(mark))
        self.assertEqual(len(ctl("records")), before, "nothing reached the broker")
        with self.assertRaises(ulogger_cloud.errors.NoClientCertificateError):
            ulogger_cloud.Client(CUSTOMER, None, None)

    def test_missing_certificate_is_an_error(self):
        mark = len(CAPTURE.records)
        missing = os.path.join(PARAMS["work_dir"], "no-such.pem.crt")
        cfg = config(cert_file=missing)
        self.assertFalse(ulogger_cloud.upload_log(device("SN-NOCERT"), build_log(), cfg))
        self.assertTrue(any("no-such.pem.crt" in m for m in CAPTURE.messages(mark)), CAPTURE.messages(mark))
        with self.assertRaises(ulogger_cloud.errors.CertificateFileError) as caught:
            ulogger_cloud.Client(CUSTOMER, missing, PARAMS["key_file"], broker=PARAMS["broker"],
                                 port=PARAMS["port"], ca_file=PARAMS["ca_file"])
        self.assertEqual(str(caught.exception.path), missing)
        self.assertEqual(caught.exception.role, "client certificate")

    def test_never_token_zero(self):
        import ulogger_cloud.api as api
        cfg = config()
        self.assertFalse(ulogger_cloud.publish_binary_log(device("SN-ZERO"), build_log(), cfg))
        # Registration fails: the SDK would publish token 0; nothing is
        # published. (Patching the module's collaborator works as with the SDK.)
        original = api.get_session_token
        api.get_session_token = lambda device_info, cfg: None
        try:
            self.assertFalse(ulogger_cloud.upload_log(device("SN-ZERO"), build_log(), cfg))
        finally:
            api.get_session_token = original
        self.assertEqual(records(serial="SN-ZERO"), [])

    def test_topic_ids_are_validated(self):
        mark = len(CAPTURE.records)
        cfg = config()
        self.assertFalse(ulogger_cloud.upload_log(device("x/#"), build_log(), cfg))
        self.assertFalse(ulogger_cloud.publish_heartbeat("a+b", APP, cfg))
        self.assertTrue(any("topic" in m or "serial" in m for m in CAPTURE.messages(mark)))
        self.assertEqual([r for r in ctl("records") if r.get("serial") in ("x/#", "a+b")], [])

    def test_the_differences_are_logged_once(self):
        config_ = config()
        ulogger_cloud.upload_log(device("SN-ONCE"), build_log(), config_)
        from ulogger_cloud._engines import DIFFERENCES
        self.assertEqual(CAPTURE.messages().count(DIFFERENCES), 1)


class TokenFile(unittest.TestCase):
    """The token file is the SDK's, both ways."""

    def sdk(self, script, *args):
        python = PARAMS["sdk_python"]
        if python is None:
            if os.environ.get("CI") == "true":
                self.fail("the Python SDK is required under CI=true")
            self.skipTest("no Python SDK (ULOGGER_SDK_PYTHON)")
        out = subprocess.run([python, "-c", script] + list(args), capture_output=True, text=True,
                             timeout=120, check=True)
        return out.stdout.strip()

    def test_sdk_reads_ours_and_we_read_the_sdks(self):
        path = os.path.join(PARAMS["work_dir"], "tokens.json")
        ours = ulogger_cloud.SessionStore(path)
        ours.set_token("SN-OURS", "h1", 0xDEADBEEF)
        seen = self.sdk(
            "import sys, ulogger_cloud as u; s = u.SessionStore(sys.argv[1]); "
            "print(s.get_token('SN-OURS', 'h1')); s.set_token('SN-SDK', 'h2', 77)", path)
        self.assertEqual(int(seen), 0xDEADBEEF)
        again = ulogger_cloud.SessionStore(path)
        self.assertEqual(again.get_token("SN-SDK", "h2"), 77)
        self.assertEqual(again.get_token("SN-OURS", "h1"), 0xDEADBEEF)
        self.assertIsNone(again.get_token("SN-SDK", "other-firmware"))


class InterpreterExit(unittest.TestCase):
    def test_exit_with_uploads_in_flight(self):
        script = (
            "import sys, threading, support, ulogger_cloud as u\n"
            "p = support.PARAMS\n"
            "cfg = u.MqttConfig(broker=p['broker'], port=p['port'], cert_file=p['cert_file'],\n"
            "                   key_file=p['key_file'], customer_id=p['customer_id'], ca_file=p['ca_file'])\n"
            "d = u.DeviceInfo(7, 'SN-EXIT', 'b', 'v', 'h')\n"
            "assert u.upload_log(d, support.build_log(), cfg)\n"
            "def spam():\n"
            "    while True:\n"
            "        u.upload_log(d, support.build_log(), cfg)\n"
            "for _ in range(4):\n"
            "    threading.Thread(target=spam, daemon=True).start()\n"
            "c = u.Client(p['customer_id'], p['cert_file'], p['key_file'], broker=p['broker'],\n"
            "             port=p['port'], ca_file=p['ca_file'], outbox_dir=p['work_dir'] + '/exit-outbox')\n"
            "c.enqueue_log(d, support.build_log())\n"
            "print('exiting', flush=True)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("exiting", done.stdout)


if __name__ == "__main__":
    unittest.main()
