//! The gateway's pull ([`BlePull`]) against the simulated device
//! ([`SimDevice`]): two readings of PROTOCOL §6 talking through a channel
//! that loses, duplicates and delays notifications and acks, with random
//! timeouts, random durability delays, disconnects and resets. Whatever
//! happens, every buffer delivered is byte-exact, the device erases
//! nothing its gateway's caller has not made durable first, and after the
//! faults one clean pull leaves the device empty with every buffer stored
//! (duplicates allowed, counted). Arbitrary notifications never make the
//! pull panic or write an ack that would complete a transfer on its own.
//!
//! The channel keeps each direction in order, as a BLE link does (ATT
//! over L2CAP is ordered): an ack duplicated with a delay could reach the
//! device during the core dump, where an ack at least its length erases
//! it, and no gateway could prevent that. Acks are therefore duplicated
//! only back to back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ulogger_cloud::wire::{
    BlePull, BufferKind, Characteristic, Delivery, PullAction, PullConfig, TransferId,
};
use ulogger_emulator::ble::{Erased, Notify, SimDevice};

/// SplitMix64: the channel's and the caller's dice, from a proptest seed,
/// so a failing case shrinks to its seed and parameters.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn percent(&mut self, p: u8) -> bool {
        self.next() % 100 < u64::from(p)
    }

    fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.next() % (max + 1))
    }
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    lose_notify: u8,
    dup_notify: u8,
    lose_ack: u8,
    dup_ack: u8,
    max_delay_ms: u64,
    /// Chance per round that the link drops (or the device resets) at a
    /// random moment.
    disconnect: u8,
    reset: u8,
}

impl Faults {
    const NONE: Faults = Faults {
        lose_notify: 0,
        dup_notify: 0,
        lose_ack: 0,
        dup_ack: 0,
        max_delay_ms: 0,
        disconnect: 0,
        reset: 0,
    };
}

/// One direction of the link: in order, lossy, duplicating, delaying.
struct Pipe<T> {
    queue: VecDeque<(Instant, T)>,
}

impl<T: Clone> Pipe<T> {
    fn new() -> Self {
        Pipe {
            queue: VecDeque::new(),
        }
    }

    fn send(&mut self, item: T, now: Instant, dice: &mut Dice, lose: u8, dup: u8, delay: u64) {
        if dice.percent(lose) {
            return;
        }
        let last = self.queue.back().map_or(now, |(at, _)| *at);
        let at = (now + dice.millis(delay)).max(last);
        if dice.percent(dup) {
            self.queue.push_back((at, item.clone()));
        }
        self.queue.push_back((at, item));
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }
}

/// What the gateway's caller stored, and the checks on the device.
#[derive(Default)]
struct Stored {
    logs: Vec<(Vec<u8>, Instant)>,
    core_dumps: Vec<(Vec<u8>, Instant)>,
    gave_up: u32,
    erasures_checked: usize,
}

impl Stored {
    fn holds(list: &[(Vec<u8>, Instant)], data: &[u8], by: Instant) -> bool {
        list.iter().any(|(d, at)| d == data && *at <= by)
    }

    /// Every erase the device recorded since the last call was of buffers
    /// already durable.
    fn check_erasures(&mut self, device: &SimDevice) -> Result<(), TestCaseError> {
        let erasures: Vec<_> = device.erasures().collect();
        for (what, at) in &erasures[self.erasures_checked..] {
            match what {
                Erased::Logs(logs) => {
                    prop_assert!(
                        Self::holds(&self.logs, logs, *at),
                        "logs erased before durable"
                    );
                }
                Erased::LogsAndCoreDump { logs, core_dump } => {
                    prop_assert!(
                        logs.is_empty() || Self::holds(&self.logs, logs, *at),
                        "logs erased before durable"
                    );
                    prop_assert!(
                        Self::holds(&self.core_dumps, core_dump, *at),
                        "core dump erased before durable"
                    );
                }
            }
        }
        self.erasures_checked = erasures.len();
        Ok(())
    }
}

struct Originals {
    logs: Vec<u8>,
    core_dump: Option<Vec<u8>>,
}

/// One connection: a pull until it is over, or the link drops. Returns
/// the time at its end.
#[allow(clippy::too_many_arguments)]
fn one_pull(
    device: &mut SimDevice,
    config: PullConfig,
    faults: Faults,
    max_durable_ms: u64,
    originals: &Originals,
    stored: &mut Stored,
    dice: &mut Dice,
    mut now: Instant,
) -> Result<Instant, TestCaseError> {
    device.connect(now);
    let mut pull = BlePull::new(config, now);
    let mut to_gateway: Pipe<Notify> = Pipe::new();
    let mut to_device: Pipe<[u8; 2]> = Pipe::new();
    // The caller's storage: (when it is durable, the buffer).
    let mut storing: Option<(Instant, Delivery)> = None;
    let mut link_drop = if dice.percent(faults.disconnect) {
        Some((now + dice.millis(8_000), dice.percent(faults.reset)))
    } else {
        None
    };
    let round_start = now;

    for _ in 0..200_000 {
        // The device's own disconnects (fault switches) end the link too.
        let linked = device.is_connected();
        let times = [
            pull.deadline().filter(|_| linked),
            device.next_deadline(),
            to_gateway.next_at().filter(|_| linked),
            to_device.next_at().filter(|_| linked),
            storing.as_ref().map(|(at, _)| *at),
            link_drop.map(|(at, _)| at),
        ];
        let Some(next) = times.into_iter().flatten().min() else {
            return Ok(now);
        };
        now = now.max(next);
        prop_assert!(
            now - round_start < Duration::from_secs(3_600),
            "a pull never ends"
        );

        let mut actions = Vec::new();
        if let Some((_, reset)) = link_drop.filter(|(at, _)| *at <= now) {
            if reset {
                device.reset(now);
            } else {
                device.disconnect();
            }
            link_drop = None;
        }
        if let Some((at, _)) = &storing {
            if *at <= now {
                let (_, delivery) = storing.take().unwrap();
                match delivery.kind {
                    BufferKind::Log => stored.logs.push((delivery.data.clone(), now)),
                    BufferKind::CoreDump => stored.core_dumps.push((delivery.data.clone(), now)),
                }
                // The caller stores even after the link dropped; only the
                // final ack needs the pull.
                let id: TransferId = delivery.id;
                let answer = if dice.percent(20) {
                    pull.rejected_durably(id, now)
                } else {
                    pull.durable(id, now)
                };
                if let Ok(action) = answer {
                    actions.push(action);
                }
            }
        }
        if device.is_connected() {
            for notify in device.tick(now) {
                to_gateway.send(
                    notify,
                    now,
                    dice,
                    faults.lose_notify,
                    faults.dup_notify,
                    faults.max_delay_ms,
                );
            }
            while to_gateway.next_at().is_some_and(|at| at <= now) {
                let (_, notify) = to_gateway.queue.pop_front().unwrap();
                let from = match notify {
                    Notify::LogData(_) => Characteristic::LogData,
                    Notify::CoreDumpData(_) => Characteristic::CoreDumpData,
                };
                actions.push(pull.on_notification(from, notify.bytes(), now));
            }
            while to_device.next_at().is_some_and(|at| at <= now) {
                let (_, ack) = to_device.queue.pop_front().unwrap();
                for notify in device.write_log_ack(&ack, now) {
                    to_gateway.send(
                        notify,
                        now,
                        dice,
                        faults.lose_notify,
                        faults.dup_notify,
                        faults.max_delay_ms,
                    );
                }
            }
            if pull.deadline().is_some_and(|at| at <= now) {
                actions.push(pull.poll(now));
            }
        }
        stored.check_erasures(device)?;

        for action in actions {
            match action {
                PullAction::WriteAck(ack) => {
                    // Back-to-back duplicates only: see the module comment.
                    to_device.send(
                        ack,
                        now,
                        dice,
                        faults.lose_ack,
                        faults.dup_ack,
                        faults.max_delay_ms,
                    );
                }
                PullAction::Deliver(delivery) => {
                    let expected = match delivery.kind {
                        BufferKind::Log => Some(&originals.logs),
                        BufferKind::CoreDump => originals.core_dump.as_ref(),
                    };
                    prop_assert_eq!(Some(&delivery.data), expected, "delivered bytes differ");
                    prop_assert!(storing.is_none(), "two buffers at once");
                    storing = Some((now + dice.millis(max_durable_ms), delivery));
                }
                PullAction::GiveUp(_) => stored.gave_up += 1,
                PullAction::Dropped(reason) => {
                    prop_assert!(!reason.is_hostile(), "{reason}");
                }
                PullAction::Finished(_) | PullAction::Nothing => {}
                _ => {}
            }
        }
        if pull.is_over() || !device.is_connected() {
            // The caller disconnects after its last writes (a final ack
            // among them) went out; the channel may still lose them.
            while let Some((at, ack)) = to_device.queue.pop_front() {
                now = now.max(at);
                let _ = device.write_log_ack(&ack, now);
            }
            // The link goes; whatever is being stored still becomes
            // durable, without an ack.
            device.disconnect();
            if let Some((at, delivery)) = storing.take() {
                now = now.max(at);
                match delivery.kind {
                    BufferKind::Log => stored.logs.push((delivery.data, now)),
                    BufferKind::CoreDump => stored.core_dumps.push((delivery.data, now)),
                }
            }
            stored.check_erasures(device)?;
            return Ok(now);
        }
    }
    Err(TestCaseError::fail("too many steps in one pull"))
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        0u8..40,
        0u8..30,
        0u8..40,
        0u8..30,
        prop_oneof![Just(0u64), 1u64..80],
        0u8..60,
        0u8..50,
    )
        .prop_map(
            |(lose_notify, dup_notify, lose_ack, dup_ack, max_delay_ms, disconnect, reset)| {
                Faults {
                    lose_notify,
                    dup_notify,
                    lose_ack,
                    dup_ack,
                    max_delay_ms,
                    disconnect,
                    reset,
                }
            },
        )
}

fn pull_config() -> impl Strategy<Value = PullConfig> {
    (100u64..2_000, 0u32..6, 200u64..4_000).prop_map(|(stall, reacks, first)| {
        PullConfig::new()
            .stall_timeout(Duration::from_millis(stall))
            .max_reacks(reacks)
            .first_chunk_timeout(Duration::from_millis(first))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn lossy_pulls_lose_nothing_and_erase_only_what_is_durable(
        logs in prop::collection::vec(any::<u8>(), 0..1_200),
        core_dump in prop::option::of(prop::collection::vec(any::<u8>(), 1..700)),
        faults in faults(),
        config in pull_config(),
        max_durable_ms in prop_oneof![Just(0u64), 1u64..5_000],
        disconnect_after in prop::option::of(1u32..120),
        lossy_rounds in 1usize..6,
        seed in any::<u64>(),
    ) {
        let originals = Originals { logs: logs.clone(), core_dump: core_dump.clone() };
        let mut device = SimDevice::new(b"\x07\0\0\0SN1\0T\0V\0H\0".to_vec(), logs.clone(), core_dump.clone());
        let mut stored = Stored::default();
        let mut dice = Dice(seed);
        let mut now = Instant::now();
        for round in 0..lossy_rounds {
            if round == 0 {
                if let Some(n) = disconnect_after {
                    device.disconnect_after_chunks(n);
                }
            }
            now = one_pull(&mut device, config, faults, max_durable_ms, &originals, &mut stored, &mut dice, now)?;
            now += Duration::from_secs(1);
        }
        // The faults are over: one clean pull takes whatever is left.
        device.disconnect_after_chunks(u32::MAX);
        now = one_pull(&mut device, PullConfig::new(), Faults::NONE, max_durable_ms, &originals, &mut stored, &mut dice, now)?;
        prop_assert!(device.logs().is_empty(), "logs left on the device");
        prop_assert!(device.core_dump().is_none(), "core dump left on the device");
        let _ = now;

        // Nothing lost: every buffer the device had is stored.
        if !logs.is_empty() {
            prop_assert!(stored.logs.iter().any(|(d, _)| *d == logs));
        }
        if let Some(dump) = &core_dump {
            prop_assert!(stored.core_dumps.iter().any(|(d, _)| d == dump));
        }
        // Duplicates are expected (a link lost before a final ack, a
        // reset), bounded by the pulls made.
        let duplicates = stored.logs.len().saturating_sub(1) + stored.core_dumps.len().saturating_sub(1);
        prop_assert!(duplicates <= 2 * (lossy_rounds + 1), "{duplicates} duplicates");
    }

    #[test]
    fn arbitrary_notifications_never_panic_nor_complete_a_transfer(
        steps in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..28), 0u64..1_500, 0u8..8),
            0..200,
        ),
        tail in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut now = Instant::now();
        let mut pull = BlePull::new(PullConfig::new().max_dropped(50), now);
        let mut waiting: Option<TransferId> = None;
        for (on_core, mut bytes, wait, what) in steps {
            now += Duration::from_millis(wait);
            // Steer some notifications into a valid-looking prefix, so
            // transfers get under way and not only the runts are seen.
            if what < 3 && bytes.len() >= 4 {
                bytes[2] = bytes[2].max(1);
                bytes[3] = 0;
                bytes[1] = 0;
                bytes[0] %= bytes[2];
            }
            let from = if on_core { Characteristic::CoreDumpData } else { Characteristic::LogData };
            let action = match what {
                6 => pull.poll(now),
                7 => match waiting.take() {
                    Some(id) => pull.durable(id, now).unwrap_or(PullAction::Nothing),
                    None => PullAction::Nothing,
                },
                _ => pull.on_notification(from, &bytes, now),
            };
            match action {
                PullAction::WriteAck(ack) if what < 6 => {
                    // A chunk's ack: the next offset, below its total.
                    let total = u16::from_le_bytes([bytes[2], bytes[3]]);
                    prop_assert!(u16::from_le_bytes(ack) < total);
                }
                PullAction::Deliver(delivery) => {
                    prop_assert!(!delivery.data.is_empty() && delivery.data.len() <= usize::from(u16::MAX));
                    waiting = Some(delivery.id);
                }
                _ => {}
            }
        }
        let _ = pull.on_notification(Characteristic::LogData, &tail, now);
        let _ = pull.deadline();
        let _ = pull.summary();
    }
}

/// The scenarios of issue 19 one by one, on a clean channel with the
/// device's own fault switches.
mod scenarios {
    use super::*;

    const CONFIG: &[u8] = b"\x07\0\0\0SN1\0T\0V\0H\0";

    fn pull_once(device: &mut SimDevice, originals: &Originals, stored: &mut Stored) {
        let mut dice = Dice(1);
        one_pull(
            device,
            PullConfig::new(),
            Faults::NONE,
            50,
            originals,
            stored,
            &mut dice,
            Instant::now(),
        )
        .unwrap();
    }

    fn ack_values(device: &SimDevice) -> Vec<u16> {
        device
            .acks()
            .map(|(value, _)| u16::from_le_bytes([value[0], value[1]]))
            .collect()
    }

    #[test]
    fn a_lost_log_chunk_is_recovered_by_re_sending_the_ack() {
        let logs: Vec<u8> = (0..50).collect();
        let originals = Originals {
            logs: logs.clone(),
            core_dump: None,
        };
        let mut device = SimDevice::new(CONFIG.to_vec(), logs.clone(), None);
        // The answer to ack 0 is lost; the device never re-sends a log
        // chunk by itself, so only the re-sent ack 0 recovers it.
        device.drop_next_notifications(1);
        let mut stored = Stored::default();
        pull_once(&mut device, &originals, &mut stored);
        assert_eq!(stored.logs.len(), 1);
        assert_eq!(ack_values(&device), [0, 0, 16, 32, 48, 50]);
        assert!(device.logs().is_empty());
    }

    #[test]
    fn a_link_lost_mid_transfer_leaves_the_logs_for_the_next_pull() {
        let logs: Vec<u8> = (0..100).collect();
        let originals = Originals {
            logs: logs.clone(),
            core_dump: None,
        };
        let mut device = SimDevice::new(CONFIG.to_vec(), logs.clone(), None);
        device.disconnect_after_chunks(3);
        let mut stored = Stored::default();
        pull_once(&mut device, &originals, &mut stored);
        assert!(stored.logs.is_empty());
        assert_eq!(device.erasures().count(), 0);
        assert_eq!(device.logs(), logs);
        pull_once(&mut device, &originals, &mut stored);
        assert_eq!(stored.logs.len(), 1);
        assert!(device.logs().is_empty());
    }

    #[test]
    fn logs_and_core_dump_are_erased_together_after_both_are_durable() {
        let logs: Vec<u8> = (0..20).collect();
        let dump: Vec<u8> = (0..40).rev().collect();
        let originals = Originals {
            logs: logs.clone(),
            core_dump: Some(dump.clone()),
        };
        let mut device = SimDevice::new(CONFIG.to_vec(), logs.clone(), Some(dump.clone()));
        let mut stored = Stored::default();
        pull_once(&mut device, &originals, &mut stored);
        assert_eq!((stored.logs.len(), stored.core_dumps.len()), (1, 1));
        let erasures: Vec<_> = device.erasures().collect();
        assert_eq!(
            erasures
                .iter()
                .map(|(what, _)| (*what).clone())
                .collect::<Vec<_>>(),
            [Erased::LogsAndCoreDump {
                logs,
                core_dump: dump
            }]
        );
        assert!(erasures[0].1 >= stored.core_dumps[0].1);
    }

    #[test]
    fn a_silent_device_ends_the_pull_with_nothing() {
        let originals = Originals {
            logs: vec![],
            core_dump: None,
        };
        let mut device = SimDevice::new(CONFIG.to_vec(), vec![], None);
        let mut stored = Stored::default();
        pull_once(&mut device, &originals, &mut stored);
        assert!(stored.logs.is_empty() && stored.core_dumps.is_empty());
        // Ack 0, then ack 0 re-sent each second until the 3 s deadline.
        assert_eq!(ack_values(&device), [0, 0, 0]);
    }
}
