//! Registration as the platform guards it: a client registering 1,000
//! new devices at once stays under the emulator's boot guard (the
//! platform's alarm that quarantines a customer), while a naive loop of
//! boot requests trips it and gets every connection refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use ulogger_cloud::wire::Topics;
use ulogger_cloud::{Client, ErrorKind, Pacing, RegistrationLimit};
use ulogger_emulator::{EmulatorConfig, PlatformLimits, RecordKind};

/// Boot messages per second past which the emulator quarantines.
const GUARD: u32 = 450;
/// The cap the test's client uses: at most 100 + 300 boots in any second,
/// under the guard. (The default, 10/s in bursts of 20, is the same
/// mechanism, too slow to register 1,000 devices in a test.)
const CAP: RegistrationLimit = RegistrationLimit::new(300, 100);

fn guarded() -> ulogger_emulator::Emulator {
    emulator(
        EmulatorConfig::new(CUSTOMER)
            .plaintext(true)
            .limits(PlatformLimits::unlimited())
            .boot_guard(Some(GUARD)),
    )
}

#[tokio::test]
async fn a_thousand_devices_registering_at_once_stay_under_the_guard() {
    let emu = guarded();
    let client = Client::builder(
        config_for(&emu)
            .pacing(Pacing::off())
            .registration_limit(CAP),
    )
    .build()
    .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let client = client.clone();
        tasks.spawn(async move { client.session_token(&device(&format!("SN-G-{i:04}"))).await });
    }
    let mut tokens = 0;
    while let Some(result) = tasks.join_next().await {
        result.unwrap().expect("every registration succeeds");
        tokens += 1;
    }
    assert_eq!(tokens, 1000);
    assert_eq!(emu.issued_tokens().len(), 1000);
    let quarantined = emu.records().into_iter().any(|r| {
        r.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("boot guard"))
    });
    assert!(!quarantined, "the client tripped the boot guard");
    client.shutdown().await;
}

#[tokio::test]
async fn a_naive_loop_of_boot_requests_gets_the_customer_quarantined() {
    let emu = guarded();
    let mut options = rumqttc::MqttOptions::new(
        format!("cust-{CUSTOMER}-naive"),
        "127.0.0.1",
        emu.addr().port(),
    );
    options.set_keep_alive(Duration::from_secs(5));
    let (naive, mut events) = rumqttc::AsyncClient::new(options, 2000);
    let topic = Topics::new("", CUSTOMER, Some(0))
        .unwrap()
        .boot(APP)
        .unwrap();
    for i in 0..1000 {
        let payload = ulogger_cloud::wire::boot_payload(&device(&format!("SN-N-{i:04}")));
        naive
            .publish(&topic, rumqttc::QoS::AtMostOnce, false, payload)
            .await
            .unwrap();
    }
    // The connection ends: the guard closed it.
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            if events.poll().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the naive client's connection was not closed"
    );
    let record = emu
        .wait_for(
            |r| {
                r.kind == RecordKind::Rejected
                    && r.reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with("boot guard"))
            },
            PATIENCE,
        )
        .await
        .expect("the guard tripped");
    assert!(record.reason.unwrap().contains("quarantined"));

    // Every connection of the customer is refused from now on, even a
    // well-behaved client's.
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let err = client.session_token(&device("SN-AFTER")).await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ConnectionRefused { .. }),
        "{err:?}"
    );
    client.shutdown().await;
}
