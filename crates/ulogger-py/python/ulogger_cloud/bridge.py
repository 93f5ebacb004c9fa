"""The SDK's callback-driven bridge mode (:class:`BridgeSession`).

Not supported by this package yet: the name exists so that imports keep
working, and constructing one raises
:class:`~ulogger_cloud.errors.BridgeModeError`. The engine's own persistent
connection (leave ``MqttConfig.client`` unset) replaces what bridge mode
was for in most gateways: one long-lived connection, no thread per call.
"""

from .errors import BridgeModeError

__all__ = ["BridgeSession"]


class BridgeSession(object):
    """Placeholder for the SDK's ``BridgeSession``; raises
    :class:`~ulogger_cloud.errors.BridgeModeError`."""

    def __init__(self, cfg, store=None, call_later=None, cancel_timer=None):
        raise BridgeModeError(
            "BridgeSession (bridge mode over your paho client) is not supported by "
            "ulogger-cloud-rs yet; use the engine's own connection (MqttConfig without "
            "client) or ulogger_cloud.Client"
        )
