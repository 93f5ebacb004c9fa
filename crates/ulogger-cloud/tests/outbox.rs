//! The durable outbox end to end against the emulator over real sockets:
//! enqueue offline, deliver when the broker appears, survive restarts,
//! dead letters, bounds, damaged files and a second owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use support::{
    closed_addr, config_for, device, emulator, free_port, init_tracing, records_of, v4_log,
    CUSTOMER,
};
use ulogger_cloud::{
    Client, ErrorKind, MqttConfig, OutboxConfig, OutboxRecord, OutboxStatus, RecordId, RecordState,
    Security, WhenFull,
};
use ulogger_emulator::{BootReplyMode, Emulator, EmulatorConfig, PortHold, RecordKind};

const WAIT: Duration = Duration::from_secs(30);

fn plaintext_emulator_at(port: &PortHold) -> Emulator {
    emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .listen_on(port),
    )
}

/// Client settings for a plaintext emulator that may not run yet.
fn offline_config(addr: SocketAddr) -> MqttConfig {
    MqttConfig::new(CUSTOMER)
        .broker("127.0.0.1")
        .port(addr.port())
        .security(Security::Plaintext)
        .connect_timeout(Duration::from_secs(60))
}

fn client(config: MqttConfig, outbox: OutboxConfig) -> Client {
    init_tracing();
    Client::builder(config).outbox(outbox).build().unwrap()
}

/// A log whose data says which one it is.
fn numbered_log(n: usize) -> Vec<u8> {
    let mut header = ulogger_cloud::wire::LogHeader::new(4).unwrap();
    header.epoch_time_us = Some(0);
    ulogger_cloud::wire::build_log(header, format!("log-{n:05}").as_bytes()).unwrap()
}

async fn all_delivered(client: &Client, ids: &[RecordId]) {
    tokio::time::timeout(WAIT, async {
        for id in ids {
            client.delivered(*id).await.unwrap();
        }
    })
    .await
    .expect("everything delivered in time");
}

fn delivered_numbers(emu: &Emulator) -> Vec<usize> {
    let mut out: Vec<usize> = records_of(emu, RecordKind::BinaryLog)
        .iter()
        .map(|r| {
            assert!(r.is_ok(), "{r:?}");
            let bytes = support::stored_bytes(emu, r);
            std::str::from_utf8(&bytes[25..]).unwrap()[4..]
                .parse()
                .unwrap()
        })
        .collect();
    out.sort_unstable();
    out
}

#[tokio::test]
async fn logs_enqueued_offline_for_unregistered_devices_arrive_once_the_broker_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = port.addr();
    let client = client(offline_config(addr), OutboxConfig::new(dir.path()));
    let mut ids = Vec::new();
    for n in 0..20 {
        let serial = format!("SN-{}", n % 3);
        ids.push(
            client
                .enqueue_log(&device(&serial), &numbered_log(n))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase");
    let status = client.outbox_status().unwrap();
    assert_eq!(status.queued + status.in_flight, 20, "{status:?}");

    let emu = plaintext_emulator_at(&port);
    all_delivered(&client, &ids).await;
    assert_eq!(delivered_numbers(&emu), (0..20).collect::<Vec<_>>());
    assert_eq!(
        records_of(&emu, RecordKind::Boot).len(),
        3,
        "one registration per device"
    );
    let status = client.outbox_status().unwrap();
    assert_eq!(
        (status.queued, status.in_flight, status.delivered),
        (0, 0, 20)
    );
    client.shutdown().await;
    // Everything delivered: no segment is left behind.
    drop(client);
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("seg-"))
        .collect();
    assert!(left.len() <= 2, "at most the last segment stays: {left:?}");
}

#[tokio::test]
async fn a_restarted_client_delivers_what_an_earlier_one_left_and_a_second_owner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = port.addr();
    {
        let first = client(offline_config(addr), OutboxConfig::new(dir.path()));
        for n in 0..10 {
            first
                .enqueue_log(&device("SN-A"), &numbered_log(n))
                .await
                .unwrap();
        }
        let err = Client::builder(offline_config(addr))
            .outbox(OutboxConfig::new(dir.path()))
            .build()
            .unwrap_err();
        match err.kind() {
            ErrorKind::OutboxLocked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        // Another process may look without owning it.
        let status = OutboxStatus::read(dir.path()).unwrap();
        assert_eq!(status.owner_pid, Some(std::process::id()));
        assert_eq!(status.queued + status.in_flight, 10);
        assert_eq!(OutboxRecord::list(dir.path()).unwrap().len(), 10);
        // Shut down without delivering anything.
        first.shutdown().await;
    }
    let emu = plaintext_emulator_at(&port);
    let second = client(offline_config(addr), OutboxConfig::new(dir.path()));
    let ids: Vec<RecordId> = second
        .outbox()
        .unwrap()
        .records()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 10);
    all_delivered(&second, &ids).await;
    assert_eq!(delivered_numbers(&emu), (0..10).collect::<Vec<_>>());
    second.shutdown().await;
}

#[tokio::test]
async fn a_record_refused_for_good_becomes_a_dead_letter_without_blocking_the_rest_and_can_be_retried(
) {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    emu.faults().set_boot_reply(BootReplyMode::None);
    let client = client(
        config_for(&emu).token_timeout(Duration::from_secs(20)),
        OutboxConfig::new(dir.path()),
    );
    let doomed = client
        .enqueue_log(&device("SN-BAD"), &v4_log(64, 0))
        .await
        .unwrap();

    // Answer the registration with a token that is not a u32: the cloud
    // answered, unusably.
    emu.wait_for(|r| r.kind == RecordKind::Boot, WAIT)
        .await
        .unwrap();
    let (raw, mut events) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new(
            format!("cust-{CUSTOMER}-raw"),
            "127.0.0.1",
            emu.addr().port(),
        ),
        10,
    );
    let pump = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let topics = ulogger_cloud::wire::Topics::new("", CUSTOMER, Some(0)).unwrap();
    raw.publish(
        topics.boot_reply(support::APP, "SN-BAD").unwrap(),
        rumqttc::QoS::AtLeastOnce,
        false,
        br#"{"token": -5}"#.to_vec(),
    )
    .await
    .unwrap();
    let err = tokio::time::timeout(WAIT, client.delivered(doomed))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::DeadLetter { .. }), "{err}");
    pump.abort();
    let status = client.outbox_status().unwrap();
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("boot reply"),
        "{status:?}"
    );
    assert!(status.failing_since.is_some(), "{status:?}");

    // The dead letter blocks nothing behind it, and the next delivery
    // clears the failure (the dead letter stays counted).
    emu.faults().set_boot_reply(BootReplyMode::Normal);
    let fine = client
        .enqueue_log(&device("SN-OK"), &v4_log(64, 0))
        .await
        .unwrap();
    all_delivered(&client, &[fine]).await;
    let status = client.outbox_status().unwrap();
    assert_eq!(status.dead, 1, "{status:?}");
    assert_eq!(status.last_error, None, "{status:?}");
    assert_eq!(status.failing_since, None, "{status:?}");
    let listed = client.outbox().unwrap().records();
    assert!(
        matches!(&listed[..], [r] if r.id == doomed && matches!(&r.state, RecordState::Dead { reason } if reason.contains("token"))),
        "{listed:?}"
    );

    // Retried on request, it goes through now.
    assert_eq!(client.outbox().unwrap().retry_dead().await.unwrap(), 1);
    tokio::time::timeout(WAIT, async {
        while client.outbox_status().unwrap().delivered < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the retried record is delivered");
    assert_eq!(client.outbox_status().unwrap().dead, 0);
    client.shutdown().await;
}

#[tokio::test]
async fn bounds_evict_the_oldest_or_refuse_never_silently() {
    let port = free_port();
    let addr = port.addr();
    let dir = tempfile::tempdir().unwrap();
    let evicting = client(
        offline_config(addr),
        OutboxConfig::new(dir.path()).max_records(5).durable(false),
    );
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            evicting
                .enqueue_log(&device("SN-E"), &numbered_log(n))
                .await
                .unwrap(),
        );
    }
    let status = evicting.outbox_status().unwrap();
    assert_eq!(status.evicted, 3, "{status:?}");
    assert_eq!(status.queued + status.in_flight, 5);
    let err = evicting.delivered(ids[0]).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Evicted { .. }), "{err}");
    drop(evicting);

    let dir = tempfile::tempdir().unwrap();
    let refusing = client(
        offline_config(addr),
        OutboxConfig::new(dir.path())
            .max_bytes(3 * numbered_log(0).len() as u64)
            .when_full(WhenFull::Reject),
    );
    for n in 0..3 {
        refusing
            .enqueue_log(&device("SN-R"), &numbered_log(n))
            .await
            .unwrap();
    }
    let err = refusing
        .enqueue_log(&device("SN-R"), &numbered_log(3))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::OutboxFull { records: 3, .. }),
        "{err}"
    );
    assert_eq!(refusing.outbox_status().unwrap().evicted, 0);
}

#[tokio::test]
async fn invalid_logs_are_refused_at_enqueue_and_nothing_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(offline_config(closed_addr()), OutboxConfig::new(dir.path()));
    let mut bad = numbered_log(1);
    let last = bad.len() - 1;
    bad[last] ^= 0xFF;
    let err = client.enqueue_log(&device("SN-1"), &bad).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidLog(_)), "{err}");
    let err = client
        .enqueue_log(&device("x/#"), &numbered_log(1))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidTopic(_)), "{err}");
    let err = client
        .enqueue_core_dump(&vec![0; 200_000])
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::PayloadTooLarge { .. }),
        "{err}"
    );
    assert_eq!(client.outbox().unwrap().records().len(), 0);

    let plain = Client::builder(offline_config(closed_addr()))
        .build()
        .unwrap();
    let err = plain
        .enqueue_log(&device("SN-1"), &numbered_log(1))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoOutbox), "{err}");
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn damaged_records_are_set_aside_on_open_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = port.addr();
    {
        let offline = client(offline_config(addr), OutboxConfig::new(dir.path()));
        for n in 0..10 {
            offline
                .enqueue_log(&device("SN-C"), &numbered_log(n))
                .await
                .unwrap();
        }
        offline.shutdown().await;
    }
    let segments = segment_files(dir.path());
    assert_eq!(segments.len(), 1);
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let frame = bytes.len() / 10;
    bytes[frame * 4 + frame / 2] ^= 0x40; // inside record 4
    bytes.truncate(bytes.len() - 3); // record 9 cut short, as by a power cut
    std::fs::write(&segments[0], &bytes).unwrap();

    let emu = plaintext_emulator_at(&port);
    let client = client(offline_config(addr), OutboxConfig::new(dir.path()));
    let status = client.outbox_status().unwrap();
    assert_eq!(status.corrupt, 1, "{status:?}");
    let ids: Vec<RecordId> = client
        .outbox()
        .unwrap()
        .records()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 8);
    all_delivered(&client, &ids).await;
    assert_eq!(delivered_numbers(&emu), [0, 1, 2, 3, 5, 6, 7, 8]);
    assert_eq!(
        std::fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .count(),
        1
    );
    client.shutdown().await;
    drop(client);
    // Reported once: the segment was rewritten without the damage.
    let again = OutboxStatus::read(dir.path()).unwrap();
    assert_eq!(again.corrupt, 0, "{again:?}");
}

#[test]
fn the_blocking_client_enqueues_and_waits_for_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let client = ulogger_cloud::blocking::Client::builder(config_for(&emu))
        .outbox(OutboxConfig::new(dir.path()))
        .build()
        .unwrap();
    let ids: Vec<RecordId> = (0..3)
        .map(|n| {
            client
                .enqueue_log(&device("SN-B"), &numbered_log(n))
                .unwrap()
        })
        .collect();
    for id in ids {
        client.delivered(id).unwrap();
    }
    assert_eq!(client.outbox_status().unwrap().delivered, 3);
    assert_eq!(delivered_numbers(&emu), [0, 1, 2]);
    client.shutdown();
}

#[tokio::test]
async fn records_past_their_maximum_age_are_evicted_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(
        offline_config(closed_addr()),
        OutboxConfig::new(dir.path()).max_age(Duration::from_millis(50)),
    );
    let ids: Vec<RecordId> = enqueue_numbered(&client, 3).await;
    for id in ids {
        let err = tokio::time::timeout(WAIT, client.delivered(id))
            .await
            .expect("the age limit applies within a few seconds")
            .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Evicted { .. }), "{err}");
    }
    let status = client.outbox_status().unwrap();
    assert_eq!((status.evicted, status.queued), (3, 0), "{status:?}");
}

async fn enqueue_numbered(client: &Client, n: usize) -> Vec<RecordId> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            client
                .enqueue_log(&device("SN-AGE"), &numbered_log(i))
                .await
                .unwrap(),
        );
    }
    ids
}

#[tokio::test]
async fn telemetry_enqueued_offline_survives_a_restart_and_arrives_as_built() {
    use ulogger_cloud::wire::{DeviceMetrics, Event, Metric};
    use ulogger_cloud::RecordKind as OutboxKind;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = port.addr();
    // A batch big enough to be compressed (over 1,024 bytes of JSON).
    let batch: Vec<DeviceMetrics> = (0..40)
        .map(|i| DeviceMetrics::new(format!("SN-B{i:02}"), vec![Metric::new("temp", 20.5)]))
        .collect();
    let ids = {
        let offline = client(offline_config(addr), OutboxConfig::new(dir.path()));
        let ids = vec![
            offline
                .enqueue_metrics("SN-T1", 7, &[Metric::new("rssi", -61.0).at(1_700_000_000)])
                .await
                .unwrap(),
            offline
                .enqueue_events("SN-T1", 7, &[Event::new("reset")])
                .await
                .unwrap(),
            offline
                .enqueue_heartbeat("SN-T2", 8, Some(1_700_000_001))
                .await
                .unwrap(),
            offline.enqueue_metrics_batch(9, &batch).await.unwrap(),
        ];
        // Refused at enqueue, like publish_metrics: nothing is queued.
        let err = offline
            .enqueue_metrics("", 7, &[Metric::new("t", 1.0)])
            .await
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        let err = offline
            .enqueue_metrics("SN-T1", 7, &[Metric::new("t", f64::NAN)])
            .await
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        offline.shutdown().await;
        ids
    };
    // Another process sees what is queued, telemetry by kind.
    let listed = OutboxRecord::list(dir.path()).unwrap();
    let kinds: Vec<OutboxKind> = listed.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            OutboxKind::Metrics,
            OutboxKind::Events,
            OutboxKind::Metrics,
            OutboxKind::Metrics
        ]
    );
    assert_eq!(listed[0].serial, "SN-T1");
    assert_eq!(listed[3].app_id, 9);

    let emu = plaintext_emulator_at(&port);
    let client = client(offline_config(addr), OutboxConfig::new(dir.path()));
    all_delivered(&client, &ids).await;
    let metrics = records_of(&emu, RecordKind::Metrics);
    let events = records_of(&emu, RecordKind::Events);
    assert_eq!((metrics.len(), events.len()), (3, 1));
    for r in metrics.iter().chain(&events) {
        assert!(r.is_ok(), "{r:?}");
    }
    let by_app = |app: u32| metrics.iter().find(|r| r.app_id == Some(app)).unwrap();
    assert_eq!(by_app(7).compressed, Some(false));
    assert_eq!(by_app(9).compressed, Some(true), "compressed when enqueued");
    let beat = String::from_utf8(support::stored_bytes(&emu, by_app(8))).unwrap();
    assert!(
        beat.contains(r#""name":"heartbeat","value":1"#) && beat.contains("1700000001"),
        "{beat}"
    );
    assert_eq!(
        records_of(&emu, RecordKind::Boot).len(),
        0,
        "telemetry needs no registration"
    );
    client.shutdown().await;
}

/// Waits (bounded) until `done` accepts the client's outbox status.
async fn status_until(client: &Client, done: impl Fn(&OutboxStatus) -> bool) -> OutboxStatus {
    tokio::time::timeout(WAIT, async {
        loop {
            let status = client.outbox_status().unwrap();
            if done(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the outbox status never matched")
}

#[tokio::test]
async fn failed_connection_attempts_are_the_outbox_failure_until_the_broker_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = port.addr();
    let client = client(offline_config(addr), OutboxConfig::new(dir.path()));
    let id = enqueue_numbered(&client, 1).await[0];

    // No record was tried, yet the outbox says why nothing goes out.
    let status = status_until(&client, |s| s.failed_attempts >= 2).await;
    let text = status.last_error.clone().unwrap();
    assert!(
        text.starts_with(&format!("could not connect to 127.0.0.1:{}", addr.port())),
        "{text}"
    );
    let failure = client.outbox().unwrap().failure().unwrap();
    assert!(
        matches!(failure.error.kind(), ErrorKind::Connect { .. }),
        "{:?}",
        failure.error
    );
    assert_eq!(Some(failure.since), status.failing_since);
    // Another process sees it too, from the owner's status file.
    let read = tokio::time::timeout(WAIT, async {
        loop {
            let read = OutboxStatus::read(dir.path()).unwrap();
            if read.failing_since.is_some() {
                return read;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(read.last_error.as_deref(), Some(text.as_str()));

    let emu = plaintext_emulator_at(&port);
    tokio::time::timeout(WAIT, client.delivered(id))
        .await
        .unwrap()
        .unwrap();
    let status = client.outbox_status().unwrap();
    assert_eq!(status.last_error, None, "{status:?}");
    assert_eq!(status.failing_since, None, "{status:?}");
    assert_eq!(status.failed_attempts, 0, "{status:?}");
    drop(emu);
}
