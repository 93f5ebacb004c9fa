//! The firmware ELF upload (PROTOCOL §11) end to end against the
//! emulator, over mutual TLS: the request over MQTT, the PUT over HTTPS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::firmware::{self, VERSION};
use support::*;
use ulogger_cloud::{Client, ElfUpload, ErrorKind, Phase};
use ulogger_emulator::{Emulator, RecordKind, Verdict};

const DEVICE_TYPE: &str = "test board";

fn upload() -> ElfUpload {
    ElfUpload::new(APP, DEVICE_TYPE, VERSION, "abc1234")
        .branch("main")
        .max_backoff(Duration::from_millis(50))
}

/// The compiled test firmware, or `None` when the test is skipped.
fn firmware_elf(dir: &tempfile::TempDir, with_modules: bool) -> Option<Vec<u8>> {
    firmware::compile(dir.path(), with_modules).map(|path| std::fs::read(path).unwrap())
}

fn request_records(emu: &Emulator) -> usize {
    records_of(emu, RecordKind::ElfUploadRequest).len()
}

#[tokio::test]
async fn an_elf_is_stored_by_firmware_and_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = firmware_elf(&dir, true) else {
        return;
    };
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let seen = sent.clone();
    let upload = upload().progress(move |done, total| {
        assert!(done <= total);
        seen.store(done, Ordering::SeqCst);
    });

    let receipt = client.upload_elf(&upload, elf.clone()).await.unwrap();

    assert_eq!((receipt.status, receipt.attempts), (200, 1));
    assert_eq!(receipt.size, elf.len());
    assert!(receipt.elf.has_debug_modules);
    assert_eq!(
        receipt.topic,
        format!("upload/v0/firmware/{CUSTOMER}/{DEVICE_TYPE}")
    );
    assert!(receipt.upload_host.starts_with("https://127.0.0.1:"));
    assert_eq!(sent.load(Ordering::SeqCst), elf.len() as u64);
    let stored = emu.find_elf(APP, DEVICE_TYPE, VERSION).expect("stored");
    assert_eq!(emu.read_elf(&stored).unwrap(), elf);
    assert_eq!(
        (stored.git_hash.as_str(), stored.branch.as_str()),
        ("abc1234", "main")
    );
    assert_eq!(stored.upload_id, receipt.upload_id);
    let request = &records_of(&emu, RecordKind::ElfUploadRequest)[0];
    assert_eq!((request.verdict, request.app_id), (Verdict::Ok, Some(APP)));
    assert!(records_of(&emu, RecordKind::ElfUpload)[0].is_ok());
    client.shutdown().await;
}

#[tokio::test]
async fn another_customers_certificate_is_refused_with_403_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = firmware_elf(&dir, true) else {
        return;
    };
    let emu = tls_emulator();
    let certs = emu.certs().unwrap();
    let (cert, key) = certs.mint_client_cert("cust-4343-ci", dir.path()).unwrap();
    let client = Client::builder(config_for(&emu).client_cert(cert, key))
        .build()
        .unwrap();

    let err = client.upload_elf(&upload(), elf).await.unwrap_err();

    match err.kind() {
        ErrorKind::ElfUploadRefused {
            status: 403,
            message,
            attempts: 1,
        } => assert!(message.contains("customer 4343"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(err.is_refusal() && !err.is_retryable());
    assert!(
        err.to_string().contains("belongs to another customer"),
        "{err}"
    );
    assert_eq!(err.http_status(), Some(403));
    assert!(emu.stored_elfs().is_empty());
    assert_eq!(request_records(&emu), 1);
    client.shutdown().await;
}

#[tokio::test]
async fn an_outage_is_retried_with_fresh_urls_until_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = firmware_elf(&dir, true) else {
        return;
    };
    let emu = tls_emulator();
    emu.faults().fail_elf_puts(2);
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let receipt = client.upload_elf(&upload(), elf.clone()).await.unwrap();

    assert_eq!(receipt.attempts, 3);
    assert_eq!(request_records(&emu), 3, "a new URL for each attempt");
    assert_eq!(emu.stored_elfs().len(), 1);
    assert_eq!(emu.faults().elf_snapshot().put_outages, 0);
    client.shutdown().await;
}

#[tokio::test]
async fn an_outage_longer_than_the_retries_fails_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = firmware_elf(&dir, true) else {
        return;
    };
    let emu = tls_emulator();
    emu.faults().fail_elf_puts(10);
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let err = client
        .upload_elf(&upload().retries(1), elf)
        .await
        .unwrap_err();

    assert!(
        matches!(
            err.kind(),
            ErrorKind::ElfUploadRefused {
                status: 503,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(emu.stored_elfs().is_empty());
    client.shutdown().await;
}

#[tokio::test]
async fn no_answer_times_out_once_without_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = firmware_elf(&dir, true) else {
        return;
    };
    let emu = tls_emulator();
    emu.faults().ignore_elf_upload_requests(5);
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let err = client
        .upload_elf(&upload().reply_timeout(Duration::from_millis(300)), elf)
        .await
        .unwrap_err();

    assert_eq!(err.timeout_phase(), Some(Phase::UploadUrl), "{err:?}");
    assert!(err.to_string().contains("upload URL"), "{err}");
    assert_eq!(request_records(&emu), 1);
    client.shutdown().await;
}

#[tokio::test]
async fn what_cannot_be_uploaded_is_refused_before_anything_is_sent() {
    let emu = tls_emulator();
    let client = Client::builder(config_for(&emu)).build().unwrap();

    let err = client
        .upload_elf(&upload(), b"\x02\x00firmware.bin".to_vec())
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidElf(_)), "{err:?}");
    assert!(err.is_invalid_input());

    let bad_type = ElfUpload::new(APP, "board/#", VERSION, "abc1234");
    let elf = b"\x7fELF\x01\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x28\0\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x34\0\x20\0\0\0\x28\0\0\0\0\0".to_vec();
    let err = client.upload_elf(&bad_type, elf).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidTopic(_)), "{err:?}");

    assert_eq!(request_records(&emu), 0);
    client.shutdown().await;
}

#[test]
fn the_blocking_client_uploads_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = firmware_elf(&dir, false) else {
        return;
    };
    let emu = tls_emulator();
    let client = ulogger_cloud::blocking::Client::builder(config_for(&emu))
        .build()
        .unwrap();

    let receipt = client.upload_elf(&upload(), elf.clone()).unwrap();

    assert!(!receipt.elf.has_debug_modules);
    let stored = emu.find_elf(APP, DEVICE_TYPE, VERSION).expect("stored");
    assert_eq!(emu.read_elf(&stored).unwrap(), elf);
    client.shutdown();
}
