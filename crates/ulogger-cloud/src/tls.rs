//! Loading certificates and keys into a rustls client configuration.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, ErrorKind, FileRole};

fn file_error(role: FileRole, path: &Path, reason: impl Into<String>) -> Error {
    ErrorKind::File {
        role,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
    .into()
}

fn read(role: FileRole, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        Error::with_source(
            ErrorKind::File {
                role,
                path: path.to_path_buf(),
                reason: format!("cannot be read: {e}"),
            },
            e,
        )
    })
}

fn certificates(role: FileRole, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(role, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(role, path, format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            role,
            path,
            "holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(FileRole::PrivateKey, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        file_error(
            FileRole::PrivateKey,
            path,
            format!("holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A TLS 1.2+ client configuration trusting `ca_file` (or the public web
/// roots) and presenting `client` (certificate, key) when given.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<ClientConfig, Error> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in certificates(FileRole::CaCertificate, path)? {
                roots.add(cert).map_err(|e| {
                    file_error(
                        FileRole::CaCertificate,
                        path,
                        format!("holds a certificate that cannot be a trust anchor: {e}"),
                    )
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::config("security", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let chain = certificates(FileRole::ClientCertificate, cert_path)?;
            let key = private_key(key_path)?;
            // rustls compares the key with the certificate here, so a
            // swapped key file is reported by name before anything connects.
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => ErrorKind::KeyMismatch {
                        cert: cert_path.to_path_buf(),
                        key: key_path.to_path_buf(),
                    }
                    .into(),
                    other => file_error(
                        FileRole::PrivateKey,
                        key_path,
                        format!("cannot be used with {}: {other}", cert_path.display()),
                    ),
                })?
        }
    };
    Ok(config)
}
