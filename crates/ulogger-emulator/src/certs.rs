//! The emulator's private PKI: a CA, a server certificate for 127.0.0.1 and
//! `localhost`, and a client certificate for the customer, all PEM files in
//! one directory that a client (or mosquitto) can point at.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::durable::{write_atomic, Access};
use crate::EmulatorError;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.pem.key";
const SERVER_CERT: &str = "server.pem.crt";
const SERVER_KEY: &str = "server.pem.key";
const CLIENT_CERT: &str = "client.pem.crt";
const CLIENT_KEY: &str = "client.pem.key";

const CA_COMMON_NAME: &str = "uLogger emulator CA";

/// Where the emulator's PEM certificate and key files are.
///
/// Key files are written with mode 0600. The CA's own key lives beside
/// them (`ca.pem.key`) so that [`CertPaths::mint_client_cert`] can issue
/// more client certificates later, also after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// The directory holding all files.
    pub dir: PathBuf,
    /// The CA certificate: clients trust it, the broker verifies client
    /// certificates against it.
    pub ca_cert: PathBuf,
    /// The broker's certificate (SAN: 127.0.0.1, ::1 and localhost).
    pub server_cert: PathBuf,
    /// The broker's private key.
    pub server_key: PathBuf,
    /// A client certificate for the customer (`*.pem.crt`, as the platform
    /// hands them out).
    pub client_cert: PathBuf,
    /// The client certificate's private key (`*.pem.key`).
    pub client_key: PathBuf,
}

impl CertPaths {
    fn in_dir(dir: &Path) -> CertPaths {
        CertPaths {
            dir: dir.to_path_buf(),
            ca_cert: dir.join(CA_CERT),
            server_cert: dir.join(SERVER_CERT),
            server_key: dir.join(SERVER_KEY),
            client_cert: dir.join(CLIENT_CERT),
            client_key: dir.join(CLIENT_KEY),
        }
    }

    /// Generates a fresh CA, server and client certificate in `dir`
    /// (created if missing), replacing any files there.
    ///
    /// The client certificate's common name is `cust-{customer_id}-client`.
    pub fn generate(dir: impl AsRef<Path>, customer_id: u32) -> Result<CertPaths, EmulatorError> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|e| EmulatorError::io("create directory", dir, e))?;
        let paths = CertPaths::in_dir(dir);

        let ca_key = KeyPair::generate().map_err(EmulatorError::CertGeneration)?;
        let ca_params = ca_params();
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(EmulatorError::CertGeneration)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let (server_cert, server_key) = issue(
            &issuer,
            "uLogger emulator broker",
            &["127.0.0.1", "::1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = issue(
            &issuer,
            &format!("cust-{customer_id}-client"),
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        write(
            &paths.dir.join(CA_KEY),
            &issuer.key().serialize_pem(),
            Access::OwnerOnly,
        )?;
        write(&paths.ca_cert, &ca_cert.pem(), Access::Shared)?;
        write(&paths.server_key, &server_key, Access::OwnerOnly)?;
        write(&paths.server_cert, &server_cert, Access::Shared)?;
        write(&paths.client_key, &client_key, Access::OwnerOnly)?;
        write(&paths.client_cert, &client_cert, Access::Shared)?;
        Ok(paths)
    }

    /// Uses the certificates already in `dir` when all of them are there,
    /// otherwise generates new ones. A persistent data directory thus keeps
    /// its certificates across restarts, so configured clients keep working.
    pub(crate) fn load_or_generate(
        dir: &Path,
        customer_id: u32,
    ) -> Result<CertPaths, EmulatorError> {
        let paths = CertPaths::in_dir(dir);
        let all_present = [
            &paths.ca_cert,
            &paths.dir.join(CA_KEY),
            &paths.server_cert,
            &paths.server_key,
            &paths.client_cert,
            &paths.client_key,
        ]
        .iter()
        .all(|p| p.is_file());
        if all_present {
            Ok(paths)
        } else {
            CertPaths::generate(dir, customer_id)
        }
    }

    /// Issues another client certificate from this CA, with the given
    /// common name, into `out_dir` as `{name}.pem.crt` and `{name}.pem.key`
    /// (the name with anything but ASCII letters, digits, `-` and `_`
    /// replaced by `_`). Returns the certificate and key paths.
    pub fn mint_client_cert(
        &self,
        common_name: &str,
        out_dir: impl AsRef<Path>,
    ) -> Result<(PathBuf, PathBuf), EmulatorError> {
        let out_dir = out_dir.as_ref();
        let ca_key_path = self.dir.join(CA_KEY);
        let ca_key_pem = fs::read_to_string(&ca_key_path)
            .map_err(|e| EmulatorError::io("read", &ca_key_path, e))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| EmulatorError::CertFile {
            path: ca_key_path.clone(),
            reason: e.to_string(),
        })?;
        // The issuer is identified by name and key: rebuilding the same
        // parameters with the stored key signs certificates that chain to
        // the CA certificate on disk.
        let issuer = Issuer::new(ca_params(), ca_key);
        let (cert, key) = issue(
            &issuer,
            common_name,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        fs::create_dir_all(out_dir)
            .map_err(|e| EmulatorError::io("create directory", out_dir, e))?;
        let stem = crate::durable::file_safe(common_name);
        let cert_path = out_dir.join(format!("{stem}.pem.crt"));
        let key_path = out_dir.join(format!("{stem}.pem.key"));
        write(&key_path, &key, Access::OwnerOnly)?;
        write(&cert_path, &cert, Access::Shared)?;
        Ok((cert_path, key_path))
    }

    /// A rustls server configuration that presents the server certificate
    /// and requires a client certificate chained to the CA.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, EmulatorError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(&self.ca_cert)? {
            roots.add(cert).map_err(EmulatorError::Tls)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(EmulatorError::ClientVerifier)?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(EmulatorError::Tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(read_certs(&self.server_cert)?, read_key(&self.server_key)?)
            .map_err(EmulatorError::Tls)?;
        Ok(Arc::new(config))
    }

    /// A rustls client configuration that trusts this CA and presents the
    /// customer's client certificate: what a device or gateway uses.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, EmulatorError> {
        client_tls_config(&self.ca_cert, Some((&self.client_cert, &self.client_key)))
    }
}

/// A rustls client configuration (ring provider) trusting the CA
/// certificates in `ca_file`, presenting `client` = (certificate, key) PEM
/// files when given.
pub fn client_tls_config(
    ca_file: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, EmulatorError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_file)? {
        roots.add(cert).map_err(EmulatorError::Tls)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EmulatorError::Tls)?
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(EmulatorError::Tls)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate, if it has one (a small
/// DER walk: the emulator only needs this one field of certificates its
/// TLS stack has already verified).
pub(crate) fn common_name(der: &[u8]) -> Option<String> {
    let (0x30, certificate, _) = tlv(der)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(certificate)? else {
        return None;
    };
    let mut fields = tbs;
    // [0] version is optional; then serial, signature, issuer, validity.
    let (tag, _, rest) = tlv(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..4 {
        fields = tlv(fields)?.2;
    }
    let (0x30, mut names, _) = tlv(fields)? else {
        return None;
    };
    while !names.is_empty() {
        let (_, mut set, rest) = tlv(names)?;
        names = rest;
        while !set.is_empty() {
            let (_, attribute, rest) = tlv(set)?;
            set = rest;
            let (0x06, oid, value) = tlv(attribute)? else {
                continue;
            };
            // 2.5.4.3: commonName.
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = tlv(value)?;
                return Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    None
}

/// One DER element: (tag, contents, what follows).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The customer a client certificate's common name gives,
/// `cust-{customer}-...` (as the emulator and the platform issue them).
pub(crate) fn customer_of(common_name: &str) -> Option<u32> {
    let rest = common_name.strip_prefix("cust-")?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, "uLogger emulator");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Issues a leaf certificate; returns (certificate PEM, key PEM).
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String), EmulatorError> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).map_err(EmulatorError::CertGeneration)?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().map_err(EmulatorError::CertGeneration)?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(EmulatorError::CertGeneration)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(path: &Path, pem: &str, access: Access) -> Result<(), EmulatorError> {
    write_atomic(path, pem.as_bytes(), access).map_err(|e| EmulatorError::io("write", path, e))
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, EmulatorError> {
    let bad = |reason: String| EmulatorError::CertFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE item".into()));
    }
    Ok(certs)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, EmulatorError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| EmulatorError::CertFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_into_tls_configs() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::generate(dir.path(), 42).unwrap();
        paths.server_config().unwrap();
        paths.client_config().unwrap();
        let again = CertPaths::load_or_generate(dir.path(), 42).unwrap();
        assert_eq!(again, paths);
        // Reused, not regenerated.
        assert_eq!(
            fs::read(&again.ca_cert).unwrap(),
            fs::read(&paths.ca_cert).unwrap()
        );
    }

    #[test]
    fn minted_certificates_land_in_the_asked_directory() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::generate(dir.path().join("certs"), 7).unwrap();
        let (cert, key) = paths
            .mint_client_cert("cust-7-gw/2", dir.path().join("more"))
            .unwrap();
        assert!(cert.ends_with("cust-7-gw_2.pem.crt"));
        client_tls_config(&paths.ca_cert, Some((&cert, &key))).unwrap();
    }

    #[test]
    fn the_common_name_and_its_customer_are_read_from_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CertPaths::generate(dir.path(), 42).unwrap();
        let der = read_certs(&paths.client_cert).unwrap().remove(0);
        let name = common_name(&der).unwrap();
        assert_eq!(name, "cust-42-client");
        assert_eq!(customer_of(&name), Some(42));
        let (other, _) = paths.mint_client_cert("cust-43-ci", dir.path()).unwrap();
        let der = read_certs(&other).unwrap().remove(0);
        assert_eq!(common_name(&der).as_deref(), Some("cust-43-ci"));
        for bad in [
            "cust--x",
            "cust-42",
            "client",
            "cust-4x-a",
            "cust-99999999999-a",
        ] {
            assert_eq!(customer_of(bad), None, "{bad}");
        }
        // Any bytes: an answer or none, never a panic.
        let whole = der.as_ref().to_vec();
        for cut in 0..whole.len() {
            let _ = common_name(&whole[..cut]);
        }
        let _ = common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = client_tls_config(&missing, None).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }
}
