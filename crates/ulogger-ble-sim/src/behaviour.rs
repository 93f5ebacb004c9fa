//! What the D-Bus layer asks of a simulated device, and the uLogger GATT
//! table it serves (PROTOCOL §6).

use std::time::Instant;

/// The uLogger GATT service's UUID (PROTOCOL §6).
pub const SERVICE_UUID: &str = "691fe31f-1a06-4c7c-88c7-0993ec53f40c";

/// A characteristic of the uLogger service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Characteristic {
    /// Log chunks (notify).
    LogData,
    /// The 2-byte acknowledgement for both transfers (write, write without response).
    LogAck,
    /// Core-dump chunks (notify).
    CoreDumpData,
    /// Device identification, PROTOCOL §4 (read, and notify that is never used).
    Config,
    /// The 9-byte log configuration, PROTOCOL §7 (write, write without response).
    LogConfig,
    /// The link's RSSI as the device measures it (read; newer firmware only).
    Rssi,
}

impl Characteristic {
    /// Every characteristic, in the order of the device's GATT table.
    pub const ALL: [Characteristic; 6] = [
        Characteristic::LogData,
        Characteristic::LogAck,
        Characteristic::CoreDumpData,
        Characteristic::Config,
        Characteristic::LogConfig,
        Characteristic::Rssi,
    ];

    /// The characteristic's UUID (PROTOCOL §6).
    pub fn uuid(self) -> &'static str {
        match self {
            Characteristic::LogData => "1828e769-1420-4363-ab28-04037d9ff755",
            Characteristic::LogAck => "3828e769-1420-4363-ab28-04037d9ff755",
            Characteristic::CoreDumpData => "15b0fba5-59f9-4f25-bbd4-dd70ba04c6da",
            Characteristic::Config => "3ad8119d-8f9d-4297-9302-aa56f2283a72",
            Characteristic::LogConfig => "5828e769-1420-4363-ab28-04037d9ff755",
            Characteristic::Rssi => "7828e769-1420-4363-ab28-04037d9ff755",
        }
    }

    /// The characteristic with this UUID (any case), if it is one of ours.
    pub fn from_uuid(uuid: &str) -> Option<Characteristic> {
        Self::ALL
            .into_iter()
            .find(|c| c.uuid().eq_ignore_ascii_case(uuid))
    }

    /// Its properties as BlueZ spells them in `GattCharacteristic1.Flags`.
    pub fn flags(self) -> &'static [&'static str] {
        match self {
            Characteristic::LogData | Characteristic::CoreDumpData => &["notify"],
            Characteristic::LogAck | Characteristic::LogConfig => {
                &["write-without-response", "write"]
            }
            Characteristic::Config => &["read", "notify"],
            Characteristic::Rssi => &["read"],
        }
    }

    pub(crate) fn can_read(self) -> bool {
        self.flags().contains(&"read")
    }

    pub(crate) fn can_notify(self) -> bool {
        self.flags().contains(&"notify")
    }

    pub(crate) fn can_write_request(self) -> bool {
        self.flags().contains(&"write")
    }

    pub(crate) fn can_write_command(self) -> bool {
        self.flags().contains(&"write-without-response")
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Characteristic::LogData => 0,
            Characteristic::LogAck => 1,
            Characteristic::CoreDumpData => 2,
            Characteristic::Config => 3,
            Characteristic::LogConfig => 4,
            Characteristic::Rssi => 5,
        }
    }
}

/// A notification the device sends: on which characteristic, which bytes.
pub type Notification = (Characteristic, Vec<u8>);

/// Why a device refused a read (an ATT error on the air, which BlueZ hands
/// to its client as `org.bluez.Error.Failed` with the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The device does not serve this characteristic (older firmware
    /// without `rssi`, say).
    #[error("Attribute Not Found")]
    NotFound,
    /// Any other ATT error, with the text BlueZ would put in the message.
    #[error("{0}")]
    Failed(String),
}

/// The device end behind a simulated BlueZ device: the firmware's state
/// machine, called by the D-Bus layer as a central's actions reach the
/// device.
///
/// Calls come one at a time (the fake holds the device's lock), with the
/// time they happen, so an implementation can be a plain sans-I/O state
/// machine. Notifications it returns are delivered in order, and only
/// while connected and while a client has notifications enabled on that
/// characteristic: as on the air, a notification sent before the central
/// subscribes is lost.
pub trait DeviceBehaviour: Send {
    /// A central connected.
    fn connect(&mut self, now: Instant);
    /// The link went down (either side, or lost).
    fn disconnect(&mut self);
    /// A central reads a readable characteristic (`Config` or `Rssi`).
    ///
    /// # Errors
    ///
    /// The ATT error the device answers with.
    fn read(&mut self, ch: Characteristic) -> Result<Vec<u8>, ReadError>;
    /// A central writes a writable characteristic (`LogAck` or
    /// `LogConfig`), with or without response; returns the notifications
    /// the write makes the device send.
    fn write(&mut self, ch: Characteristic, value: &[u8], now: Instant) -> Vec<Notification>;
    /// Time passed: called at (or soon after) [`next_deadline`](Self::next_deadline).
    fn tick(&mut self, now: Instant) -> Vec<Notification>;
    /// When the device next wants [`tick`](Self::tick), if ever.
    fn next_deadline(&self) -> Option<Instant>;
}
