"""The asyncio flavour: :class:`AsyncClient`, awaitable methods for
event-loop gateways (bleak's, for instance).

Each call runs the engine's blocking call in the loop's default executor
(a thread, which waits with the GIL released), so the event loop never
blocks on the network.
"""

import asyncio
import functools

from .client import Client

__all__ = ["AsyncClient"]


class AsyncClient(object):
    """:class:`~ulogger_cloud.Client` with awaitable methods; the same
    arguments."""

    def __init__(self, *args, **kwargs):
        self._client = Client(*args, **kwargs)

    @property
    def client_id(self):
        """The connection's MQTT client id."""
        return self._client.client_id

    async def _call(self, method, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(method, *args))

    async def connected(self):
        """See :meth:`Client.connected`."""
        return await self._call(self._client.connected)

    async def session_token(self, device):
        """See :meth:`Client.session_token`."""
        return await self._call(self._client.session_token, device)

    async def upload_log(self, device, log):
        """See :meth:`Client.upload_log`."""
        return await self._call(self._client.upload_log, device, bytes(log))

    async def publish_core_dump(self, dump):
        """See :meth:`Client.publish_core_dump`."""
        return await self._call(self._client.publish_core_dump, bytes(dump))

    async def publish_metrics(self, serial, app_id, metrics):
        """See :meth:`Client.publish_metrics`."""
        return await self._call(self._client.publish_metrics, serial, app_id, metrics)

    async def publish_events(self, serial, app_id, events):
        """See :meth:`Client.publish_events`."""
        return await self._call(self._client.publish_events, serial, app_id, events)

    async def publish_heartbeat(self, serial, app_id, timestamp=None):
        """See :meth:`Client.publish_heartbeat`."""
        return await self._call(self._client.publish_heartbeat, serial, app_id, timestamp)

    async def upload_elf(self, elf, application_id, device_type, version, git_hash, **options):
        """See :meth:`Client.upload_elf`."""
        return await self._call(
            functools.partial(self._client.upload_elf, **options),
            bytes(elf), application_id, device_type, version, git_hash,
        )

    async def enqueue_log(self, device, log):
        """See :meth:`Client.enqueue_log`."""
        return await self._call(self._client.enqueue_log, device, bytes(log))

    async def delivered(self, record_id):
        """See :meth:`Client.delivered`."""
        return await self._call(self._client.delivered, record_id)

    async def outbox_status(self):
        """See :meth:`Client.outbox_status`."""
        return await self._call(self._client.outbox_status)

    async def wait_for_log_config(self, device, timeout=30.0):
        """See :meth:`Client.wait_for_log_config`."""
        return await self._call(self._client.wait_for_log_config, device, timeout)

    async def close(self):
        """See :meth:`Client.close`."""
        return await self._call(self._client.close)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
        return False
