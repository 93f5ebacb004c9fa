//! Building a client checks its certificate and key files once and names
//! the file that is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ulogger_cloud::{Client, ErrorKind, FileRole, MqttConfig};
use ulogger_emulator::CertPaths;

fn certs() -> (tempfile::TempDir, CertPaths) {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertPaths::generate(dir.path(), 1).unwrap();
    (dir, certs)
}

#[tokio::test]
async fn matching_files_build_a_client() {
    let (_dir, certs) = certs();
    let config = MqttConfig::new(1)
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    Client::builder(config).build().unwrap();
}

#[tokio::test]
async fn a_key_of_another_certificate_is_a_key_mismatch_naming_both_files() {
    let (_dir, certs) = certs();
    let config = MqttConfig::new(1).client_cert(&certs.client_cert, &certs.server_key);
    let err = Client::builder(config).build().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::KeyMismatch { cert, key }
            if *cert == certs.client_cert && *key == certs.server_key),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("server.pem.key"), "{message}");
    assert!(err.is_invalid_input());
}

#[tokio::test]
async fn garbage_in_place_of_pem_names_the_file_and_its_role() {
    let (dir, certs) = certs();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, b"this is not a certificate\n").unwrap();
    for (config, role) in [
        (
            MqttConfig::new(1).client_cert(&garbage, &certs.client_key),
            FileRole::ClientCertificate,
        ),
        (
            MqttConfig::new(1).client_cert(&certs.client_cert, &garbage),
            FileRole::PrivateKey,
        ),
        (
            MqttConfig::new(1).ca_file(&garbage),
            FileRole::CaCertificate,
        ),
    ] {
        let err = Client::builder(config).build().unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::File { role: r, path, .. } if *r == role && *path == garbage),
            "{role:?}: {err:?}"
        );
        assert!(err.to_string().contains("garbage.pem"), "{err}");
    }
}

#[test]
fn the_async_client_outside_a_runtime_is_an_error_not_a_panic() {
    let err = Client::builder(MqttConfig::new(1)).build().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::NoRuntime), "{err:?}");
}

#[test]
fn tls_client_config_checks_the_files_as_build_does_without_a_runtime() {
    let (_dir, certs) = certs();
    let good = MqttConfig::new(1)
        .ca_file(&certs.ca_cert)
        .client_cert(&certs.client_cert, &certs.client_key);
    let tls = good.tls_client_config().unwrap().expect("TLS is on");
    assert!(tls.client_auth_cert_resolver.has_certs());

    let swapped = MqttConfig::new(1).client_cert(&certs.client_cert, &certs.server_key);
    let err = swapped.tls_client_config().unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::KeyMismatch { .. }),
        "{err:?}"
    );

    let plain = MqttConfig::new(1).security(ulogger_cloud::Security::Plaintext);
    assert!(plain.tls_client_config().unwrap().is_none());
}
