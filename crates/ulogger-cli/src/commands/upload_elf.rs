//! `ulogger upload-elf`: a firmware build's ELF to the cloud (PROTOCOL
//! §11), from CI or a desk, so that the cloud can decode the binary logs
//! of devices running that build.
//!
//! Settings come, highest first, from flags and their `ULOGGER_*`
//! variables; the reference upload tool's variables
//! (`ULOGGER_APPLICATION_ID`, `ULOGGER_CERT_DATA`, `ULOGGER_KEY_DATA`;
//! `ULOGGER_CUSTOMER_ID` and `ULOGGER_DEVICE_TYPE` are ours too); its
//! project JSON (`--project FILE`, paths in it relative to
//! `--project-dir`); then the config file. Everything is checked before
//! anything connects.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use ulogger_cloud::wire::{self, ElfKind, ElfSummary};
use ulogger_cloud::{Client, ElfUpload, ErrorKind, Phase};

use crate::connection::ConnectionArgs;
use crate::exit::{self, Exit, Failure};
use crate::files;
use crate::signal::StopSignal;
use crate::Global;

/// The largest ELF read: far above any firmware image with full debug
/// information.
const MAX_ELF: usize = 256 * 1024 * 1024;
/// From this size on, a terminal shows a progress bar.
const PROGRESS_FROM: usize = 1024 * 1024;

/// Arguments of `ulogger upload-elf`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// The reference upload tool's project file (JSON with customer_id,
    /// group_id, application_id, device_type, version, git_hash, branch,
    /// file, cert_path, key_path). Flags and variables override it.
    #[arg(long, env = "ULOGGER_PROJECT", value_name = "FILE")]
    project: Option<PathBuf>,
    /// The directory the project file's paths (file, cert_path, key_path)
    /// are relative to [default: the current directory].
    #[arg(long, value_name = "DIR", requires = "project")]
    project_dir: Option<PathBuf>,
    /// Application id [or ULOGGER_APPLICATION_ID, the project's application_id].
    #[arg(long, env = "ULOGGER_APP_ID")]
    app_id: Option<u32>,
    /// Device type (board name), as the device reports it.
    #[arg(long, env = "ULOGGER_DEVICE_TYPE")]
    device_type: Option<String>,
    /// The firmware's version string, as the device reports it: what the
    /// cloud matches logs to this ELF by [or the project's version].
    #[arg(long, env = "ULOGGER_GIT_VERSION", value_name = "VERSION")]
    git_version: Option<String>,
    /// The firmware's short git hash, as the device reports it.
    #[arg(long, env = "ULOGGER_GIT_HASH", value_name = "HASH")]
    git_hash: Option<String>,
    /// The branch the firmware was built from [default: none].
    #[arg(long, env = "ULOGGER_BRANCH")]
    branch: Option<String>,
    /// Seconds to wait for the cloud's upload URL [default: 30].
    #[arg(long, env = "ULOGGER_REPLY_TIMEOUT", value_name = "SECS", value_parser = crate::duration::secs)]
    reply_timeout: Option<u64>,
    /// Times a passing failure (lost connection, a storage outage) is
    /// retried, each with a new upload URL [default: 3].
    #[arg(long, env = "ULOGGER_RETRIES", value_name = "N")]
    retries: Option<u32>,
    /// The linked firmware image (.elf, .axf, .out) [or the project's file].
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
}

const EXAMPLES: &str = "Examples:
  ulogger upload-elf --customer-id 42 --cert ci.pem.crt --key ci.pem.key \\
      --app-id 7 --device-type sensor-board --git-version v1.2.0 --git-hash abcdef0 build/fw.elf
  ulogger upload-elf --project ulogger.json --project-dir .     # the reference tool's project file
  ULOGGER_CERT_DATA=\"$(cat ci.pem.crt)\" ULOGGER_KEY_DATA=\"$(cat ci.pem.key)\" ulogger upload-elf ...";

/// The reference tool's project file: every key optional here (a missing
/// one may come from elsewhere); ids as numbers or decimal strings.
#[derive(Debug, Default)]
struct Project {
    customer_id: Option<u32>,
    group_id: Option<u32>,
    application_id: Option<u32>,
    device_type: Option<String>,
    version: Option<String>,
    git_hash: Option<String>,
    branch: Option<String>,
    file: Option<PathBuf>,
    cert_path: Option<PathBuf>,
    key_path: Option<PathBuf>,
}

impl Project {
    fn read(path: &Path, dir: &Path) -> Result<Project, Exit> {
        let bad = |e: anyhow::Error| {
            Exit::new(
                Failure::BadInput,
                e.context(format!("project file {}", path.display())),
            )
        };
        let bytes = files::read_limited(path, files::DEVICE_INFO_LIMIT, "a project file")
            .map_err(|e| bad(e.into()))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(anyhow!("is not JSON: {e}")))?;
        let Value::Object(object) = value else {
            return Err(bad(anyhow!("is not a JSON object")));
        };
        let id = |key: &str| -> Result<Option<u32>, Exit> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| bad(anyhow!("{key} {n} is not an id (0 to 4294967295)"))),
                Some(Value::String(s)) => s
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(anyhow!("{key} {s:?} is not an id (0 to 4294967295)"))),
                Some(other) => Err(bad(anyhow!("{key} is {other}, not an id"))),
            }
        };
        let text = |key: &str| -> Result<Option<String>, Exit> {
            match object.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(anyhow!("{key} is {other}, not a string"))),
            }
        };
        let path_in_dir = |key: &str| -> Result<Option<PathBuf>, Exit> {
            Ok(text(key)?.filter(|s| !s.is_empty()).map(|s| dir.join(s)))
        };
        Ok(Project {
            customer_id: id("customer_id")?,
            group_id: id("group_id")?,
            application_id: id("application_id")?,
            device_type: text("device_type")?,
            version: text("version")?,
            git_hash: text("git_hash")?,
            branch: text("branch")?,
            file: path_in_dir("file")?,
            cert_path: path_in_dir("cert_path")?,
            key_path: path_in_dir("key_path")?,
        })
    }
}

/// Everything the upload needs, resolved and checked.
struct Plan {
    file: PathBuf,
    elf: Vec<u8>,
    summary: ElfSummary,
    upload: ElfUpload,
    customer_id: u32,
    warnings: Vec<String>,
    /// Keeps the certificate written from `ULOGGER_CERT_DATA` until the
    /// upload is over.
    _pem_dir: Option<PemDir>,
}

/// Uploads the ELF; every failure exits non-zero with its cause and a hint.
pub fn run(global: Global, args: Args) -> Result<(), Exit> {
    let (plan, connection) = plan(&args)?;
    let file = args.connection.file()?;
    let config = connection.mqtt_config(file)?;
    report_checks(global, &plan);
    let bar = (!global.json && plan.elf.len() >= PROGRESS_FROM && std::io::stderr().is_terminal())
        .then(|| {
            let bar = ProgressBar::new(plan.elf.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message("waiting for the upload URL");
            bar
        });
    let mut upload = plan.upload.clone();
    if let Some(bar) = &bar {
        let bar = bar.clone();
        upload = upload.progress(move |sent, total| {
            bar.set_length(total);
            bar.set_position(sent);
            bar.set_message("uploading");
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .map_err(Exit::from)?;
    // Ctrl-C or SIGTERM ends the upload cleanly, so that the key written
    // from ULOGGER_KEY_DATA is removed with its directory.
    let stop = {
        let _runtime = runtime.enter();
        StopSignal::listen()?
    };
    let result = runtime.block_on(async {
        let fail = |e| failure(e, &plan, &args);
        let client = Client::builder(config).build().map_err(fail)?;
        let result = tokio::select! {
            result = async {
                client.connected().await?;
                client.upload_elf(&upload, plan.elf.clone()).await
            } => result.map_err(fail),
            stopped = stop.wait() => stopped.and(Err(Exit::new(
                Failure::Interrupted,
                anyhow!("interrupted: the ELF upload did not finish (the cloud may or may not have it)"),
            ).with_hint(Some("run the same upload again: a later upload of the same firmware replaces the earlier".into())))),
        };
        client.shutdown().await;
        result
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let receipt = result?;
    if global.json {
        outln!(
            "{}",
            json!({
                "file": plan.file,
                "size": receipt.size,
                "class": receipt.elf.class.as_str(),
                "machine": receipt.elf.machine,
                "debug_modules": receipt.elf.has_debug_modules,
                "customer_id": plan.customer_id,
                "application_id": plan.upload.application_id(),
                "device_type": plan.upload.device_type(),
                "version": plan.upload.version(),
                "git_hash": plan.upload.git_hash(),
                "topic": receipt.topic,
                "upload_id": receipt.upload_id,
                "upload_host": receipt.upload_host,
                "status": receipt.status,
                "attempts": receipt.attempts,
                "warnings": plan.warnings,
            })
        );
    } else {
        let tries = if receipt.attempts == 1 {
            String::new()
        } else {
            format!(" after {} attempts", receipt.attempts)
        };
        outln!(
            "{}: uploaded {} bytes to {}{tries}",
            plan.file.display(),
            receipt.size,
            receipt.upload_host
        );
    }
    Ok(())
}

/// Resolves and checks every setting and the ELF, without connecting.
fn plan(args: &Args) -> Result<(Plan, ConnectionArgs), Exit> {
    let file = args.connection.file()?;
    let cwd = PathBuf::from(".");
    let project = match &args.project {
        Some(path) => Project::read(path, args.project_dir.as_deref().unwrap_or(&cwd))?,
        None => Project::default(),
    };
    let bad = |message: String| Exit::new(Failure::BadInput, anyhow!(message));
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());

    let app_id = match args.app_id {
        Some(id) => Some(id),
        None => match env("ULOGGER_APPLICATION_ID") {
            Some(text) => Some(text.trim().parse::<u32>().map_err(|_| {
                bad(format!("ULOGGER_APPLICATION_ID {text:?} is not an id (0 to 4294967295)"))
            })?),
            None => project.application_id.or(file.app_id),
        },
    }
    .ok_or_else(|| {
        bad("no application id: pass --app-id, set ULOGGER_APP_ID or ULOGGER_APPLICATION_ID, application_id in the project file or app_id in the config file".into())
    })?;
    let pick =
        |flag: &Option<String>, from_project: &Option<String>, from_file: &Option<String>| {
            flag.clone()
                .or_else(|| from_project.clone())
                .or_else(|| from_file.clone())
        };
    let device_type = pick(&args.device_type, &project.device_type, &file.device_type)
        .ok_or_else(|| bad("no device type: pass --device-type, set ULOGGER_DEVICE_TYPE, device_type in the project or config file".into()))?;
    let version = pick(&args.git_version, &project.version, &file.git_version)
        .ok_or_else(|| bad("no firmware version: pass --git-version (the version string the device reports), set ULOGGER_GIT_VERSION, version in the project file or git_version in the config file".into()))?;
    let git_hash = pick(&args.git_hash, &project.git_hash, &file.git_hash)
        .ok_or_else(|| bad("no git hash: pass --git-hash (the short hash the device reports), set ULOGGER_GIT_HASH, git_hash in the project or config file".into()))?;
    let branch = args
        .branch
        .clone()
        .or(project.branch.clone())
        .unwrap_or_default();
    wire::validate_device_type(&device_type).map_err(|e| {
        bad(format!(
            "device type {device_type:?} cannot go into the upload topic: {e}"
        ))
    })?;
    if version.trim().is_empty() || git_hash.trim().is_empty() {
        return Err(bad(
            "the firmware version and git hash must not be empty: the cloud matches logs by them"
                .into(),
        ));
    }

    let path = args.file.clone().or(project.file.clone()).ok_or_else(|| {
        bad(
            "no ELF file: give it as the argument, or as file in the project file (--project)"
                .into(),
        )
    })?;
    let elf = files::read_limited(&path, MAX_ELF, "an ELF")
        .with_context(|| path.display().to_string())
        .map_err(|e| Exit::new(Failure::BadInput, e))?;
    let summary = wire::inspect_elf(&elf).map_err(|e| {
        let hint = elf.first().filter(|&&b| b == b'{').map(|_| {
            "this looks like a project file: give it with --project FILE (--json asks for a JSON result)".to_owned()
        });
        Exit::new(Failure::BadInput, anyhow!("{}: {e}", path.display())).with_hint(hint)
    })?;
    let mut warnings = Vec::new();
    if !summary.has_debug_modules {
        warnings.push(
            "the ELF has no .ulogger.debug_modules section: logs will decode, but without module names (is the uLogger agent linked in?)".to_owned(),
        );
    }
    if summary.kind == ElfKind::Relocatable {
        warnings.push("the ELF is an object file before linking (ET_REL): its addresses are not the device's; upload the linked image".into());
    }
    if !wire::elf_contains(&elf, &version) {
        warnings.push(format!(
            "the version string {version:?} does not occur in the ELF: check that it is what this build's devices report"
        ));
    }

    // The connection: flags and variables first, then the project file,
    // then (inside `mqtt_config`) the config file.
    let mut connection = args.connection.clone();
    connection.customer_id = connection.customer_id.or(project.customer_id);
    if connection.group_id.is_none() && connection.legacy_topics.is_none() {
        connection.group_id = project.group_id;
    }
    let pem_dir = certificate(&mut connection, &project)?;
    let customer_id = connection
        .customer_id
        .or(file.customer_id)
        .ok_or_else(|| bad("no customer id: pass --customer-id, set ULOGGER_CUSTOMER_ID, customer_id in the project or config file".into()))?;

    let mut upload = ElfUpload::new(app_id, device_type, version, git_hash).branch(branch);
    if let Some(secs) = args.reply_timeout {
        if secs == 0 {
            return Err(bad("--reply-timeout must be at least 1 s".into()));
        }
        upload = upload.reply_timeout(Duration::from_secs(secs));
    }
    if let Some(retries) = args.retries {
        upload = upload.retries(retries);
    }
    Ok((
        Plan {
            file: path,
            elf,
            summary,
            upload,
            customer_id,
            warnings,
            _pem_dir: pem_dir,
        },
        connection,
    ))
}

/// The client certificate: `--cert`/`--key` (or `ULOGGER_CERT`/`ULOGGER_KEY`),
/// else `ULOGGER_CERT_DATA`/`ULOGGER_KEY_DATA` (PEM text, written to a
/// private temporary directory), else the project's `cert_path`/`key_path`,
/// else the config file's. A pair comes from one place.
fn certificate(connection: &mut ConnectionArgs, project: &Project) -> Result<Option<PemDir>, Exit> {
    if connection.cert.is_some() || connection.key.is_some() {
        return Ok(None);
    }
    let data = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    match (data("ULOGGER_CERT_DATA"), data("ULOGGER_KEY_DATA")) {
        (Some(cert), Some(key)) => {
            let dir = PemDir::create()
                .context(
                    "cannot write ULOGGER_CERT_DATA and ULOGGER_KEY_DATA to a temporary directory",
                )
                .map_err(Exit::from)?;
            let (cert_path, key_path) = dir
                .write(&cert, &key)
                .context(
                    "cannot write ULOGGER_CERT_DATA and ULOGGER_KEY_DATA to a temporary directory",
                )
                .map_err(Exit::from)?;
            connection.cert = Some(cert_path);
            connection.key = Some(key_path);
            return Ok(Some(dir));
        }
        (Some(_), None) => {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow!(
                    "ULOGGER_CERT_DATA is set but ULOGGER_KEY_DATA is not: set both (PEM text)"
                ),
            ))
        }
        (None, Some(_)) => {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow!(
                    "ULOGGER_KEY_DATA is set but ULOGGER_CERT_DATA is not: set both (PEM text)"
                ),
            ))
        }
        (None, None) => {}
    }
    match (&project.cert_path, &project.key_path) {
        (Some(cert), Some(key)) => {
            connection.cert = Some(cert.clone());
            connection.key = Some(key.clone());
        }
        (None, None) => {}
        _ => {
            return Err(Exit::new(
                Failure::BadInput,
                anyhow!("the project file names only one of cert_path and key_path: give both"),
            ))
        }
    }
    Ok(None)
}

/// Says what was checked: what the device must report, and warnings.
fn report_checks(global: Global, plan: &Plan) {
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    if global.json {
        return;
    }
    let summary = &plan.summary;
    eprintln!(
        "{}: {} {} {}, {} bytes",
        plan.file.display(),
        summary.class.as_str(),
        if summary.little_endian {
            "little-endian"
        } else {
            "big-endian"
        },
        summary.machine,
        summary.size,
    );
    eprintln!(
        "devices must report version {:?} and git hash {:?} (device type {:?}, application {}) for the cloud to decode their logs with this ELF",
        plan.upload.version(),
        plan.upload.git_hash(),
        plan.upload.device_type(),
        plan.upload.application_id(),
    );
}

/// The library's error, with what to do about it in this command (the
/// error itself says what happened).
fn failure(error: ulogger_cloud::Error, plan: &Plan, args: &Args) -> Exit {
    let upload_hint = match error.kind() {
        ErrorKind::ElfUploadRefused { status: 403, .. } => Some(format!(
            "use the certificate issued to customer {} (--cert and --key, ULOGGER_CERT_DATA and ULOGGER_KEY_DATA, or the project's cert_path and key_path), or that certificate's customer id (--customer-id)",
            plan.customer_id
        )),
        ErrorKind::Timeout(Phase::UploadUrl) => Some(format!(
            "if the cloud is only slow, raise --reply-timeout (now {} s)",
            args.reply_timeout.unwrap_or(30)
        )),
        ErrorKind::ElfUploadRefused { .. } | ErrorKind::ElfUploadConnect { .. }
            if error.is_retryable() =>
        {
            Some(format!(
                "raise --retries (now {}) to ride out a longer outage",
                args.retries.unwrap_or(3)
            ))
        }
        _ => None,
    };
    let exit = exit::from_cloud(error);
    if upload_hint.is_some() && exit.hint.is_none() {
        return exit.with_hint(upload_hint);
    }
    exit
}

/// A private temporary directory for PEM text from the environment;
/// removed (files and all) when dropped.
struct PemDir {
    path: PathBuf,
}

impl PemDir {
    fn create() -> std::io::Result<PemDir> {
        let base = std::env::temp_dir();
        for _ in 0..16 {
            let path = base.join(format!("ulogger-pem-{:016x}", rand_suffix()));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(PemDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("no free temporary directory name"))
    }

    fn write(&self, cert: &str, key: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert_path = self.path.join("certificate.pem.crt");
        let key_path = self.path.join("private.pem.key");
        for (path, text) in [(&cert_path, cert), (&key_path, key)] {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::io::Write::write_all(&mut options.open(path)?, text.as_bytes())?;
        }
        Ok((cert_path, key_path))
    }
}

impl Drop for PemDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(text: &str) -> Result<Project, Exit> {
        let dir = std::env::temp_dir().join(format!("ulogger-project-test-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.json");
        std::fs::write(&path, text).unwrap();
        let read = Project::read(&path, Path::new("/proj"));
        let _ = std::fs::remove_dir_all(&dir);
        read
    }

    #[test]
    fn the_reference_project_file_is_read_with_paths_in_its_directory() {
        let p = project(
            r#"{"customer_id": "42", "group_id": 0, "application_id": 7, "device_type": "b",
                "version": "v1", "git_hash": "abc", "branch": "main", "file": "build/fw.axf",
                "cert_path": "certs/c.pem.crt", "key_path": "certs/k.pem.key", "extra": true}"#,
        )
        .unwrap();
        assert_eq!(p.customer_id, Some(42));
        assert_eq!(p.application_id, Some(7));
        assert_eq!(p.file, Some(PathBuf::from("/proj/build/fw.axf")));
        assert_eq!(p.key_path, Some(PathBuf::from("/proj/certs/k.pem.key")));
    }

    #[test]
    fn a_bad_project_file_names_the_key() {
        for (text, key) in [
            (r#"{"customer_id": -1}"#, "customer_id"),
            (r#"{"application_id": "seven"}"#, "application_id"),
            (r#"{"version": 1}"#, "version"),
            (r#"[1]"#, "not a JSON object"),
            ("{", "not JSON"),
        ] {
            let err = project(text).err().unwrap();
            assert_eq!(err.failure, Failure::BadInput);
            let message = exit::chain(&err.error);
            assert!(message.contains(key), "{text}: {message}");
        }
    }
}
