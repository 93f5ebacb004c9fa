//! Exit codes that let scripts tell failures apart, and the one report of
//! a failure a person (or a script) reads.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | unexpected failure (a bug, or an I/O error on the gateway itself) |
//! | 2 | bad input: arguments, files, ids, a log that fails validation, a file or folder the user may not use (permission denied) |
//! | 3 | network failure: could not connect, timed out (also waiting for a boot reply), connection lost |
//! | 4 | the cloud refused: broker refused the connection or a subscription, unusable boot reply |
//! | 130 | interrupted (Ctrl-C), also a long-running command stopped by it (SIGTERM ends those with 0) |
//! | 141 | standard output closed early (`ulogger emulator records \| head -1`), as for SIGPIPE ([`crate::stdout`]) |
//!
//! A failure is one line on stderr, `error: ` and its causes each said
//! once, followed by a `hint: ` line when there is a likely fix. With
//! `--json` it is instead one JSON object on stderr (stdout keeps only
//! results): `{"error": {"kind", "message", "hint", "exit_code"}}`, `kind`
//! being `internal`, `bad_input`, `network`, `refused` or `interrupted`.

use std::process::ExitCode;
use std::sync::OnceLock;

use ulogger_cloud::{ErrorKind, Phase, StoreError};

/// Why a command failed, as far as the exit code is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// Unexpected failure.
    Internal = 1,
    /// Bad input from the user.
    BadInput = 2,
    /// The network failed.
    Network = 3,
    /// The cloud refused.
    Refused = 4,
    /// Stopped by Ctrl-C before the work was done.
    Interrupted = 130,
}

impl Failure {
    /// Every kind, in the order of their codes.
    pub const ALL: [Failure; 5] = [
        Failure::Internal,
        Failure::BadInput,
        Failure::Network,
        Failure::Refused,
        Failure::Interrupted,
    ];

    /// What the exit code means, as the manual pages say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Failure::Internal => {
                "Unexpected failure: a bug, or an I/O error on the gateway itself."
            }
            Failure::BadInput => {
                "Bad input: arguments, settings (an unknown config-file key included), files, ids, a log that fails validation, or a file or folder the user may not use."
            }
            Failure::Network => {
                "Network failure: could not connect, timed out (also waiting for a boot reply), or the connection was lost."
            }
            Failure::Refused => {
                "The cloud refused: the broker refused the connection or a subscription, or the boot reply was unusable."
            }
            Failure::Interrupted => {
                "Interrupted by Ctrl-C (SIGINT); a long-running command (agent, emulator, config watch) stops cleanly first. SIGTERM ends those with 0, as a service manager expects."
            }
        }
    }

    /// The name of the kind in `--json` error reports.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Internal => "internal",
            Failure::BadInput => "bad_input",
            Failure::Network => "network",
            Failure::Refused => "refused",
            Failure::Interrupted => "interrupted",
        }
    }
}

/// Every exit status `ulogger` ends with, and what it means: success,
/// each [`Failure`], and a closed standard output.
pub fn statuses() -> Vec<(i32, &'static str)> {
    let mut all = vec![(0, "Success.")];
    all.extend(Failure::ALL.iter().map(|f| (*f as i32, f.meaning())));
    all.push((
        crate::stdout::BROKEN_PIPE_STATUS,
        "Standard output was closed before the command was done (as by `| head`): it ends quietly, as a process ended by SIGPIPE.",
    ));
    all
}

/// An error that carries its exit code, and what to do about it.
#[derive(Debug)]
pub struct Exit {
    pub failure: Failure,
    pub error: anyhow::Error,
    pub hint: Option<String>,
}

impl Exit {
    pub fn new(failure: Failure, error: impl Into<anyhow::Error>) -> Self {
        Exit {
            failure,
            error: error.into(),
            hint: None,
        }
    }

    /// A failure whose message was already printed (per-item reports).
    pub fn silent(failure: Failure) -> Self {
        Exit::new(failure, anyhow::Error::msg(""))
    }

    #[must_use]
    pub fn with_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl From<anyhow::Error> for Exit {
    fn from(error: anyhow::Error) -> Self {
        Exit::new(Failure::Internal, error)
    }
}

/// What to do about a file or folder the command may not use.
pub const PERMISSION_HINT: &str = "the user running ulogger may not use that file or folder: give it access (chmod, chown, or a group it is in), or run ulogger as a user who has it";

/// True when `error` or one of its causes is an I/O error "permission
/// denied" (EACCES, EPERM), also one wrapped inside another I/O error.
fn permission_denied(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let mut io = cause.downcast_ref::<std::io::Error>();
        while let Some(e) = io {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return true;
            }
            io = e.get_ref().and_then(|inner| inner.downcast_ref());
        }
        false
    })
}

/// A permission problem is the user's to fix (exit 2, with what to do),
/// not an internal error, whichever path reported it.
fn classify_permission(mut exit: Exit) -> Exit {
    if matches!(exit.failure, Failure::Internal | Failure::BadInput)
        && permission_denied(&exit.error)
    {
        exit.failure = Failure::BadInput;
        exit.hint.get_or_insert_with(|| PERMISSION_HINT.to_owned());
    }
    exit
}

/// Prints the error, if any, and maps it to the process exit code.
pub fn report(result: Result<(), Exit>, json: bool) -> ExitCode {
    match result.map_err(classify_permission) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            let message = chain(&exit.error);
            if json {
                eprintln!(
                    "{}",
                    serde_json::json!({"error": {
                        "kind": exit.failure.name(),
                        "message": message,
                        "hint": exit.hint,
                        "exit_code": exit.failure as u8,
                    }})
                );
            } else {
                if !message.is_empty() {
                    eprintln!("error: {message}");
                }
                if let Some(hint) = &exit.hint {
                    eprintln!("hint: {hint}");
                }
            }
            ExitCode::from(exit.failure as u8)
        }
    }
}

/// An error and its causes on one line, each said once: a cause whose
/// text the line already holds (because the error above it quoted it) is
/// left out.
pub fn chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Maps a library error to the exit code that tells what kind it is, with
/// a hint when one is known.
pub fn from_cloud(error: ulogger_cloud::Error) -> Exit {
    let failure = classify(&error);
    let hint = hint(&error);
    match in_user_words(&error) {
        Some(words) => Exit::new(failure, anyhow::anyhow!(words)).with_hint(hint),
        None => Exit::new(failure, error).with_hint(hint),
    }
}

/// A library error said in the user's words where its own would leak
/// internals: the decoder's error for bytes that are not MQTT
/// (`malformed CONNACK: Promised boundary crossed: 768`, kept for -v), or
/// the library's name of a setting (`connect_timeout` for `--timeout`).
fn in_user_words(error: &ulogger_cloud::Error) -> Option<String> {
    match error.kind() {
        ErrorKind::Protocol(detail) => {
            tracing::info!(%detail, "the broker's bytes are not MQTT");
            Some("the broker's answer is not MQTT (-v shows the decoder's error)".to_owned())
        }
        ErrorKind::InvalidConfig { field, reason } => {
            flag_of(field).map(|flag| format!("invalid {flag}: {reason}"))
        }
        _ => None,
    }
}

/// The flag that sets the library's configuration field `field`, for the
/// fields the CLI sets from flags (also from their variables and keys).
fn flag_of(field: &str) -> Option<&'static str> {
    Some(match field {
        "broker" => "--broker",
        "port" => "--port",
        "connections" => "--connections",
        "token_timeout" => "--token-timeout",
        "connect_timeout" | "ack_timeout" => "--timeout",
        "security" => "--plaintext",
        "outbox.dir" => "--outbox",
        "api_token" => "--api-token",
        "base_url" => "--api-url",
        _ => return None,
    })
}

/// Which exit code a library error deserves.
pub fn classify(error: &ulogger_cloud::Error) -> Failure {
    if error.is_invalid_input() {
        Failure::BadInput
    } else if error.is_refusal() {
        Failure::Refused
    } else if error.is_retryable() {
        Failure::Network
    } else {
        match error.kind() {
            ErrorKind::Store(_) => Failure::BadInput,
            // The far end spoke something that is not MQTT (e.g. a TLS
            // broker answering a plaintext CONNECT): the link is unusable,
            // the gateway is not at fault.
            ErrorKind::Protocol(_) => Failure::Network,
            _ => Failure::Internal,
        }
    }
}

/// A library error and its causes on one line.
pub fn message(error: &ulogger_cloud::Error) -> String {
    in_user_words(error).unwrap_or_else(|| chain(&anyhow::Error::new(error.clone())))
}

/// The connection settings a hint may name (set once the command has
/// resolved them).
#[derive(Debug, Clone)]
pub struct HintContext {
    pub plaintext: bool,
    pub customer_id: u32,
    pub group_id: Option<u32>,
    pub prefix: String,
    pub token_timeout_secs: u64,
}

static CONTEXT: OnceLock<HintContext> = OnceLock::new();
static DEVICE: OnceLock<(u32, String)> = OnceLock::new();

/// Remembers the settings hints name.
pub fn remember(context: HintContext) {
    let _ = CONTEXT.set(context);
}

/// Remembers the device (app id, serial) the command acts for.
pub fn remember_device(app_id: u32, serial: &str) {
    let _ = DEVICE.set((app_id, serial.to_owned()));
}

/// The topic the boot reply of the remembered device comes on.
fn boot_reply_topic(context: &HintContext) -> Option<String> {
    let (app_id, serial) = DEVICE.get()?;
    ulogger_cloud::wire::Topics::new(&context.prefix, context.customer_id, context.group_id)
        .ok()?
        .boot_reply(*app_id, serial)
        .ok()
}

/// What a person can do about a library error, for the common mistakes;
/// keyed on the error's kind (and the TLS error under a failed connect).
pub fn hint(error: &ulogger_cloud::Error) -> Option<String> {
    let context = CONTEXT.get();
    let plaintext = context.is_some_and(|c| c.plaintext);
    match error.kind() {
        ErrorKind::Protocol(_) if plaintext => Some(
            "the broker does not answer plaintext MQTT: it probably expects TLS (port 8883); drop --plaintext (and ULOGGER_PLAINTEXT, plaintext in the config file)".to_owned(),
        ),
        ErrorKind::Connect { .. } => connect_hint(error, plaintext),
        ErrorKind::ConnectionRefused { reason } if reason == "not authorized" => {
            let customer = context
                .map(|c| format!(" (now {})", c.customer_id))
                .unwrap_or_default();
            Some(format!(
                "the broker accepts only client ids that start with cust-{{customer id}}-: check --customer-id{customer} against the customer the certificate belongs to"
            ))
        }
        ErrorKind::Timeout(Phase::BootReply) => {
            let topic = context
                .and_then(boot_reply_topic)
                .unwrap_or_else(|| "the boot reply topic".to_owned());
            let secs = context.map_or(15, |c| c.token_timeout_secs);
            if context.is_some_and(|c| c.group_id.is_none()) {
                return Some(format!(
                    "no reply on {topic} within {secs} s: these are the legacy topics without the group level (--legacy-topics), which the uLogger cloud acknowledges but never routes; drop --legacy-topics (and legacy_topics in the config file) unless a broker of your own expects them"
                ));
            }
            Some(format!(
                "no reply on {topic} within {secs} s: check that the cloud knows this customer id, group id and app id, that the certificate's policy allows that topic, or raise --token-timeout"
            ))
        }
        ErrorKind::Store(StoreError::Corrupt { path, .. }) => Some(corrupt_store_hint(path)),
        #[cfg(all(feature = "ble", target_os = "linux"))]
        ErrorKind::Ble { step, .. } => ble_hint(step),
        _ => None,
    }
}

/// What to do about the corrupt session-token store `path`: the command
/// names that very file, so it clears it and not the default store.
pub fn corrupt_store_hint(path: &std::path::Path) -> String {
    let shown = path.display().to_string();
    let plain = shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-~+,:@".contains(c));
    let quoted = if plain {
        shown
    } else {
        format!("'{}'", shown.replace('\'', "'\\''"))
    };
    format!(
        "`ulogger tokens clear --store {quoted}` moves the corrupt file aside and starts empty (devices register again)"
    )
}

fn connect_hint(error: &ulogger_cloud::Error, plaintext: bool) -> Option<String> {
    if plaintext {
        return None;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        // tokio-rustls wraps the TLS error in an io::Error, whose
        // `source` skips it: look inside.
        let io = cause.downcast_ref::<std::io::Error>();
        let tls = cause
            .downcast_ref::<rustls::Error>()
            .or_else(|| io.and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>()));
        if let Some(tls) = tls {
            return Some(tls_hint(tls));
        }
        // The far end hung up in the middle of the TLS handshake: a
        // plaintext broker reading a ClientHello as garbage does that.
        // tokio-rustls says so only in the text ("tls handshake eof"); an
        // EOF later (before CONNACK) is another matter.
        if io.is_some_and(|io| {
            io.kind() == std::io::ErrorKind::UnexpectedEof && io.to_string().contains("handshake")
        }) {
            return Some(NOT_TLS.to_owned());
        }
        source = cause.source();
    }
    None
}

/// What to do about a failed TLS handshake, by who refused: this
/// gateway (the broker's certificate), the broker (an alert: our client
/// certificate), or neither (the far end does not speak TLS).
pub fn tls_hint(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            "the broker's certificate is not signed by a CA this gateway trusts: pass the CA that signed it with --ca FILE (for the emulator, its ca.pem)".to_owned()
        }
        rustls::Error::InvalidCertificate(_) => {
            "the broker's certificate was rejected: check --broker (the name it is issued for) and --ca".to_owned()
        }
        rustls::Error::AlertReceived(_) => {
            "the broker rejected this client certificate: check that --cert and --key are the pair issued for this customer and that the certificate is active".to_owned()
        }
        _ => NOT_TLS.to_owned(),
    }
}

/// A hint for a handshake the far end ended before it began.
pub const NOT_TLS: &str = "the broker did not complete a TLS handshake: if it is a local plaintext broker pass --plaintext, otherwise check --port (8883 for TLS)";

/// What to do about a BLE failure at the BlueZ end, by its step.
#[cfg(all(feature = "ble", target_os = "linux"))]
fn ble_hint(step: &str) -> Option<String> {
    match step {
        "connecting to bluetoothd over D-Bus" => Some(
            "is bluetoothd running (systemctl status bluetooth)? The user needs access to org.bluez on the system bus: the `bluetooth` group on most distributions, or a D-Bus policy allowing org.bluez".to_owned(),
        ),
        "opening the adapter" => Some(
            "no such adapter: check --adapter against `bluetoothctl list` (hci0 is the first)".to_owned(),
        ),
        "starting discovery" => Some(
            "the adapter may be powered off or blocked: `bluetoothctl power on`, `rfkill unblock bluetooth`".to_owned(),
        ),
        _ => None,
    }
}
