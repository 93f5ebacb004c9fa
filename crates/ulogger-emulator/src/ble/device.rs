//! A simulated uLogger device's BLE side: the transfer state machine of
//! PROTOCOL §6 as the demo firmware runs it, sans I/O.

use std::time::{Duration, Instant};

use ulogger_wire::{CHUNK_HEADER_LEN, CHUNK_PAYLOAD_LEN};

/// The firmware's timer: starts a log transfer when idle, re-sends the
/// current core-dump chunk.
pub const TICK: Duration = Duration::from_secs(2);

/// How long after the logs' final ack the core-dump transfer starts.
pub const CORE_DUMP_DELAY: Duration = Duration::from_millis(100);

/// A notification the device sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notify {
    /// On `log_data`: `[offset u16][total_len u16][payload]`.
    LogData(Vec<u8>),
    /// On `core_dump_data`, framed alike.
    CoreDumpData(Vec<u8>),
}

impl Notify {
    /// The notification's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Notify::LogData(b) | Notify::CoreDumpData(b) => b,
        }
    }
}

/// What a device erased, and so can never send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Erased {
    /// The logs handed over (no core dump was pending).
    Logs(Vec<u8>),
    /// The logs and the crash region, when the core dump completed.
    LogsAndCoreDump {
        /// The logs handed over before the core dump.
        logs: Vec<u8>,
        /// The core dump.
        core_dump: Vec<u8>,
    },
}

/// Something that happened to a [`SimDevice`], in order, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEvent {
    /// A central connected.
    Connected {
        /// When.
        at: Instant,
    },
    /// The link went down.
    Disconnected {
        /// The device dropped it (a fault switch or a reset), not the
        /// central.
        by_device: bool,
    },
    /// A write to `log_ack`, whatever its value.
    AckReceived {
        /// The bytes written.
        value: Vec<u8>,
        /// When.
        at: Instant,
    },
    /// A chunk was sent, or dropped by [`SimDevice::drop_next_notifications`].
    ChunkSent {
        /// `LogData` or `CoreDumpData`, with the bytes.
        notify: Notify,
        /// Whether it was dropped instead of sent.
        dropped: bool,
        /// When.
        at: Instant,
    },
    /// Data was erased: the final ack of a transfer arrived.
    Erased {
        /// What.
        what: Erased,
        /// When.
        at: Instant,
    },
    /// A write to `log_config`.
    LogConfigWritten {
        /// The bytes written.
        value: Vec<u8>,
    },
    /// A connection attempt was refused by [`SimDevice::fail_next_connects`].
    ConnectRefused,
    /// The device reset.
    Reset {
        /// When.
        at: Instant,
    },
}

/// Which transfer the firmware is in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transfer {
    Idle,
    /// `snapshot` is the log as read at the transfer's start; logs added
    /// meanwhile are not part of it and survive its erase.
    Logs {
        snapshot: Vec<u8>,
        offset: u32,
    },
    /// The logs are done; the core dump starts at `at`. This model ignores
    /// acks and the timer in that gap (the firmware's state there is not
    /// public), so the gap cannot restart the logs.
    CoreDumpDue {
        logs: Vec<u8>,
        at: Instant,
    },
    CoreDump {
        logs: Vec<u8>,
        offset: u32,
    },
}

/// A simulated device's BLE side, exactly PROTOCOL §6's state machine:
///
/// - [`connect`](Self::connect) and [`disconnect`](Self::disconnect) reset
///   to idle at offset 0; nothing resumes across connections.
/// - Every 2 s while connected ([`tick`](Self::tick)): idle with logs, it
///   starts the log transfer by itself (chunk 0, whether or not the
///   central listens); during the core dump it re-sends the current chunk;
///   during the logs it does nothing: it never re-sends a log chunk by
///   itself.
/// - Ack 0 while idle starts the logs, else the core dump, else nothing.
///   Any ack during a transfer moves the offset there and sends that chunk,
///   unchecked. An ack ≥ the total completes the transfer: without a core
///   dump the logs are erased at once; with one, the core dump starts
///   100 ms later and the logs and crash region are erased when it
///   completes.
/// - 16-byte payloads; offsets and total_len are the 32-bit lengths cut to
///   16 bits on the wire, so a buffer over 65,535 bytes never completes.
///
/// Sans I/O: the caller passes the time in, sends what comes out, and calls
/// [`tick`](Self::tick) at [`next_deadline`](Self::next_deadline). Every ack
/// and erase is recorded ([`events`](Self::events)), and fault switches
/// drop notifications, drop the link after N chunks, fail connects, and
/// reset the device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    config: Vec<u8>,
    logs: Vec<u8>,
    core_dump: Option<Vec<u8>>,
    /// Logs erased since the last reset: firmware from agent 1.2.4 keeps
    /// its consume position in RAM, so a reset offers them again.
    consumed: Vec<u8>,
    connected: bool,
    next_tick: Option<Instant>,
    transfer: Transfer,
    rssi: Option<i8>,
    drop_notifications: u32,
    disconnect_after_chunks: Option<u32>,
    failing_connects: u32,
    events: Vec<DeviceEvent>,
}

impl SimDevice {
    /// A device with its `config` value (PROTOCOL §4), its log buffer
    /// (empty: no logs) and maybe a core dump (empty counts as none).
    pub fn new(config: Vec<u8>, logs: Vec<u8>, core_dump: Option<Vec<u8>>) -> Self {
        SimDevice {
            config,
            logs,
            core_dump: core_dump.filter(|c| !c.is_empty()),
            consumed: Vec::new(),
            connected: false,
            next_tick: None,
            transfer: Transfer::Idle,
            rssi: None,
            drop_notifications: 0,
            disconnect_after_chunks: None,
            failing_connects: 0,
            events: Vec::new(),
        }
    }

    /// A central connected: both transfers idle at offset 0, the 2 s timer
    /// starts.
    pub fn connect(&mut self, now: Instant) {
        self.connected = true;
        self.transfer = Transfer::Idle;
        self.next_tick = Some(now + TICK);
        self.events.push(DeviceEvent::Connected { at: now });
    }

    /// The link went down: back to idle; the data stays.
    pub fn disconnect(&mut self) {
        self.drop_link(false);
    }

    /// Whether a central is connected (a fault switch or a reset may end
    /// the link from the device's side).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// A write to `log_ack`. Values shorter than 2 bytes are ignored (an
    /// assumption: the firmware's handling is not public); longer ones are
    /// read by their first two bytes.
    pub fn write_log_ack(&mut self, value: &[u8], now: Instant) -> Vec<Notify> {
        self.events.push(DeviceEvent::AckReceived {
            value: value.to_vec(),
            at: now,
        });
        let (true, Some(&[a0, a1])) = (self.connected, value.first_chunk::<2>()) else {
            return Vec::new();
        };
        let ack = u32::from(u16::from_le_bytes([a0, a1]));
        match &mut self.transfer {
            Transfer::Idle if ack == 0 => self.start_transfer(now),
            Transfer::Idle | Transfer::CoreDumpDue { .. } => Vec::new(),
            Transfer::Logs { snapshot, offset } => {
                if ack >= len32(snapshot) {
                    let logs = std::mem::take(snapshot);
                    self.complete_logs(logs, now);
                    Vec::new()
                } else {
                    *offset = ack;
                    self.send_current(now)
                }
            }
            Transfer::CoreDump { logs, offset } => {
                let total = self.core_dump.as_deref().map_or(0, len32);
                if ack >= total {
                    let logs = std::mem::take(logs);
                    self.complete_core_dump(logs, now);
                    Vec::new()
                } else {
                    *offset = ack;
                    self.send_current(now)
                }
            }
        }
    }

    /// A write to `log_config` (PROTOCOL §7), recorded as is.
    pub fn write_log_config(&mut self, value: &[u8]) {
        self.events.push(DeviceEvent::LogConfigWritten {
            value: value.to_vec(),
        });
    }

    /// The last value written to `log_config`, if any.
    pub fn log_config(&self) -> Option<&[u8]> {
        self.events.iter().rev().find_map(|e| match e {
            DeviceEvent::LogConfigWritten { value } => Some(value.as_slice()),
            _ => None,
        })
    }

    /// Runs the timers due at `now`: the core-dump start 100 ms after the
    /// logs, and the 2 s timer. Ticks missed by a late call count once.
    pub fn tick(&mut self, now: Instant) -> Vec<Notify> {
        if !self.connected {
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Transfer::CoreDumpDue { logs, at } = &mut self.transfer {
            if *at <= now {
                let logs = std::mem::take(logs);
                self.transfer = Transfer::CoreDump { logs, offset: 0 };
                out.extend(self.send_current(now));
            }
        }
        let Some(due) = self.next_tick.filter(|&due| due <= now) else {
            return out;
        };
        let missed = (now - due).as_nanos() / TICK.as_nanos();
        let skip = u32::try_from(missed).unwrap_or(u32::MAX).saturating_add(1);
        self.next_tick = TICK.checked_mul(skip).and_then(|d| due.checked_add(d));
        match self.transfer {
            Transfer::Idle if !self.logs.is_empty() => out.extend(self.start_logs(now)),
            Transfer::CoreDump { .. } => out.extend(self.send_current(now)),
            Transfer::Idle | Transfer::Logs { .. } | Transfer::CoreDumpDue { .. } => {}
        }
        out
    }

    /// When [`tick`](Self::tick) has something to do; `None` when not
    /// connected.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.connected {
            return None;
        }
        match self.transfer {
            Transfer::CoreDumpDue { at, .. } => {
                Some(self.next_tick.map_or(at, |tick| tick.min(at)))
            }
            _ => self.next_tick,
        }
    }

    /// The `config` characteristic's value.
    pub fn read_config(&self) -> Vec<u8> {
        self.config.clone()
    }

    /// The `rssi` characteristic, on firmware that has it.
    pub fn rssi(&self) -> Option<i8> {
        self.rssi
    }

    /// Sets the `rssi` characteristic (`None`: older firmware without it).
    pub fn set_rssi(&mut self, rssi: Option<i8>) {
        self.rssi = rssi;
    }

    /// The logs not yet erased.
    pub fn logs(&self) -> &[u8] {
        &self.logs
    }

    /// The core dump, until it is erased.
    pub fn core_dump(&self) -> Option<&[u8]> {
        self.core_dump.as_deref()
    }

    /// Appends to the log buffer; a transfer under way keeps what it read.
    pub fn add_logs(&mut self, more: &[u8]) {
        self.logs.extend_from_slice(more);
    }

    /// Stores a core dump, as a crash would.
    pub fn set_core_dump(&mut self, core_dump: Vec<u8>) {
        self.core_dump = Some(core_dump).filter(|c| !c.is_empty());
    }

    /// Fault switch: the next `n` chunks are lost instead of sent (the
    /// device's state moves on as if they were sent).
    pub fn drop_next_notifications(&mut self, n: u32) {
        self.drop_notifications = n;
    }

    /// Fault switch: the device drops the link after sending `n` more
    /// chunks ([`is_connected`](Self::is_connected) turns false).
    pub fn disconnect_after_chunks(&mut self, n: u32) {
        self.disconnect_after_chunks = Some(n);
    }

    /// Fault switch: the next `n` connection attempts fail. A transport
    /// asks [`refuse_connect`](Self::refuse_connect) before
    /// [`connect`](Self::connect) and fails the attempt when it says so.
    pub fn fail_next_connects(&mut self, n: u32) {
        self.failing_connects = n;
    }

    /// Whether this connection attempt is to fail (a fault switch); each
    /// `true` uses up one of [`fail_next_connects`](Self::fail_next_connects).
    pub fn refuse_connect(&mut self) -> bool {
        let refuse = self.failing_connects > 0;
        if refuse {
            self.failing_connects -= 1;
            self.events.push(DeviceEvent::ConnectRefused);
        }
        refuse
    }

    /// Fault switch: the device resets. The link drops, and the logs it
    /// handed over since the last reset are offered again, as agents from
    /// 1.2.4 on do (their consume position lives in RAM); its timers start
    /// over with the next connection.
    pub fn reset(&mut self, now: Instant) {
        self.drop_link(true);
        let mut logs = std::mem::take(&mut self.consumed);
        logs.append(&mut self.logs);
        self.logs = logs;
        self.events.push(DeviceEvent::Reset { at: now });
    }

    /// Everything that happened, in order.
    pub fn events(&self) -> &[DeviceEvent] {
        &self.events
    }

    /// Every `log_ack` write: its bytes and when.
    pub fn acks(&self) -> impl Iterator<Item = (&[u8], Instant)> {
        self.events.iter().filter_map(|e| match e {
            DeviceEvent::AckReceived { value, at } => Some((value.as_slice(), *at)),
            _ => None,
        })
    }

    /// Every erase: what and when.
    pub fn erasures(&self) -> impl Iterator<Item = (&Erased, Instant)> {
        self.events.iter().filter_map(|e| match e {
            DeviceEvent::Erased { what, at } => Some((what, *at)),
            _ => None,
        })
    }

    fn drop_link(&mut self, by_device: bool) {
        if self.connected {
            self.events.push(DeviceEvent::Disconnected { by_device });
        }
        self.connected = false;
        self.transfer = Transfer::Idle;
        self.next_tick = None;
    }

    /// Ack 0 while idle.
    fn start_transfer(&mut self, now: Instant) -> Vec<Notify> {
        if !self.logs.is_empty() {
            self.start_logs(now)
        } else if self.core_dump.is_some() {
            self.transfer = Transfer::CoreDump {
                logs: Vec::new(),
                offset: 0,
            };
            self.send_current(now)
        } else {
            // No "empty" answer: the gateway meets silence.
            Vec::new()
        }
    }

    fn start_logs(&mut self, now: Instant) -> Vec<Notify> {
        self.transfer = Transfer::Logs {
            snapshot: self.logs.clone(),
            offset: 0,
        };
        self.send_current(now)
    }

    fn complete_logs(&mut self, logs: Vec<u8>, now: Instant) {
        if self.core_dump.is_some() {
            self.transfer = Transfer::CoreDumpDue {
                logs,
                at: now + CORE_DUMP_DELAY,
            };
        } else {
            self.erase_logs(&logs);
            self.transfer = Transfer::Idle;
            self.events.push(DeviceEvent::Erased {
                what: Erased::Logs(logs),
                at: now,
            });
        }
    }

    fn complete_core_dump(&mut self, logs: Vec<u8>, now: Instant) {
        self.erase_logs(&logs);
        let core_dump = self.core_dump.take().unwrap_or_default();
        self.transfer = Transfer::Idle;
        self.events.push(DeviceEvent::Erased {
            what: Erased::LogsAndCoreDump { logs, core_dump },
            at: now,
        });
    }

    /// Erases the part of the buffer a transfer read; logs added since stay.
    fn erase_logs(&mut self, read: &[u8]) {
        let n = read.len().min(self.logs.len());
        self.consumed.extend(self.logs.drain(..n));
    }

    /// The chunk at the current transfer's offset, through the fault
    /// switches.
    fn send_current(&mut self, now: Instant) -> Vec<Notify> {
        let notify = match &self.transfer {
            Transfer::Logs { snapshot, offset } => frame(snapshot, *offset).map(Notify::LogData),
            Transfer::CoreDump { offset, .. } => self
                .core_dump
                .as_deref()
                .and_then(|dump| frame(dump, *offset))
                .map(Notify::CoreDumpData),
            Transfer::Idle | Transfer::CoreDumpDue { .. } => None,
        };
        // A read past the end fails on the device, which then sends
        // nothing (PROTOCOL §6: a read error drops the transfer silently).
        let Some(notify) = notify else {
            return Vec::new();
        };
        let dropped = self.drop_notifications > 0;
        self.drop_notifications = self.drop_notifications.saturating_sub(1);
        self.events.push(DeviceEvent::ChunkSent {
            notify: notify.clone(),
            dropped,
            at: now,
        });
        if let Some(left) = &mut self.disconnect_after_chunks {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.disconnect_after_chunks = None;
                let out = if dropped { Vec::new() } else { vec![notify] };
                self.drop_link(true);
                return out;
            }
        }
        if dropped {
            Vec::new()
        } else {
            vec![notify]
        }
    }
}

/// The notification for `data` at `offset`, or `None` past its end.
fn frame(data: &[u8], offset: u32) -> Option<Vec<u8>> {
    let start = usize::try_from(offset).ok()?;
    if start >= data.len() {
        return None;
    }
    let end = data.len().min(start + CHUNK_PAYLOAD_LEN);
    let payload = data.get(start..end)?;
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload.len());
    // The firmware's 32-bit lengths, cut to the wire's 16 bits.
    out.extend_from_slice(&low16(offset).to_le_bytes());
    out.extend_from_slice(&low16(len32(data)).to_le_bytes());
    out.extend_from_slice(payload);
    Some(out)
}

fn low16(value: u32) -> u16 {
    u16::try_from(value & 0xffff).unwrap_or_default()
}

fn len32(data: &[u8]) -> u32 {
    u32::try_from(data.len()).unwrap_or(u32::MAX)
}
