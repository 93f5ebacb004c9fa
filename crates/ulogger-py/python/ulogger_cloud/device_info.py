"""Device identification data shared between BLE and cloud layers.

The SDK's ``DeviceInfo``, field for field: what a device's config
characteristic carries (application id, serial, type, firmware version and
git hash).
"""

__all__ = ["DeviceInfo"]


class DeviceInfo(object):
    """A device's identity.

    Args:
        application_id: The application id (an int).
        device_serial: The device serial; it goes into topics, so ``+``,
            ``#``, ``/`` and NUL are refused when it is used.
        device_type: The hardware or board type.
        git_version: The firmware version tag, e.g. ``"v1.0.0"``.
        git_hash: The firmware git hash; a new hash means a new boot
            registration.
    """

    __slots__ = (
        "application_id",
        "device_serial",
        "device_type",
        "git_version",
        "git_hash",
    )

    def __init__(self, application_id, device_serial, device_type, git_version, git_hash):
        self.application_id = application_id
        self.device_serial = device_serial
        self.device_type = device_type
        self.git_version = git_version
        self.git_hash = git_hash

    def _key(self):
        return (
            self.application_id,
            self.device_serial,
            self.device_type,
            self.git_version,
            self.git_hash,
        )

    def __repr__(self):
        return (
            "DeviceInfo(application_id=%r, device_serial=%r, device_type=%r, "
            "git_version=%r, git_hash=%r)" % self._key()
        )

    def __str__(self):
        return (
            "application_id=%s  device_serial=%r  device_type=%r  "
            "git_version=%r  git_hash=%r" % self._key()
        )

    def __eq__(self, other):
        if not isinstance(other, DeviceInfo):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self):
        return hash(self._key())
