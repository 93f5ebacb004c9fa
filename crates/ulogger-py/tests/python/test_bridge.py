"""Bridge mode: the engine over a real paho-mqtt client the test holds,
against the emulator's broker and against mosquitto (the emulator's cloud
attached to it), both over mutual TLS."""

import os
import queue
import threading
import unittest
import uuid

import ulogger_cloud
from ulogger_cloud import errors
from support import APP, CUSTOMER, PARAMS, build_log, ctl, records

try:
    import paho.mqtt.client as mqtt
except ImportError:  # the Rust driver fails under CI=true without it
    mqtt = None

WAIT = 30


def device(serial):
    return ulogger_cloud.DeviceInfo(APP, serial, "my_board", "v1.0.0", "abcdef0")


class App(object):
    """The application: its own paho client, its own callbacks, its own
    network loop."""

    def __init__(self, broker):
        self.client_id = "cust-%d-paho-%s" % (CUSTOMER, uuid.uuid4().hex[:12])
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id
        )
        self.client.tls_set(
            ca_certs=broker["ca_file"], certfile=broker["cert_file"], keyfile=broker["key_file"]
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.connects = queue.Queue()
        self.disconnects = queue.Queue()
        self.published = []
        self.subacks = queue.Queue()
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(codes)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connects.put(rc)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.client.on_publish = lambda c, u, mid, rc, props: self.published.append(mid)
        self.client.connect("127.0.0.1", broker["port"])
        self.client.loop_start()
        self.assert_connected()

    def assert_connected(self):
        rc = self.connects.get(timeout=WAIT)
        assert not rc.is_failure, rc

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def emulator_broker():
    return dict(port=PARAMS["port"], ca_file=PARAMS["ca_file"], cert_file=PARAMS["cert_file"],
                key_file=PARAMS["key_file"])


@unittest.skipIf(mqtt is None, "paho-mqtt is not installed (the Rust driver says why)")
class OverTheEmulator(unittest.TestCase):
    def setUp(self):
        self.app = App(emulator_broker())
        self.cfg = ulogger_cloud.MqttConfig(client=self.app.client, customer_id=CUSTOMER, pacing=False)

    def tearDown(self):
        self.app.close()

    def test_registration_and_upload_wait_for_the_acknowledgement(self):
        store = ulogger_cloud.SessionStore()
        self.assertTrue(ulogger_cloud.upload_log(device("SN-BRIDGE"), build_log(), self.cfg, store))
        # Stored by the cloud before its PUBACK: there when the call returns.
        uploaded = records(kind="binary-log", serial="SN-BRIDGE")
        self.assertEqual(len(uploaded), 1)
        self.assertEqual(uploaded[0]["token"], store.get_token("SN-BRIDGE", "abcdef0"))
        self.assertNotEqual(uploaded[0]["token"], 0)
        # Through the application's client, whose own callback still runs.
        self.assertGreaterEqual(len(self.app.published), 2)

    def test_no_puback_no_success(self):
        store = ulogger_cloud.SessionStore()
        self.assertIsNotNone(ulogger_cloud.get_or_fetch_token(device("SN-NOACK"), self.cfg, store))
        published = len(self.app.published)
        self.assertEqual(ctl("withhold_puback binlog/v0/%d/0/%d" % (CUSTOMER, APP)), "ok")
        try:
            # paho queued and sent it (the SDK's BridgeSession would say
            # True here); without the broker's PUBACK the engine says False
            # once its acknowledgement timeout (10 s) ran out.
            self.assertFalse(ulogger_cloud.upload_log(device("SN-NOACK"), build_log(), self.cfg, store))
        finally:
            ctl("withhold_puback none")
        self.assertEqual(len(self.app.published), published)
        # The cloud did receive it: only the acknowledgement was missing.
        self.assertEqual(len(records(kind="binary-log", serial="SN-NOACK")), 1)

    def test_a_disconnect_then_the_engine_goes_on_after_pahos_reconnect(self):
        self.assertIsNotNone(ulogger_cloud.get_session_token(device("SN-DROP"), self.cfg))
        self.assertGreaterEqual(ctl("disconnect"), 1)
        self.app.disconnects.get(timeout=WAIT)
        # Waits for paho to reconnect (the engine saw the drop through
        # on_disconnect and waits for on_connect), then publishes.
        self.assertTrue(ulogger_cloud.upload_log(device("SN-DROP"), build_log(), self.cfg))
        self.app.assert_connected()
        self.assertEqual(len(records(kind="binary-log", serial="SN-DROP")), 1)

    def test_log_configurations_arrive_through_pahos_message_callbacks(self):
        from ulogger_cloud import _engines

        # Subscribed (paho's SUBACK seen) when this returns.
        configs = _engines.engine_for(self.cfg).log_configs(device("SN-BRCFG"))
        try:
            self.assertEqual(ctl("push %d SN-BRCFG 3 5 120" % APP), "ok")
            level, flags, timeout, names = configs.next(WAIT)
        finally:
            configs.close()
        self.assertEqual((level, flags, timeout, names), (3, 5, 120, ["net", "ble"]))

    def test_the_engine_subscribes_again_after_a_reconnect_without_session(self):
        from ulogger_cloud import _engines

        configs = _engines.engine_for(self.cfg).log_configs(device("SN-RESUB"))
        try:
            self.app.subacks.get(timeout=WAIT)
            self.assertGreaterEqual(ctl("disconnect"), 1)
            self.app.disconnects.get(timeout=WAIT)
            self.app.assert_connected()
            # paho connects with a clean session: the broker forgot the
            # subscription, and the engine, told by on_connect, makes it
            # again (the application's on_subscribe sees its SUBACK).
            codes = self.app.subacks.get(timeout=WAIT)
            self.assertFalse(any(code.is_failure for code in codes))
            self.assertEqual(ctl("push %d SN-RESUB 1 9 60" % APP), "ok")
            level, flags, timeout, _ = configs.next(WAIT)
        finally:
            configs.close()
        self.assertEqual((level, flags, timeout), (1, 9, 60))

    def test_bridge_session_calls_back_after_the_puback(self):
        session = ulogger_cloud.BridgeSession(self.cfg, store=ulogger_cloud.SessionStore())
        session.start()
        outcomes = queue.Queue()
        session.upload_log(device("SN-SESSION"), build_log(), callback=outcomes.put)
        self.assertIs(outcomes.get(timeout=WAIT), True)
        self.assertEqual(len(records(kind="binary-log", serial="SN-SESSION")), 1)
        tokens = []
        session.ensure_token(device("SN-SESSION"), callback=tokens.append)
        self.assertEqual(len(tokens), 1, "a cached token is called back at once")
        session.upload_log(device("SN-SESSION"), b"\x04broken", callback=outcomes.put)
        self.assertIs(outcomes.get(timeout=WAIT), False)

    def test_blocking_calls_on_pahos_thread_are_refused(self):
        results = queue.Queue()

        def on_message(client, userdata, message):
            results.put(ulogger_cloud.upload_log(device("SN-LOOP"), build_log(), self.cfg))

        topic = "app/%s/poke" % self.app.client_id
        self.app.client.message_callback_add(topic, on_message)
        self.app.client.subscribe(topic, qos=0)
        self.app.client.publish(topic, b"poke", qos=0)
        self.assertIs(results.get(timeout=WAIT), False)


@unittest.skipIf(mqtt is None or PARAMS.get("mosquitto") is None,
                 "paho-mqtt or mosquitto missing (the Rust driver says why)")
class OverMosquitto(unittest.TestCase):
    def setUp(self):
        broker = PARAMS["mosquitto"]
        self.broker = broker
        self.app = App(broker)
        self.cfg = ulogger_cloud.MqttConfig(client=self.app.client, customer_id=CUSTOMER, pacing=False)

    def tearDown(self):
        self.app.close()

    def upload_and_wait(self, store, data_size):
        log = build_log(data=bytes([data_size % 251]) * data_size)
        self.assertTrue(ulogger_cloud.upload_log(device("SN-MOSQ"), log, self.cfg, store))
        # mosquitto acknowledged it; the attached cloud gets it after that.
        record = ctl("mosquitto_wait SN-MOSQ %d" % len(log))
        self.assertIsNotNone(record)
        return record

    def test_registration_upload_and_a_disconnect(self):
        store = ulogger_cloud.SessionStore()
        first = self.upload_and_wait(store, 100)
        self.assertEqual(first["token"], store.get_token("SN-MOSQ", "abcdef0"))

        # mosquitto drops the application's connection when another
        # connects with its client id (MQTT's session takeover).
        thief = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                            client_id=self.app.client_id)
        thief.tls_set(ca_certs=self.broker["ca_file"], certfile=self.broker["cert_file"],
                      keyfile=self.broker["key_file"])
        thief.connect("127.0.0.1", self.broker["port"])
        thief.loop_start()
        self.app.disconnects.get(timeout=WAIT)
        thief.disconnect()
        thief.loop_stop()

        second = self.upload_and_wait(store, 200)
        # One registration: the second upload used the cached token.
        self.assertEqual(second["token"], first["token"])
        uploaded = [r for r in ctl("mosquitto_records")
                    if r.get("kind") == "binary-log" and r.get("serial") == "SN-MOSQ"]
        self.assertEqual(len(uploaded), 2)
