//! Test fixtures for this and other crates' tests (feature `testing`):
//! a private [`Mosquitto`] broker, so that tests can run against a real
//! broker as well as the emulator and the two cannot drift apart.
//!
//! When mosquitto is not installed, [`Mosquitto::start`] returns `None`
//! and the test should print a notice and return; under `CI=true` it
//! panics instead, so CI fails rather than silently skipping.

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::CertPaths;

/// How long mosquitto may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at a free port (another process may take the one we picked).
const PORT_ATTEMPTS: usize = 5;

/// Whether a mosquitto listener uses TLS.
#[derive(Debug, Clone)]
pub enum MosquittoTls {
    /// Plain MQTT.
    Off,
    /// TLS with these files; client certificates chained to `ca_cert`
    /// are required.
    Mutual(CertPaths),
}

/// A private mosquitto on 127.0.0.1, killed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a mosquitto with anonymous access on a free port and waits
    /// until it accepts connections.
    ///
    /// Returns `None` (after printing a notice) when mosquitto is not
    /// installed.
    ///
    /// # Panics
    ///
    /// When mosquitto is missing and the environment has `CI=true`, or
    /// when it is installed but does not start.
    pub fn start(tls: MosquittoTls) -> Option<Mosquitto> {
        Mosquitto::start_with_config(tls, "")
    }

    /// [`Mosquitto::start`] with `extra_config` appended to the generated
    /// configuration file: whole lines of mosquitto.conf, such as
    /// `set_tcp_nodelay true` for latency measurements. An option that
    /// mosquitto rejects makes the start panic with its log.
    ///
    /// # Panics
    ///
    /// As [`Mosquitto::start`].
    pub fn start_with_config(tls: MosquittoTls, extra_config: &str) -> Option<Mosquitto> {
        let Some(binary) = find_mosquitto() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "mosquitto is required under CI=true but was not found \
                     (install it: apt-get install -y mosquitto; or set MOSQUITTO=/path)"
                );
            }
            eprintln!("mosquitto not found: skipping the mosquitto half of this test");
            return None;
        };
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match start_once(&binary, &tls, extra_config) {
                Ok(mosquitto) => return Some(mosquitto),
                Err(e) => last_error = e,
            }
        }
        panic!("mosquitto did not start: {last_error}");
    }

    /// Starts a plaintext mosquitto ([`Mosquitto::start`] with
    /// [`MosquittoTls::Off`]).
    pub fn plaintext() -> Option<Mosquitto> {
        Mosquitto::start(MosquittoTls::Off)
    }

    /// Starts a mutual-TLS mosquitto with the given certificates.
    pub fn mutual_tls(certs: &CertPaths) -> Option<Mosquitto> {
        Mosquitto::start(MosquittoTls::Mutual(certs.clone()))
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mosquitto process's id (to read its memory use, for example).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Mosquitto's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mosquitto binary: `$MOSQUITTO`, else `mosquitto` on `PATH` or in
/// the sbin directories where distributions install it.
pub fn find_mosquitto() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOSQUITTO") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("mosquitto"))
        .find(|candidate| candidate.is_file())
}

fn start_once(binary: &Path, tls: &MosquittoTls, extra_config: &str) -> Result<Mosquitto, String> {
    let dir = tempfile::Builder::new()
        .prefix("mosquitto-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    // Pick a port the OS considers free; mosquitto may still lose a race
    // for it, which the caller retries.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut conf = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
         log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
    );
    if running_as_root(dir.path()) {
        // Otherwise mosquitto drops to the `mosquitto` user, which cannot
        // read our 0600 key files.
        conf.push_str("user root\n");
    }
    if let MosquittoTls::Mutual(certs) = tls {
        conf.push_str(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            certs.ca_cert.display(),
            certs.server_cert.display(),
            certs.server_key.display()
        ));
    }
    if !extra_config.is_empty() {
        conf.push_str(extra_config);
        conf.push('\n');
    }
    let conf_path = dir.path().join("mosquitto.conf");
    fs::File::create(&conf_path)
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .map_err(|e| e.to_string())?;
    let log = dir.path().join("mosquitto.log");
    let log_file = fs::File::create(&log).map_err(|e| e.to_string())?;
    let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut mosquitto = Mosquitto {
        child,
        addr,
        log,
        _dir: dir,
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = mosquitto.child.try_wait() {
            return Err(format!("mosquitto exited ({status}): {}", mosquitto.log()));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(mosquitto);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "mosquitto not accepting connections: {}",
                mosquitto.log()
            ));
        }
        // Polling for readiness, not synchronising on time.
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(unix)]
fn running_as_root(owned_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(owned_dir).is_ok_and(|m| m.uid() == 0)
}

#[cfg(not(unix))]
fn running_as_root(_: &Path) -> bool {
    false
}
