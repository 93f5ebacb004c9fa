"""The engine's link over the application's paho-mqtt client (bridge mode).

The native engine calls :meth:`PahoLink.publish`, :meth:`subscribe` and
:meth:`unsubscribe` from a thread of its own (never while waiting), each
with a completion that this adapter finishes from paho's callbacks: the
PUBACK (``on_publish``), SUBACK (``on_subscribe``) and UNSUBACK
(``on_unsubscribe``) of *that* request, matched by its message id. The
engine's replies and configurations arrive through
``message_callback_add`` on the exact topics it subscribes to, and the
connection's ups and downs through ``on_connect`` / ``on_disconnect``.

The application's own callbacks keep working: each of ours wraps the one
the client had and calls it first, with the same arguments. They are wrapped
again at the engine's next request if the application replaces one.
Works with paho-mqtt 1.6 and 2.x, either callback API version.
"""

import logging
import threading
import time

_log = logging.getLogger("ulogger_cloud.bridge")

# paho's MQTT_ERR_SUCCESS and MQTT_ERR_NO_CONN (the same in 1.x and 2.x).
_SUCCESS = 0
_NO_CONN = 4
# An acknowledgement may reach us before paho's publish() returned its
# message id: such early ids are kept this long (mids repeat only after
# 65,535 requests, far longer at the platform's 100 per second).
_EARLY_SECONDS = 30.0

_HOOKS = ("on_connect", "on_disconnect", "on_publish", "on_subscribe", "on_unsubscribe")


def _is_failure(code):
    """A paho result, reason code or granted QoS that means refusal."""
    failure = getattr(code, "is_failure", None)
    if failure is not None:
        return bool(failure)
    try:
        return int(code) >= 0x80
    except (TypeError, ValueError):
        return False


class _Chained(object):
    """One of our callbacks in front of the application's."""

    __slots__ = ("link", "ours", "theirs")

    def __init__(self, link, ours, theirs):
        self.link = link
        self.ours = ours
        self.theirs = theirs

    def __call__(self, *args, **kwargs):
        # The application's first: when ours completes a request, what the
        # application does on the same acknowledgement has been done.
        try:
            if self.theirs is not None:
                return self.theirs(*args, **kwargs)
            return None
        finally:
            try:
                self.ours(*args)
            except Exception:  # noqa: BLE001 - never into paho's loop
                _log.exception("ulogger_cloud's paho callback failed")


class _Pending(object):
    """Requests of one kind waiting for their acknowledgement, by mid."""

    def __init__(self):
        self.lock = threading.Lock()
        self.waiting = {}
        self.early = {}

    def register(self, mid, completion, topic=""):
        """Wait for ``mid``; finish at once if its acknowledgement came
        before."""
        with self.lock:
            early = self.early.pop(mid, None)
            if early is None or time.monotonic() - early[0] > _EARLY_SECONDS:
                self.waiting[mid] = (completion, topic)
                return
        _finish(completion, topic, early[1])

    def acknowledged(self, mid, result):
        with self.lock:
            waiting = self.waiting.pop(mid, None)
            if waiting is None:
                now = time.monotonic()
                self.early[mid] = (now, result)
                if len(self.early) > 256:
                    self.early = {
                        m: e for m, e in self.early.items() if now - e[0] <= _EARLY_SECONDS
                    }
                return
        _finish(waiting[0], waiting[1], result)

    def fail_all(self, kind, reason):
        with self.lock:
            waiting, self.waiting = self.waiting, {}
        for completion, topic in waiting.values():
            completion.failed(kind, reason, topic)


def _finish(completion, topic, result):
    """``result``: None (acknowledged) or (kind, reason)."""
    if result is None:
        completion.done()
    else:
        completion.failed(result[0], result[1], topic)


class PahoLink(object):
    """The engine's link over ``client`` (a paho-mqtt ``Client``)."""

    def __init__(self, client):
        for needed in ("publish", "subscribe", "unsubscribe", "message_callback_add", "is_connected"):
            if not callable(getattr(client, needed, None)):
                raise TypeError(
                    "MqttConfig.client must be a paho-mqtt Client (it has no %s())" % needed
                )
        self.client = client
        self._inbox = None
        self._publishes = _Pending()
        self._subscribes = _Pending()
        self._unsubscribes = _Pending()
        self._filters = {}
        self._filters_lock = threading.Lock()
        self._ours = {
            "on_connect": self._on_connect,
            "on_disconnect": self._on_disconnect,
            "on_publish": self._on_publish,
            "on_subscribe": self._on_subscribe,
            "on_unsubscribe": self._on_unsubscribe,
        }

    # -- called by the engine ------------------------------------------

    def attach(self, inbox):
        """The engine's inbox; reports the client's state at once."""
        self._inbox = inbox
        self._hook()
        if self.client.is_connected():
            inbox.connected(False)
        else:
            inbox.disconnected("the paho client is not connected (yet)")

    def publish(self, topic, payload, completion):
        """QoS 1; ``completion`` finishes on its PUBACK."""
        self._hook()
        info = self.client.publish(topic, payload, qos=1)
        rc = getattr(info, "rc", _SUCCESS)
        # NO_CONN: paho keeps a QoS 1 message and sends it on reconnect.
        if rc not in (_SUCCESS, _NO_CONN):
            completion.failed("connection_lost", "paho refused the publish (rc=%s)" % (rc,))
            return
        self._publishes.register(info.mid, completion)

    def subscribe(self, topic, completion):
        """QoS 1 to the exact ``topic``; ``completion`` finishes on its
        SUBACK (refused for a failure code)."""
        self._hook()
        with self._filters_lock:
            self._filters[topic] = True
        self.client.message_callback_add(topic, self._on_message)
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != _SUCCESS:
            completion.failed("connection_lost", "paho could not subscribe (rc=%s)" % (rc,))
            return
        self._subscribes.register(mid, completion, topic)

    def unsubscribe(self, topic, completion):
        """Gives up ``topic``; ``completion`` finishes on the UNSUBACK (at
        once when disconnected: the broker's session holds nothing then)."""
        self._hook()
        with self._filters_lock:
            self._filters.pop(topic, None)
        try:
            self.client.message_callback_remove(topic)
        except Exception:  # noqa: BLE001 - a wrapper without it
            _log.debug("message_callback_remove(%s) failed", topic, exc_info=True)
        rc, mid = self.client.unsubscribe(topic)
        if rc != _SUCCESS:
            completion.done()
            return
        self._unsubscribes.register(mid, completion)

    def detach(self):
        """Gives the client's callbacks back (ours removed where they are
        still installed) and forgets our message routes."""
        for name in _HOOKS:
            current = getattr(self.client, name, None)
            if isinstance(current, _Chained) and current.link is self:
                setattr(self.client, name, current.theirs)
        with self._filters_lock:
            filters, self._filters = list(self._filters), {}
        for topic in filters:
            try:
                self.client.message_callback_remove(topic)
            except Exception:  # noqa: BLE001
                pass

    # -- paho's callbacks ----------------------------------------------

    def _hook(self):
        for name in _HOOKS:
            current = getattr(self.client, name, None)
            if isinstance(current, _Chained) and current.link is self:
                continue
            setattr(self.client, name, _Chained(self, self._ours[name], current))

    def _on_connect(self, client, userdata, flags, rc, *rest):
        if self._inbox is None:
            return
        if _is_failure(rc) or (isinstance(rc, int) and rc != 0):
            self._inbox.disconnected("the broker refused the paho client's connection (%s)" % (rc,))
            return
        if isinstance(flags, dict):
            present = flags.get("session present", 0)
        else:
            present = getattr(flags, "session_present", False)
        self._inbox.connected(bool(present))

    def _on_disconnect(self, client, userdata, *rest):
        # (rc) in the VERSION1 API, (flags, reason_code, properties) in VERSION2.
        reason = rest[1] if len(rest) >= 2 else (rest[0] if rest else "?")
        # paho never re-sends a (un)subscribe after a reconnect; publishes
        # it keeps and re-sends, so those keep waiting for their PUBACK.
        self._subscribes.fail_all("connection_lost", "the paho client disconnected (%s)" % (reason,))
        self._unsubscribes.fail_all("connection_lost", "the paho client disconnected (%s)" % (reason,))
        if self._inbox is not None:
            self._inbox.disconnected("the paho client disconnected (%s)" % (reason,))

    def _on_publish(self, client, userdata, mid, *rest):
        result = None
        if rest and _is_failure(rest[0]):
            result = ("connection_lost", "the broker refused the publish (%s)" % (rest[0],))
        self._publishes.acknowledged(mid, result)

    def _on_subscribe(self, client, userdata, mid, codes, *rest):
        codes = list(codes) if isinstance(codes, (list, tuple)) else [codes]
        result = None
        if any(_is_failure(code) for code in codes):
            result = ("refused", "SUBACK failure code %s" % (codes,))
        self._subscribes.acknowledged(mid, result)

    def _on_unsubscribe(self, client, userdata, mid, *rest):
        self._unsubscribes.acknowledged(mid, None)

    def _on_message(self, client, userdata, message):
        inbox = self._inbox
        if inbox is None:
            return
        inbox.deliver(message.topic, bytes(message.payload), bool(message.retain), bool(message.dup))
