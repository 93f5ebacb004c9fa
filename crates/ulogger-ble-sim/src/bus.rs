//! A private `dbus-daemon` for tests and demos, so nothing ever talks to
//! the machine's real system bus.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// How long [`PrivateBus::start`] waits for the daemon's address by default:
/// it prints it within milliseconds, so this only bounds a broken install.
const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `dbus-daemon` of our own on a unix socket in a temporary directory.
///
/// It allows everything to everyone (it is private), is killed when this
/// value is dropped, and its address is what tests and the gateway put in
/// `DBUS_SYSTEM_BUS_ADDRESS`.
///
/// ```no_run
/// # fn main() -> Result<(), ulogger_ble_sim::Error> {
/// let bus = ulogger_ble_sim::PrivateBus::start()?;
/// println!("DBUS_SYSTEM_BUS_ADDRESS={}", bus.address());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
    // Held so the socket's directory outlives the daemon.
    _dir: tempfile::TempDir,
}

/// Settings for [`PrivateBus`]: which daemon to run and how long to wait.
#[derive(Debug, Clone)]
#[must_use]
pub struct PrivateBusBuilder {
    program: PathBuf,
    timeout: Duration,
}

impl Default for PrivateBusBuilder {
    fn default() -> Self {
        Self {
            program: PathBuf::from("dbus-daemon"),
            timeout: DEFAULT_START_TIMEOUT,
        }
    }
}

impl PrivateBusBuilder {
    /// The daemon to run (default `dbus-daemon`, found through `PATH`).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// How long to wait for the daemon to print its address (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the daemon and waits for its address (blocking the thread,
    /// for milliseconds normally and at most the timeout).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the directory, config or process cannot be
    /// made, [`Error::BusStart`] when the daemon exits or prints no address,
    /// and [`Error::Timeout`] when it prints nothing in time (it is killed).
    pub fn start(self) -> Result<PrivateBus, Error> {
        let dir = tempfile::Builder::new().prefix("ulogger-dbus-").tempdir()?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        fs::write(&config, config_text(&socket.display().to_string()))?;
        let log = fs::File::create(dir.path().join("daemon.log"))?;
        let mut child = Command::new(&self.program)
            .arg(format!("--config-file={}", config.display()))
            .args(["--print-address=1", "--nofork", "--nopidfile", "--nosyslog"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let Some(stdout) = child.stdout.take() else {
            kill(&mut child);
            return Err(Error::BusStart("no stdout pipe".into()));
        };
        // A thread, because std offers no read with a timeout on a pipe; it
        // ends by itself once the daemon prints its line or exits.
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("dbus-daemon-address".into())
            .spawn(move || {
                let mut line = String::new();
                let read = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(read.map(|_| line));
            })?;
        let line = match rx.recv_timeout(self.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                kill(&mut child);
                return Err(Error::Io(e));
            }
            Err(_) => {
                kill(&mut child);
                return Err(Error::Timeout("the private bus's address"));
            }
        };
        let address = line.trim().to_owned();
        if address.is_empty() {
            kill(&mut child);
            let log = fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
            return Err(Error::BusStart(format!(
                "dbus-daemon printed no address: {}",
                log.trim()
            )));
        }
        Ok(PrivateBus {
            child,
            address,
            _dir: dir,
        })
    }
}

impl PrivateBus {
    /// Starts `dbus-daemon` from `PATH`, waiting at most 10 s.
    ///
    /// # Errors
    ///
    /// As [`PrivateBusBuilder::start`].
    pub fn start() -> Result<Self, Error> {
        Self::builder().start()
    }

    /// Settings other than the defaults.
    pub fn builder() -> PrivateBusBuilder {
        PrivateBusBuilder::default()
    }

    /// The bus's D-Bus address (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// SIGKILL and reap: the daemon holds nothing worth a clean shutdown, and a
/// reaped child leaves no zombie in a long test run.
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A bus that anyone may own names on and send anything to: it is private
/// to the test, and the fake must be able to own `org.bluez`, which the
/// real system bus's policy reserves for root.
fn config_text(socket: &str) -> String {
    let socket = socket
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"#
    )
}
