"""Beyond the SDK: Client, its outbox and log configurations, asyncio,
typed errors."""

import asyncio
import logging
import os
import threading
import unittest

import ulogger_cloud
from ulogger_cloud import errors
from ulogger_cloud.aio import AsyncClient
from support import APP, CUSTOMER, PARAMS, build_log, ctl, records


def client(**overrides):
    settings = dict(broker=PARAMS["broker"], port=PARAMS["port"], ca_file=PARAMS["ca_file"])
    settings.update(overrides)
    return ulogger_cloud.Client(CUSTOMER, PARAMS["cert_file"], PARAMS["key_file"], **settings)


def device(serial):
    return ulogger_cloud.DeviceInfo(APP, serial, "my_board", "v1.0.0", "abcdef0")


class ClientApi(unittest.TestCase):
    def test_upload_returns_a_receipt(self):
        with client() as c:
            receipt = c.upload_log(device("SN-RCPT"), build_log())
        self.assertEqual(receipt["topic"], "binlog/v0/%d/0/%d" % (CUSTOMER, APP))
        self.assertNotEqual(receipt["token"], 0)
        self.assertEqual(receipt["header_version"], 4)
        self.assertEqual([r["token"] for r in records(kind="binary-log", serial="SN-RCPT")],
                         [receipt["token"]])

    def test_outbox_enqueue_and_delivery(self):
        outbox = os.path.join(PARAMS["work_dir"], "outbox")
        with client(outbox_dir=outbox) as c:
            ids = [c.enqueue_log(device("SN-OUTBOX"), build_log()) for _ in range(3)]
            for record_id in ids:
                c.delivered(record_id)
            status = c.outbox_status()
        self.assertEqual(status["delivered"], 3)
        self.assertEqual(status["queued"], 0)
        self.assertEqual(len(records(kind="binary-log", serial="SN-OUTBOX")), 3)

    def test_outbox_survives_an_outage(self):
        outbox = os.path.join(PARAMS["work_dir"], "outbox-outage")
        with client(outbox_dir=outbox) as c:
            c.connected()
            self.assertGreaterEqual(ctl("disconnect"), 1)
            ids = [c.enqueue_log(device("SN-OUTAGE"), build_log(data=bytes([i]) * 50)) for i in range(5)]
            for record_id in ids:
                c.delivered(record_id)
        self.assertEqual(len(records(kind="binary-log", serial="SN-OUTAGE")), 5)

    def test_log_configurations_as_an_iterator(self):
        with client() as c:
            configs = c.log_configs(device("SN-CFG"))
            self.assertEqual(ctl("push %d SN-CFG 2 11 600" % APP), "ok")
            config = configs.next(timeout=30)
            configs.close()
        self.assertEqual((config.log_level, config.module_flags, config.timeout_seconds, config.log_modules),
                         ("WARNING", 11, 600, ["net", "ble"]))

    def test_typed_errors_keep_the_fields(self):
        with client() as c:
            big = build_log(data=bytes(60000), trailing=bytes(80000))
            with self.assertRaises(errors.PayloadTooLargeError) as caught:
                c.upload_log(device("SN-BIG"), big)
            self.assertEqual(caught.exception.limit, 131072)
            self.assertIn("exceeds", str(caught.exception))
            with self.assertRaises(errors.InvalidLogError):
                c.upload_log(device("SN-BAD"), b"\x04" + bytes(10))
            with self.assertRaises(errors.InvalidTopicError):
                c.upload_log(device("x/#"), build_log())
            with self.assertRaises(errors.NoOutboxError):
                c.outbox_status()
        with self.assertRaises(errors.ShutdownError):
            c.upload_log(device("SN-CLOSED"), build_log())

    def test_unreachable_broker_times_out(self):
        # A port nobody listens on: the emulator's HTTP port is taken by
        # HTTP, so use the connection of a closed socket.
        import socket
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        with client(port=port, connect_timeout=1.0) as c:
            with self.assertRaises(errors.UloggerError) as caught:
                c.connected()
        self.assertTrue(caught.exception.retryable or caught.exception.is_timeout, caught.exception)


class EngineLogging(unittest.TestCase):
    def test_engine_events_reach_python_logging(self):
        seen = threading.Event()

        class Watch(logging.Handler):
            def emit(self, record):
                if "outbox opened" in record.getMessage():
                    seen.set()

        watch = Watch()
        logging.getLogger("ulogger_cloud.engine").addHandler(watch)
        try:
            with client(outbox_dir=os.path.join(PARAMS["work_dir"], "outbox-logging")):
                self.assertTrue(seen.wait(30), "the engine's INFO record reached logging")
        finally:
            logging.getLogger("ulogger_cloud.engine").removeHandler(watch)


class AsyncApi(unittest.TestCase):
    def test_uploads_from_asyncio(self):
        async def main():
            async with AsyncClient(CUSTOMER, PARAMS["cert_file"], PARAMS["key_file"],
                                   broker=PARAMS["broker"], port=PARAMS["port"],
                                   ca_file=PARAMS["ca_file"]) as c:
                return await asyncio.gather(*[c.upload_log(device("SN-ASYNC"), build_log())
                                              for _ in range(5)])

        receipts = asyncio.run(main())
        self.assertEqual(len({r["token"] for r in receipts}), 1)
        self.assertEqual(len(records(kind="binary-log", serial="SN-ASYNC")), 5)


if __name__ == "__main__":
    unittest.main()


class ElfUpload(unittest.TestCase):
    def test_upload_elf_stores_the_file(self):
        # The package's own extension module is an ELF as good as any.
        native = ulogger_cloud._native.__file__
        with open(native, "rb") as fh:
            elf = fh.read()
        with client() as c:
            receipt = c.upload_elf(elf, APP, "py-board", "v9.9.9", "abc1234", branch="main")
        self.assertEqual((receipt["status"], receipt["attempts"], receipt["size"]), (200, 1, len(elf)))
        self.assertEqual(receipt["topic"], "upload/v0/firmware/%d/py-board" % CUSTOMER)
        stored = ctl("elf %d py-board v9.9.9" % APP)
        self.assertEqual((stored["size"], stored["bytes_read"], stored["git_hash"], stored["branch"]),
                         (len(elf), len(elf), "abc1234", "main"))
        self.assertEqual(stored["upload_id"], receipt["upload_id"])

    def test_not_an_elf_is_a_typed_error(self):
        with client() as c:
            with self.assertRaises(errors.InvalidElfError) as caught:
                c.upload_elf(b"\x00\x01\x02\x03 not an elf", APP, "py-board", "v1", "abc1234")
        self.assertIn("not an ELF", str(caught.exception))
