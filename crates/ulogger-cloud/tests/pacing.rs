//! Pacing, acknowledgement deadlines and the subscription limit, end to
//! end against the emulator over real sockets. Rates are checked with the
//! times at which the emulator's cloud recorded each message (what the
//! broker side saw), subscriptions with a tap that decodes every packet the
//! client sends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use ulogger_cloud::{Client, ErrorKind, MqttConfig, Pacing, Security};
use ulogger_emulator::{
    Emulator, EmulatorConfig, PlatformLimits, Record, RecordKind, WithholdPuback,
};

/// Time from the first to the last of `records`, as the cloud saw them.
fn spread(records: &[Record]) -> Duration {
    let times: Vec<SystemTime> = records.iter().map(|r| r.time).collect();
    let first = times.iter().min().unwrap();
    let last = times.iter().max().unwrap();
    last.duration_since(*first).unwrap()
}

/// Publishes `count` small core dumps at once, all through `client`, and
/// returns once every one was acknowledged.
async fn core_dumps_at_once(client: &Client, count: usize) {
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let client = client.clone();
        tasks.spawn(async move { client.publish_core_dump(vec![i as u8; 64]).await });
    }
    while let Some(result) = tasks.join_next().await {
        result
            .unwrap()
            .expect("every paced publish is acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_the_broker_no_faster_than_the_paced_rate() {
    // Unpaced, a hundred small publishes arrive within a blink.
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu).pacing(Pacing::off()))
        .build()
        .unwrap();
    core_dumps_at_once(&client, 100).await;
    assert!(wait_for_count(&emu, RecordKind::CoreDump, 100).await);
    let unpaced = spread(&records_of(&emu, RecordKind::CoreDump));
    client.shutdown().await;

    // At 50/s (burst 5), the same hundred take at least 95 intervals of
    // 20 ms at the broker.
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu).pacing(Pacing::off().publish_rate(50)))
        .build()
        .unwrap();
    core_dumps_at_once(&client, 100).await;
    assert!(wait_for_count(&emu, RecordKind::CoreDump, 100).await);
    let paced = spread(&records_of(&emu, RecordKind::CoreDump));
    client.shutdown().await;

    eprintln!("100 publishes: unpaced over {unpaced:?}, at 50/s over {paced:?}");
    assert!(
        paced >= Duration::from_millis(1_750),
        "at 50/s, 100 publishes must spread over ~1.9 s, not {paced:?}"
    );
    assert!(
        unpaced < Duration::from_secs(1),
        "unpaced publishes must not be held back ({unpaced:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_rate_spaces_large_publishes_and_an_oversized_one_still_goes() {
    // Two clients on two emulators at once, to keep the test short.
    let spaced = async {
        let emu = tls_emulator();
        // 100 kB/s: a bucket of 10 kB, smaller than each 10 kB publish
        // (plus its header), so each waits for a full bucket: ~100 ms apart.
        let client = Client::builder(config_for(&emu).pacing(Pacing::off().byte_rate(100_000)))
            .build()
            .unwrap();
        let mut tasks = JoinSet::new();
        for _ in 0..12 {
            let client = client.clone();
            tasks.spawn(async move { client.publish_core_dump(vec![7u8; 10_000]).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        assert!(wait_for_count(&emu, RecordKind::CoreDump, 12).await);
        client.shutdown().await;
        spread(&records_of(&emu, RecordKind::CoreDump))
    };
    let oversized = async {
        // More than a second's budget in one publish: it goes at once, and
        // the next one waits until the debt is paid (~1.4 s at 40 kB/s).
        let emu = tls_emulator();
        let client = Client::builder(config_for(&emu).pacing(Pacing::off().byte_rate(40_000)))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        client.publish_core_dump(vec![1u8; 60_000]).await.unwrap();
        let first = started.elapsed();
        client.publish_core_dump(vec![2u8; 100]).await.unwrap();
        assert!(wait_for_count(&emu, RecordKind::CoreDump, 2).await);
        client.shutdown().await;
        (first, spread(&records_of(&emu, RecordKind::CoreDump)))
    };
    let (spaced, (first, gap)) = tokio::join!(spaced, oversized);

    assert!(
        spaced >= Duration::from_millis(1_000),
        "12 x 10 kB at 100 kB/s must spread over ~1.1 s, not {spaced:?}"
    );
    assert!(
        first < Duration::from_secs(1),
        "an oversized publish is not held back ({first:?})"
    );
    assert!(
        gap >= Duration::from_millis(1_300),
        "the publish after 60 kB at 40 kB/s waits ~1.4 s, not {gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_waiting_for_pacing_are_not_charged_to_the_ack_timeout() {
    let emu = tls_emulator();
    // 60 uploads at 20/s take ~3 s, three times the ack timeout.
    let config = config_for(&emu)
        .pacing(Pacing::off().publish_rate(20))
        .ack_timeout(Duration::from_secs(1));
    let client = Client::builder(config).build().unwrap();
    let dev = device("SN-PACED");
    client.session_token(&dev).await.unwrap();

    let mut tasks = JoinSet::new();
    for i in 0..60 {
        let client = client.clone();
        let dev = dev.clone();
        tasks.spawn(async move { client.upload_log(&dev, &v4_log(100 + i, 0)).await });
    }
    let mut failures = Vec::new();
    while let Some(result) = tasks.join_next().await {
        if let Err(e) = result.unwrap() {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "no upload may time out: {failures:?}");
    assert!(wait_for_count(&emu, RecordKind::BinaryLog, 60).await);
    let logs = records_of(&emu, RecordKind::BinaryLog);
    assert!(logs.iter().all(Record::is_ok));
    assert!(
        spread(&logs) >= Duration::from_millis(2_500),
        "the uploads were paced: {:?}",
        spread(&logs)
    );
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_puback_still_times_out_after_the_write() {
    let emu = tls_emulator();
    let config = config_for(&emu)
        .pacing(Pacing::off().publish_rate(10))
        .ack_timeout(Duration::from_millis(400));
    let client = Client::builder(config).build().unwrap();
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic("core-dump/#".to_owned()));
    // At 10/s these are written ~100 ms apart; each fails 400 ms after its
    // own write, whatever its wait before.
    let mut tasks = JoinSet::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.spawn(async move { client.publish_core_dump(vec![3u8; 32]).await });
    }
    while let Some(result) = tasks.join_next().await {
        let err = result.unwrap().unwrap_err();
        assert_eq!(
            err.timeout_phase(),
            Some(ulogger_cloud::Phase::Acknowledgement),
            "{err:?}"
        );
    }
    // Never completed by another publish's PUBACK: the connection is
    // still good for the next one.
    emu.faults().set_withhold_puback(WithholdPuback::None);
    client.publish_core_dump(vec![4u8; 32]).await.unwrap();
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resends_after_a_reconnect_are_paced_too() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu).pacing(Pacing::off().publish_rate(40)))
        .build()
        .unwrap();
    // The broker takes 20 dumps but their PUBACKs are lost...
    emu.faults()
        .set_withhold_puback(WithholdPuback::Topic("core-dump/#".to_owned()));
    let uploads = {
        let client = client.clone();
        tokio::spawn(async move { core_dumps_at_once(&client, 20).await })
    };
    assert!(wait_for_count(&emu, RecordKind::CoreDump, 20).await);
    // ...then the link drops: all 20 are re-sent, at 40/s again.
    emu.faults().set_withhold_puback(WithholdPuback::None);
    assert_eq!(emu.disconnect_all(), 1);
    uploads.await.unwrap();
    assert!(wait_for_count(&emu, RecordKind::CoreDump, 40).await);

    let all = records_of(&emu, RecordKind::CoreDump);
    assert_eq!(all.len(), 40, "each dump twice: at least once");
    let resent = &all[20..];
    assert!(
        spread(resent) >= Duration::from_millis(350),
        "20 re-sends at 40/s (burst 4) spread over ~0.4 s, not {:?}",
        spread(resent)
    );
    client.shutdown().await;
}

#[tokio::test]
async fn extreme_settings_neither_panic_nor_stall() {
    let emu = tls_emulator();
    let config = config_for(&emu)
        .pacing(Pacing::new(u64::MAX, u64::MAX))
        .ack_timeout(Duration::MAX)
        .connect_timeout(Duration::MAX)
        .token_timeout(Duration::MAX)
        .max_subscriptions(u16::MAX)
        .max_inflight(u16::MAX)
        .max_reconnect_delay(Duration::MAX)
        .keep_alive(Duration::from_secs(u64::from(u16::MAX)));
    let client = Client::builder(config).build().unwrap();
    client.connected().await.unwrap();
    let receipt = client
        .upload_log(&device("SN-EXTREME"), &v4_log(100, 0))
        .await
        .unwrap();
    assert_eq!(receipt.token, emu.issued_tokens()[0].2);
    client.shutdown().await;

    for (pacing, what) in [
        (Pacing::new(0, 1), "publish rate"),
        (Pacing::off().byte_rate(0), "byte rate"),
    ] {
        let err = Client::builder(config_for(&emu).pacing(pacing))
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidConfig {
                    field: "pacing",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains(what), "{err}");
    }
    let err = Client::builder(config_for(&emu).max_subscriptions(0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_subscriptions"), "{err}");
}

// ---------------------------------------------------------------------
// Subscriptions, observed on the wire.

/// What the client sent, as far as subscriptions go.
#[derive(Debug, Default)]
struct Wire {
    /// Filters subscribed on the current connection.
    subscribed: HashSet<String>,
    /// The most filters subscribed at once on one connection.
    max_subscribed: usize,
    /// The most filters in one SUBSCRIBE.
    max_filters_per_subscribe: usize,
    /// Every packet from the client, in order: ("PUBLISH", topic), ...
    packets: Vec<(&'static str, String)>,
    /// Bytes the tap could not decode as MQTT.
    errors: Vec<String>,
}

/// A TCP proxy in front of a plaintext broker that decodes every packet
/// the client sends. Stops on drop.
struct Tap {
    addr: SocketAddr,
    wire: Arc<Mutex<Wire>>,
    /// Bumped after every packet noted.
    packets_seen: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(wire: &Mutex<Wire>) -> MutexGuard<'_, Wire> {
    // A failed assertion while a test holds the lock must not take the
    // tap down with a second panic.
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tap {
    async fn start(upstream: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let wire = Arc::new(Mutex::new(Wire::default()));
        let (seen_tx, packets_seen) = watch::channel(0u64);
        let seen_tx = Arc::new(seen_tx);
        let task = tokio::spawn({
            let wire = wire.clone();
            async move {
                let mut connections = JoinSet::new();
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(broker) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    connections.spawn(relay(client, broker, wire.clone(), seen_tx.clone()));
                }
            }
        });
        Tap {
            addr,
            wire,
            packets_seen,
            task,
        }
    }

    fn wire(&self) -> MutexGuard<'_, Wire> {
        lock(&self.wire)
    }

    /// Waits until what the client sent satisfies `done`.
    async fn wait_until(&self, done: impl Fn(&Wire) -> bool) {
        let mut seen = self.packets_seen.clone();
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                seen.borrow_and_update();
                if done(&self.wire()) {
                    return;
                }
                if seen.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "the wire never got there: {:?}",
            self.wire()
        );
    }
}

async fn relay(
    client: TcpStream,
    broker: TcpStream,
    wire: Arc<Mutex<Wire>>,
    seen: Arc<watch::Sender<u64>>,
) {
    // A new connection starts with no subscriptions (clean session).
    lock(&wire).subscribed.clear();
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut broker_rx, mut broker_tx) = broker.into_split();
    let downstream = async {
        let _ = tokio::io::copy(&mut broker_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    let upstream = async {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut pending = BytesMut::new();
        loop {
            let n = match client_rx.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Forward first: the tap must not slow the client down.
            if broker_tx.write_all(&chunk[..n]).await.is_err() {
                break;
            }
            pending.extend_from_slice(&chunk[..n]);
            loop {
                match Packet::read(&mut pending, 1 << 20) {
                    Ok(packet) => note(&mut lock(&wire), packet),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => break,
                    Err(e) => {
                        lock(&wire).errors.push(e.to_string());
                        pending.clear();
                        break;
                    }
                }
                seen.send_modify(|n| *n += 1);
            }
        }
        let _ = broker_tx.shutdown().await;
    };
    tokio::join!(downstream, upstream);
}

fn note(wire: &mut Wire, packet: Packet) {
    match packet {
        Packet::Subscribe(subscribe) => {
            wire.max_filters_per_subscribe =
                wire.max_filters_per_subscribe.max(subscribe.filters.len());
            for filter in subscribe.filters {
                wire.packets.push(("SUBSCRIBE", filter.path.clone()));
                wire.subscribed.insert(filter.path);
            }
            wire.max_subscribed = wire.max_subscribed.max(wire.subscribed.len());
        }
        Packet::Unsubscribe(unsubscribe) => {
            for topic in unsubscribe.topics {
                wire.subscribed.remove(&topic);
                wire.packets.push(("UNSUBSCRIBE", topic));
            }
        }
        Packet::Publish(publish) => wire.packets.push(("PUBLISH", publish.topic)),
        _ => {}
    }
}

/// A plaintext emulator enforcing `limits` with a tap in front; the
/// config reaches the broker through the tap.
async fn tapped_emulator_with(limits: PlatformLimits) -> (Emulator, Tap, MqttConfig) {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true).limits(limits));
    let tap = Tap::start(emu.addr()).await;
    let config = config_for(&emu).port(tap.addr.port());
    (emu, tap, config)
}

/// [`tapped_emulator_with`] the platform's limits.
async fn tapped_emulator() -> (Emulator, Tap, MqttConfig) {
    tapped_emulator_with(PlatformLimits::aws()).await
}

async fn register_all(client: &Client, serials: impl Iterator<Item = String>) -> Vec<u32> {
    let mut tasks = JoinSet::new();
    for serial in serials {
        let client = client.clone();
        tasks.spawn(async move { client.session_token(&device(&serial)).await });
    }
    let mut tokens = Vec::new();
    while let Some(result) = tasks.join_next().await {
        tokens.push(result.unwrap().expect("every registration succeeds"));
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_devices_register_at_once_within_fifty_subscriptions() {
    // The broker refuses a 51st subscription as AWS IoT does; its rates are
    // lifted so that the test is about subscriptions, at full speed.
    let limits = PlatformLimits::aws()
        .publishes_per_second(None)
        .bytes_per_second(None);
    let (emu, tap, config) = tapped_emulator_with(limits).await;
    let client = Client::builder(
        config
            .pacing(Pacing::off())
            .registration_limit(ulogger_cloud::RegistrationLimit::off()),
    )
    .build()
    .unwrap();

    let tokens = register_all(&client, (0..1000).map(|i| format!("SN-K-{i:04}"))).await;

    assert_eq!(tokens.len(), 1000);
    assert_eq!(emu.issued_tokens().len(), 1000);
    // The last registrations give their reply topics up after returning.
    tap.wait_until(|wire| wire.packets.len() >= 3 * 1000).await;
    {
        let wire = tap.wire();
        eprintln!(
            "1,000 registrations: at most {} subscriptions at once on the connection",
            wire.max_subscribed
        );
        assert!(wire.errors.is_empty(), "{:?}", wire.errors);
        assert!(
            wire.max_subscribed <= 50,
            "the broker saw {} subscriptions at once",
            wire.max_subscribed
        );
        assert!(
            wire.max_subscribed >= 10,
            "registrations overlap ({} at once)",
            wire.max_subscribed
        );
        assert!(wire.max_filters_per_subscribe <= 8);
        assert!(wire.subscribed.is_empty(), "every reply topic was given up");
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_subscription_slot_is_not_charged_to_the_subscribe_timeout() {
    let (emu, tap, config) = tapped_emulator().await;
    // One slot; each registration holds it for 200 ms of boot-reply delay,
    // so the sixth waits ~1 s for it, twice the acknowledgement timeout.
    emu.faults()
        .set_boot_reply_delay(Duration::from_millis(200));
    let config = config
        .max_subscriptions(1)
        .ack_timeout(Duration::from_millis(500));
    let client = Client::builder(config).build().unwrap();

    let tokens = register_all(&client, (0..6).map(|i| format!("SN-SLOT-{i}"))).await;

    assert_eq!(tokens.len(), 6);
    tap.wait_until(|wire| wire.packets.len() >= 3 * 6).await;
    {
        let wire = tap.wire();
        assert_eq!(wire.max_subscribed, 1, "{:?}", wire.packets);
        // Each reply topic was subscribed, then given up before the next.
        let subscriptions: Vec<&(&str, String)> = wire
            .packets
            .iter()
            .filter(|(kind, _)| *kind != "PUBLISH")
            .collect();
        assert_eq!(subscriptions.len(), 12, "{subscriptions:?}");
        for pair in subscriptions.chunks(2) {
            assert_eq!(pair[0].0, "SUBSCRIBE");
            assert_eq!(pair[1].0, "UNSUBSCRIBE");
            assert_eq!(pair[0].1, pair[1].1);
        }
    }
    client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_does_not_wait_behind_paced_publishes() {
    let (emu, tap, config) = tapped_emulator().await;
    // Six dumps at 5/s (burst 1) take ~1 s to go out.
    let client = Client::builder(config.pacing(Pacing::off().publish_rate(5)))
        .build()
        .unwrap();
    let dumps = {
        let client = client.clone();
        tokio::spawn(async move { core_dumps_at_once(&client, 6).await })
    };
    emu.wait_for(|r| r.kind == RecordKind::CoreDump, PATIENCE)
        .await
        .expect("the first dump went out");

    let token = client.session_token(&device("SN-EAGER")).await.unwrap();
    dumps.await.unwrap();

    assert_eq!(emu.issued_tokens()[0].2, token);
    {
        let wire = tap.wire();
        let packets = &wire.packets;
        let is_dump =
            |(kind, topic): &(&str, String)| *kind == "PUBLISH" && topic.starts_with("core-dump/");
        let subscribe = packets
            .iter()
            .position(|(kind, _)| *kind == "SUBSCRIBE")
            .expect("a SUBSCRIBE");
        let boot = packets
            .iter()
            .position(|(kind, topic)| *kind == "PUBLISH" && topic.starts_with("boot/"))
            .expect("a boot request");
        let last_dump = packets.iter().rposition(is_dump).expect("dumps");
        assert_eq!(packets.iter().filter(|p| is_dump(p)).count(), 6);
        assert!(
            subscribe < last_dump,
            "the SUBSCRIBE went out while dumps were still paced: {:?}",
            packets
        );
        assert!(
            boot > last_dump,
            "the boot request is a publish like the others and waits its turn"
        );
    }
    client.shutdown().await;
}

/// Uploads `count` small logs of one (registered) device at once; returns
/// how many failed.
async fn uploads_at_once(client: &Client, count: usize) -> usize {
    uploads_of_devices_at_once(client, count, 1).await
}

/// [`uploads_at_once`] spread over `devices` devices (registered first):
/// a pool keeps each device on one connection.
async fn uploads_of_devices_at_once(client: &Client, count: usize, devices: usize) -> usize {
    let serial = |i: usize| {
        if devices == 1 {
            "SN-CAP".to_owned()
        } else {
            format!("SN-CAP-{}", i % devices)
        }
    };
    for i in 0..devices {
        client.session_token(&device(&serial(i))).await.unwrap();
    }
    let mut tasks = JoinSet::new();
    for i in 0..count {
        let client = client.clone();
        let serial = serial(i);
        tasks.spawn(async move { client.upload_log(&device(&serial), &v4_log(64, 0)).await });
    }
    let mut failed = 0;
    while let Some(done) = tasks.join_next().await {
        if done.unwrap().is_err() {
            failed += 1;
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_uploads_at_the_platform_cap_lose_nothing_and_use_the_rate() {
    // The emulator enforces AWS IoT's limits (its default), the client
    // paces to them (its default).
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let client = Client::builder(config_for(&emu)).build().unwrap();
    assert_eq!(uploads_at_once(&client, 2000).await, 0, "no upload failed");
    client.shutdown().await;
    assert_eq!(emu.limit_stats().discarded_publishes, 0);
    let logs = records_of(&emu, RecordKind::BinaryLog);
    assert_eq!(logs.len(), 2000);
    assert!(logs.iter().all(|r| r.is_ok()));
    let rate = 1999.0 / spread(&logs).as_secs_f64();
    eprintln!("2,000 paced uploads arrived at {rate:.1}/s (cap 100/s)");
    assert!(
        rate >= 95.0,
        "throughput {rate:.1}/s is under 95% of the cap"
    );
    assert!(rate <= 110.0, "throughput {rate:.1}/s is over the cap");

    // The same without pacing: the broker discards, uploads time out.
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let client = Client::builder(
        config_for(&emu)
            .pacing(Pacing::off())
            .ack_timeout(Duration::from_secs(2)),
    )
    .build()
    .unwrap();
    let failed = uploads_at_once(&client, 500).await;
    client.shutdown().await;
    assert!(emu.limit_stats().discarded_publishes > 0);
    assert!(failed > 0, "unpaced uploads over the cap fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_three_connections_shares_the_load_each_within_the_cap() {
    let emu = emulator(EmulatorConfig::new(CUSTOMER).plaintext(true));
    let client = Client::builder(config_for(&emu).client_id_suffix("pool").connections(3))
        .build()
        .unwrap();
    client.connected().await.unwrap();
    assert_eq!(
        emu.connected_clients(),
        [
            format!("cust-{CUSTOMER}-pool-1"),
            format!("cust-{CUSTOMER}-pool-2"),
            format!("cust-{CUSTOMER}-pool-3")
        ]
    );
    // Many devices: each sticks to one connection, together they use all.
    assert_eq!(
        uploads_of_devices_at_once(&client, 600, 30).await,
        0,
        "no upload failed"
    );
    client.shutdown().await;
    assert_eq!(emu.limit_stats().discarded_publishes, 0);
    let logs = records_of(&emu, RecordKind::BinaryLog);
    assert_eq!(logs.len(), 600);
    let rate = 599.0 / spread(&logs).as_secs_f64();
    eprintln!("600 uploads over 3 paced connections: {rate:.1}/s");
    assert!(rate > 150.0, "more than one connection's cap: {rate:.1}/s");
}

#[test]
fn a_pool_size_out_of_range_is_refused() {
    for bad in [0, 33] {
        let err = Client::builder(
            MqttConfig::new(1)
                .security(Security::Plaintext)
                .connections(bad),
        )
        .build()
        .unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::InvalidConfig {
                    field: "connections",
                    ..
                }
            ),
            "{err}"
        );
    }
}
