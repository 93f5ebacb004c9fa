//! The gateway's pull, one behaviour per test: the happy paths, the timers,
//! and each hostile input with its reason.

use std::time::{Duration, Instant};

use super::*;

const LOG: Characteristic = Characteristic::LogData;
const CORE: Characteristic = Characteristic::CoreDumpData;

fn chunk(offset: u16, total: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend(total.to_le_bytes());
    p.extend(payload);
    p
}

fn ack(value: u16) -> PullAction {
    PullAction::WriteAck(value.to_le_bytes())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A pull that has written its ack 0 at `t0`.
fn started(config: PullConfig) -> (BlePull, Instant) {
    let t0 = Instant::now();
    let mut pull = BlePull::new(config, t0);
    assert_eq!(pull.deadline(), Some(t0));
    assert_eq!(pull.poll(t0), ack(0));
    (pull, t0)
}

fn deliver(action: PullAction) -> Delivery {
    match action {
        PullAction::Deliver(d) => d,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

#[test]
fn a_log_then_a_core_dump_each_acked_only_when_durable() {
    let (mut pull, t0) = started(PullConfig::new());
    let log: Vec<u8> = (0..40).collect();
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 40, &log[..16]), t0 + ms(5)),
        ack(16)
    );
    assert_eq!(
        pull.on_notification(LOG, &chunk(16, 40, &log[16..32]), t0 + ms(6)),
        ack(32)
    );
    let d = deliver(pull.on_notification(LOG, &chunk(32, 40, &log[32..]), t0 + ms(7)));
    assert_eq!(
        (d.kind, d.data.as_slice()),
        (BufferKind::Log, log.as_slice())
    );
    assert_eq!(d.header_arrived_at, t0 + ms(5));
    // No ack and no timer until the caller says durable, however long.
    assert_eq!(pull.deadline(), None);
    assert_eq!(pull.poll(t0 + Duration::from_secs(60)), PullAction::Nothing);
    assert_eq!(pull.awaiting_durable(), Some(d.id));
    let t1 = t0 + Duration::from_secs(61);
    assert_eq!(pull.durable(d.id, t1), Ok(ack(40)));
    assert_eq!(pull.durable(d.id, t1), Err(NotAwaitingDurable { id: d.id }));

    // The core dump follows on its own characteristic.
    let dump = deliver(pull.on_notification(CORE, &chunk(0, 3, b"cC!"), t1 + ms(100)));
    assert_eq!(dump.kind, BufferKind::CoreDump);
    assert_ne!(dump.id, d.id);
    assert!(!pull.is_over());
    assert_eq!(pull.rejected_durably(dump.id, t1 + ms(101)), Ok(ack(3)));
    assert!(pull.is_over());
    let PullAction::Finished(summary) = pull.poll(t1 + ms(102)) else {
        panic!("not finished")
    };
    assert_eq!(
        (summary.logs, summary.core_dumps, summary.rejected),
        (1, 1, 1)
    );
    assert_eq!(summary.bytes, 43);
}

#[test]
fn silence_after_the_logs_ends_the_pull_without_writing() {
    // The wait for a core dump is its own: not the first chunk's.
    let (mut pull, t0) = started(
        PullConfig::new()
            .first_chunk_timeout(ms(3000))
            .core_dump_timeout(ms(700)),
    );
    let d = deliver(pull.on_notification(LOG, &chunk(0, 2, b"ab"), t0));
    assert_eq!(pull.durable(d.id, t0 + ms(10)), Ok(ack(2)));
    // Nothing is ever written while a core dump may be under way: an ack
    // reaching the device then could complete (erase) the core dump.
    assert_eq!(pull.deadline(), Some(t0 + ms(710)));
    assert_eq!(pull.poll(t0 + ms(709)), PullAction::Nothing);
    assert!(matches!(pull.poll(t0 + ms(710)), PullAction::Finished(s) if s.logs == 1));
    // A late log chunk is not taken once the logs are done.
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 2, b"ab"), t0 + ms(711)),
        PullAction::Dropped(DropReason::NotExpected)
    );
}

#[test]
fn a_log_chunk_instead_of_the_core_dump_is_dropped() {
    let (mut pull, t0) = started(PullConfig::new());
    let d = deliver(pull.on_notification(LOG, &chunk(0, 2, b"ab"), t0));
    pull.durable(d.id, t0).unwrap();
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 2, b"ab"), t0),
        PullAction::Dropped(DropReason::WrongCharacteristic {
            expected: CORE,
            got: LOG
        })
    );
}

#[test]
fn silence_after_ack_0_means_nothing_to_send() {
    let config = PullConfig::new()
        .stall_timeout(ms(1000))
        .first_chunk_timeout(ms(2500));
    let (mut pull, t0) = started(config);
    assert_eq!(pull.deadline(), Some(t0 + ms(1000)));
    assert_eq!(pull.poll(t0 + ms(999)), PullAction::Nothing);
    // Ack 0 is re-sent: it can only (re)start a transfer.
    assert_eq!(pull.poll(t0 + ms(1000)), ack(0));
    assert_eq!(pull.poll(t0 + ms(2000)), ack(0));
    assert_eq!(pull.deadline(), Some(t0 + ms(2500)));
    let PullAction::Finished(summary) = pull.poll(t0 + ms(2500)) else {
        panic!("not finished")
    };
    assert_eq!((summary.logs, summary.reacks), (0, 2));
    assert!(pull.is_over());
    assert_eq!(pull.deadline(), None);
}

#[test]
fn only_a_core_dump() {
    let (mut pull, t0) = started(PullConfig::new());
    let d = deliver(pull.on_notification(CORE, &chunk(0, 1, b"c"), t0));
    assert_eq!(d.kind, BufferKind::CoreDump);
    assert_eq!(pull.durable(d.id, t0), Ok(ack(1)));
    assert!(pull.is_over());
}

#[test]
fn a_log_the_device_started_before_ack_0_is_taken() {
    let t0 = Instant::now();
    let mut pull = BlePull::new(PullConfig::new(), t0);
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 20, &[1; 16]), t0),
        ack(16)
    );
    // Ack 0 is no longer due.
    assert_eq!(pull.poll(t0), PullAction::Nothing);
}

#[test]
fn a_stall_is_re_acked_a_bounded_number_of_times_then_given_up() {
    let config = PullConfig::new().stall_timeout(ms(1000)).max_reacks(2);
    let (mut pull, t0) = started(config);
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 40, &[0; 16]), t0),
        ack(16)
    );
    assert_eq!(pull.poll(t0 + ms(999)), PullAction::Nothing);
    assert_eq!(pull.poll(t0 + ms(1000)), ack(16));
    assert_eq!(pull.deadline(), Some(t0 + ms(2000)));
    // Progress resets the count.
    assert_eq!(
        pull.on_notification(LOG, &chunk(16, 40, &[0; 16]), t0 + ms(1500)),
        ack(32)
    );
    assert_eq!(pull.poll(t0 + ms(2500)), ack(32));
    assert_eq!(pull.poll(t0 + ms(3500)), ack(32));
    let gave_up = GiveUpReason::Stalled {
        kind: BufferKind::Log,
        offset: 32,
        reacks: 2,
    };
    assert_eq!(pull.poll(t0 + ms(4500)), PullAction::GiveUp(gave_up));
    assert!(pull.is_over());
    assert_eq!(pull.deadline(), None);
    assert_eq!(pull.summary().reacks, 3);
    assert_eq!(
        pull.on_notification(LOG, &chunk(32, 40, &[0; 8]), t0 + ms(4600)),
        PullAction::Dropped(DropReason::NotExpected)
    );
}

#[test]
fn duplicates_and_gaps_are_dropped_without_an_ack() {
    let (mut pull, t0) = started(PullConfig::new());
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 48, &[0; 16]), t0),
        ack(16)
    );
    for offset in [0, 32] {
        assert_eq!(
            pull.on_notification(LOG, &chunk(offset, 48, &[0; 16]), t0),
            PullAction::Dropped(DropReason::UnexpectedOffset {
                expected: 16,
                got: offset
            })
        );
    }
    assert_eq!(pull.summary().dropped, 2);
}

#[test]
fn hostile_notifications_are_refused_with_their_reason() {
    let (mut pull, t0) = started(PullConfig::new());
    let cases: [(Vec<u8>, DropReason); 6] = [
        (vec![], DropReason::TooShort { len: 0 }),
        (vec![0, 0, 5], DropReason::TooShort { len: 3 }),
        (chunk(0, 100, &[0; 17]), DropReason::TooLong { len: 21 }),
        (chunk(0, 0, b"x"), DropReason::ZeroTotal),
        (
            chunk(5, 5, b"x"),
            DropReason::OffsetPastTotal {
                offset: 5,
                total_len: 5,
            },
        ),
        (chunk(0, 5, b""), DropReason::EmptyPayload { offset: 0 }),
    ];
    for (notification, reason) in cases {
        assert!(reason.is_hostile(), "{reason}");
        assert_eq!(
            pull.on_notification(LOG, &notification, t0),
            PullAction::Dropped(reason)
        );
    }
    // Still waiting for the first chunk, which is then taken.
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 20, &[0; 16]), t0),
        ack(16)
    );
    let changed = DropReason::TotalLenChanged { first: 20, got: 21 };
    assert!(changed.is_hostile());
    assert_eq!(
        pull.on_notification(LOG, &chunk(16, 21, &[0; 4]), t0),
        PullAction::Dropped(changed)
    );
    assert_eq!(
        pull.on_notification(CORE, &chunk(16, 20, &[0; 4]), t0),
        PullAction::Dropped(DropReason::WrongCharacteristic {
            expected: LOG,
            got: CORE
        })
    );
    let d = deliver(pull.on_notification(LOG, &chunk(16, 20, &[7; 4]), t0));
    assert_eq!(d.data.len(), 20);
}

#[test]
fn a_padded_last_chunk_keeps_nothing_past_the_total() {
    let (mut pull, t0) = started(PullConfig::new());
    let d = deliver(pull.on_notification(LOG, &chunk(0, 3, b"abcdefgh"), t0));
    assert_eq!(d.data, b"abc");
}

#[test]
fn a_flood_without_progress_gives_up() {
    let (mut pull, t0) = started(PullConfig::new().max_dropped(100));
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 40, &[0; 16]), t0),
        ack(16)
    );
    for _ in 0..100 {
        assert!(matches!(
            pull.on_notification(LOG, &chunk(0, 40, &[0; 16]), t0),
            PullAction::Dropped(_)
        ));
    }
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 40, &[0; 16]), t0),
        PullAction::GiveUp(GiveUpReason::Flood { dropped: 101 })
    );
    assert!(pull.is_over());
    assert_eq!(
        pull.durable(TransferId(0), t0),
        Err(NotAwaitingDurable { id: TransferId(0) })
    );
}

#[test]
fn data_while_waiting_for_durability_is_dropped_and_never_acked() {
    let (mut pull, t0) = started(PullConfig::new());
    let d = deliver(pull.on_notification(LOG, &chunk(0, 2, b"ab"), t0));
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 2, b"ab"), t0),
        PullAction::Dropped(DropReason::NotExpected)
    );
    assert_eq!(
        pull.durable(TransferId(9), t0),
        Err(NotAwaitingDurable { id: TransferId(9) })
    );
    assert_eq!(pull.durable(d.id, t0), Ok(ack(2)));
}

#[test]
fn the_largest_transfer_is_bounded_by_its_total() {
    let (mut pull, t0) = started(PullConfig::new());
    let total = u16::MAX;
    let mut offset = 0u16;
    loop {
        let len = (total - offset).min(16);
        match pull.on_notification(
            LOG,
            &chunk(offset, total, &vec![offset as u8; usize::from(len)]),
            t0,
        ) {
            PullAction::WriteAck(a) => offset = u16::from_le_bytes(a),
            PullAction::Deliver(d) => {
                assert_eq!(d.data.len(), usize::from(total));
                assert_eq!(pull.durable(d.id, t0), Ok(ack(total)));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn timeouts_too_long_for_the_clock_never_fire_nor_panic() {
    let config = PullConfig::new()
        .stall_timeout(Duration::MAX)
        .first_chunk_timeout(Duration::MAX)
        .max_dropped(u32::MAX)
        .max_reacks(u32::MAX);
    let (mut pull, t0) = started(config);
    assert_eq!(pull.deadline(), None);
    assert_eq!(
        pull.poll(t0 + Duration::from_secs(1 << 30)),
        PullAction::Nothing
    );
    assert_eq!(
        pull.on_notification(LOG, &chunk(0, 40, &[0; 16]), t0),
        ack(16)
    );
    assert_eq!(pull.deadline(), None);
    assert_eq!(
        pull.poll(t0 + Duration::from_secs(1 << 30)),
        PullAction::Nothing
    );
}
