//! The simulated device against PROTOCOL §6, rule by rule.

use std::time::{Duration, Instant};

use super::*;

fn ack(value: u16) -> [u8; 2] {
    value.to_le_bytes()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn log_chunk(offset: u16, total: u16, payload: &[u8]) -> Notify {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend(total.to_le_bytes());
    p.extend(payload);
    Notify::LogData(p)
}

fn core_chunk(offset: u16, total: u16, payload: &[u8]) -> Notify {
    let Notify::LogData(p) = log_chunk(offset, total, payload) else {
        unreachable!()
    };
    Notify::CoreDumpData(p)
}

fn logs(n: u8) -> Vec<u8> {
    (0..n).collect()
}

#[test]
fn ack_0_starts_the_logs_and_each_ack_moves_the_offset_unchecked() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(b"cfg".to_vec(), logs(40), None);
    dev.connect(t0);
    assert_eq!(
        dev.write_log_ack(&ack(0), t0),
        vec![log_chunk(0, 40, &logs(40)[..16])]
    );
    assert_eq!(
        dev.write_log_ack(&ack(16), t0),
        vec![log_chunk(16, 40, &logs(40)[16..32])]
    );
    // Any value, even one never sent: the device does not check.
    assert_eq!(
        dev.write_log_ack(&ack(3), t0),
        vec![log_chunk(3, 40, &logs(40)[3..19])]
    );
    assert_eq!(
        dev.write_log_ack(&ack(32), t0),
        vec![log_chunk(32, 40, &logs(40)[32..])]
    );
    assert_eq!(dev.erasures().count(), 0);
    assert_eq!(dev.write_log_ack(&ack(40), t0 + ms(1)), vec![]);
    let erased: Vec<_> = dev.erasures().collect();
    assert_eq!(erased, vec![(&Erased::Logs(logs(40)), t0 + ms(1))]);
    assert!(dev.logs().is_empty());
    assert_eq!(dev.acks().count(), 5);
    // Idle with nothing: silence.
    assert_eq!(dev.write_log_ack(&ack(0), t0 + ms(2)), vec![]);
}

#[test]
fn the_timer_starts_the_logs_but_never_re_sends_a_log_chunk() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(vec![], logs(40), None);
    dev.connect(t0);
    assert_eq!(dev.next_deadline(), Some(t0 + TICK));
    assert_eq!(dev.tick(t0 + ms(1999)), vec![]);
    // Before any ack, even before notifications are on.
    assert_eq!(dev.tick(t0 + TICK), vec![log_chunk(0, 40, &logs(40)[..16])]);
    assert_eq!(dev.next_deadline(), Some(t0 + 2 * TICK));
    assert_eq!(dev.tick(t0 + 2 * TICK), vec![]);
    assert_eq!(dev.tick(t0 + 3 * TICK), vec![]);
}

#[test]
fn the_core_dump_follows_100ms_later_is_re_sent_by_the_timer_and_erases_everything() {
    let t0 = Instant::now();
    let dump = vec![9u8; 20];
    let mut dev = SimDevice::new(vec![], logs(4), Some(dump.clone()));
    dev.connect(t0);
    assert_eq!(
        dev.write_log_ack(&ack(0), t0),
        vec![log_chunk(0, 4, &logs(4))]
    );
    assert_eq!(dev.write_log_ack(&ack(4), t0 + ms(10)), vec![]);
    // The log erase waits for the core dump.
    assert_eq!(dev.erasures().count(), 0);
    assert_eq!(dev.next_deadline(), Some(t0 + ms(110)));
    // Acks in the gap are ignored.
    assert_eq!(dev.write_log_ack(&ack(0), t0 + ms(50)), vec![]);
    assert_eq!(dev.tick(t0 + ms(110)), vec![core_chunk(0, 20, &dump[..16])]);
    // Lost: the timer re-sends the current core-dump chunk.
    assert_eq!(dev.tick(t0 + TICK), vec![core_chunk(0, 20, &dump[..16])]);
    assert_eq!(
        dev.write_log_ack(&ack(16), t0 + TICK),
        vec![core_chunk(16, 20, &dump[16..])]
    );
    assert_eq!(dev.write_log_ack(&ack(20), t0 + TICK + ms(1)), vec![]);
    let erased: Vec<_> = dev.erasures().collect();
    assert_eq!(
        erased,
        vec![(
            &Erased::LogsAndCoreDump {
                logs: logs(4),
                core_dump: dump
            },
            t0 + TICK + ms(1)
        )]
    );
    assert!(dev.core_dump().is_none() && dev.logs().is_empty());
}

#[test]
fn without_logs_ack_0_starts_the_core_dump() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(vec![], vec![], Some(vec![1, 2, 3]));
    dev.connect(t0);
    // The timer starts only logs.
    assert_eq!(dev.tick(t0 + TICK), vec![]);
    assert_eq!(
        dev.write_log_ack(&ack(0), t0 + TICK),
        vec![core_chunk(0, 3, &[1, 2, 3])]
    );
}

#[test]
fn a_disconnect_resets_to_idle_and_keeps_the_data() {
    let t0 = Instant::now();
    let dump = vec![5u8; 3];
    let mut dev = SimDevice::new(vec![], logs(20), Some(dump.clone()));
    dev.connect(t0);
    dev.write_log_ack(&ack(0), t0);
    dev.write_log_ack(&ack(20), t0);
    dev.tick(t0 + CORE_DUMP_DELAY);
    dev.disconnect();
    assert_eq!(dev.next_deadline(), None);
    assert_eq!(dev.write_log_ack(&ack(3), t0), vec![]);
    assert_eq!(dev.logs(), logs(20));
    dev.connect(t0 + ms(500));
    // The logs come again: a duplicate for the gateway to recognise.
    assert_eq!(
        dev.write_log_ack(&ack(0), t0 + ms(500)),
        vec![log_chunk(0, 20, &logs(20)[..16])]
    );
}

#[test]
fn fault_switches_drop_chunks_and_the_link() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(vec![], logs(64), None);
    dev.connect(t0);
    dev.drop_next_notifications(1);
    assert_eq!(dev.write_log_ack(&ack(0), t0), vec![]);
    assert_eq!(dev.write_log_ack(&ack(0), t0).len(), 1);
    dev.disconnect_after_chunks(2);
    assert_eq!(dev.write_log_ack(&ack(16), t0).len(), 1);
    assert!(dev.is_connected());
    assert_eq!(dev.write_log_ack(&ack(32), t0).len(), 1);
    assert!(!dev.is_connected());
    assert!(matches!(
        dev.events().last(),
        Some(DeviceEvent::Disconnected { by_device: true })
    ));
}

#[test]
fn a_reset_offers_consumed_logs_again() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(vec![], logs(4), None);
    dev.connect(t0);
    dev.write_log_ack(&ack(0), t0);
    dev.write_log_ack(&ack(4), t0);
    assert!(dev.logs().is_empty());
    dev.add_logs(&[7, 7]);
    dev.reset(t0 + ms(1));
    assert!(!dev.is_connected());
    assert_eq!(dev.logs(), [0, 1, 2, 3, 7, 7]);
}

#[test]
fn logs_added_during_a_transfer_survive_its_erase() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(vec![], logs(4), None);
    dev.connect(t0);
    dev.write_log_ack(&ack(0), t0);
    dev.add_logs(&[9]);
    dev.write_log_ack(&ack(4), t0);
    assert_eq!(dev.logs(), [9]);
}

#[test]
fn lengths_are_cut_to_16_bits_on_the_wire() {
    let t0 = Instant::now();
    let big = vec![1u8; 70_000];
    let mut dev = SimDevice::new(vec![], big, None);
    dev.connect(t0);
    let out = dev.write_log_ack(&ack(0), t0);
    assert_eq!(out[0].bytes()[2..4], (70_000u32 as u16).to_le_bytes());
    // No 16-bit ack reaches 70,000: the transfer never completes.
    dev.write_log_ack(&ack(u16::MAX), t0);
    assert_eq!(dev.erasures().count(), 0);
}

#[test]
fn config_rssi_and_log_config() {
    let mut dev = SimDevice::new(b"\x07\0\0\0SN\0T\0V\0H\0".to_vec(), vec![], None);
    assert_eq!(dev.read_config(), b"\x07\0\0\0SN\0T\0V\0H\0");
    assert_eq!(dev.rssi(), None);
    dev.set_rssi(Some(-60));
    assert_eq!(dev.rssi(), Some(-60));
    dev.write_log_config(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(dev.log_config(), Some(&[1u8, 0, 0, 0, 0, 0, 0, 0, 0][..]));
}

/// Why a gateway must never repeat a final log ack: once the core dump is
/// under way, the device takes it as a core-dump ack, unchecked.
#[test]
fn a_repeated_final_log_ack_during_the_core_dump_erases_it_unread() {
    let t0 = Instant::now();
    let mut dev = SimDevice::new(vec![], logs(40), Some(vec![3; 20]));
    dev.connect(t0);
    dev.write_log_ack(&ack(0), t0);
    dev.write_log_ack(&ack(40), t0);
    assert_eq!(dev.tick(t0 + CORE_DUMP_DELAY).len(), 1);
    assert_eq!(dev.write_log_ack(&ack(40), t0 + CORE_DUMP_DELAY), vec![]);
    assert!(dev.core_dump().is_none());
    assert!(matches!(
        dev.erasures().next(),
        Some((Erased::LogsAndCoreDump { .. }, _))
    ));
}

#[test]
fn connects_fail_as_many_times_as_asked() {
    let mut dev = SimDevice::new(vec![], vec![], None);
    assert!(!dev.refuse_connect());
    dev.fail_next_connects(2);
    assert!(dev.refuse_connect());
    assert!(dev.refuse_connect());
    assert!(!dev.refuse_connect());
    assert_eq!(
        dev.events(),
        [DeviceEvent::ConnectRefused, DeviceEvent::ConnectRefused]
    );
}
