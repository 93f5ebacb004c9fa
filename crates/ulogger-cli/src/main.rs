//! `ulogger`: the command-line face of ulogger-cloud.
//!
//! `main` only parses arguments and dispatches. Each subcommand lives in
//! `commands/` (a file, or a folder for one with several parts), and no
//! command imports another; what several share sits beside this file
//! (settings and connections, exit codes and hints, output helpers).

/// `println!` that ends the command quietly on a closed pipe.
macro_rules! outln {
    () => {
        $crate::stdout::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*), true)
    };
}

/// `print!` that ends the command quietly on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(format_args!($($arg)*), false)
    };
}

mod agent_args;
mod commands;
mod connection;
mod device;
mod dump_report;
mod duration;
mod environment;
mod exit;
mod files;
mod https;
mod log_config;
mod outbox_report;
mod samples;
mod settings;
mod signal;
mod stamp;
mod stdout;

use clap::{Parser, Subcommand};
#[cfg(all(feature = "ble", target_os = "linux"))]
use commands::ble;
use commands::{
    agent, check, config, decode, demo, docs, emulator, inspect, logs, make_log, outbox, query,
    telemetry, tokens, upload, upload_elf,
};

/// Send embedded devices' logs to the uLogger cloud, or to a local emulator of it.
#[derive(Debug, Parser)]
#[command(
    name = "ulogger",
    version,
    about,
    propagate_version = true,
    after_help = "Durations take a unit (500ms, 2s, 10m, 1h, 1d); a bare number is in the unit the flag names (MS, SECS)."
)]
struct Cli {
    /// Print machine-readable JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,

    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// No log output: only results and the error report.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode binary log files and check their headers and checksums.
    Inspect(inspect::Args),
    /// Decode binary logs into readable records with the firmware's ELF (a core dump shows its header).
    Decode(decode::Args),
    /// Write valid binary logs (any header version and size) and a matching device-info dump.
    MakeLog(make_log::Args),
    /// List, read and remove cached session tokens.
    #[command(subcommand)]
    Tokens(tokens::Command),
    /// Try everything locally: an in-process cloud, a device, a registration and two uploads.
    Demo(demo::Args),
    /// Upload binary log files for a device (registers it if needed).
    Upload(upload::UploadArgs),
    /// Register a device (boot handshake) and print its new session token.
    Register(upload::RegisterArgs),
    /// Publish a core dump.
    CoreDump(upload::CoreDumpArgs),
    /// Upload a firmware build's ELF, so the cloud can decode its devices' logs (from CI).
    #[command(
        mut_arg("store", telemetry::hide),
        mut_arg("no_store", telemetry::hide),
        mut_arg("token_timeout", telemetry::hide),
        mut_arg("connections", telemetry::hide)
    )]
    UploadElf(upload_elf::Args),
    /// Publish metrics: one device's samples, or a batch file of many devices'.
    #[command(after_help = telemetry::METRICS_EXAMPLES, mut_arg("store", telemetry::hide), mut_arg("no_store", telemetry::hide),
              mut_arg("token_timeout", telemetry::hide))]
    Metrics(telemetry::MetricsArgs),
    /// Publish events: one device's, or a batch file of many devices'.
    #[command(after_help = telemetry::EVENTS_EXAMPLES, mut_arg("store", telemetry::hide), mut_arg("no_store", telemetry::hide),
              mut_arg("token_timeout", telemetry::hide))]
    Events(telemetry::EventsArgs),
    /// Publish heartbeats: say that devices without a connection of their own are alive.
    #[command(after_help = telemetry::HEARTBEAT_EXAMPLES, mut_arg("store", telemetry::hide), mut_arg("no_store", telemetry::hide),
              mut_arg("token_timeout", telemetry::hide))]
    Heartbeat(telemetry::HeartbeatArgs),
    /// Send lines of text (files or standard input) as a device's text logs.
    #[command(after_help = logs::EXAMPLES, mut_arg("store", telemetry::hide), mut_arg("no_store", telemetry::hide),
              mut_arg("token_timeout", telemetry::hide))]
    Logs(logs::Args),
    /// Run a local uLogger cloud (MQTT broker + cloud behaviour).
    Emulator(emulator::Args),
    /// Read back stored metrics, events or logs through the data API (the platform's or an emulator's).
    Query(query::Args),
    /// Run the gateway service: files dropped in an inbox go out through a durable outbox.
    Agent(agent::Args),
    /// Pull devices' logs over Bluetooth LE (BlueZ) into a durable outbox.
    #[cfg(all(feature = "ble", target_os = "linux"))]
    #[command(subcommand)]
    Ble(ble::Command),
    /// Look at a durable outbox; retry or purge its dead records.
    #[command(subcommand)]
    Outbox(outbox::Command),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish).
    Completions(docs::CompletionsArgs),
    /// Print the manual page (troff), or write one per command with --out DIR.
    Man(docs::ManArgs),
    /// Walk the path to the cloud a link at a time (settings, certificate, DNS, TCP, TLS, MQTT, registration, API, outbox) and say where it breaks.
    #[command(
        visible_alias = "doctor",
        mut_arg("store", telemetry::hide),
        mut_arg("no_store", telemetry::hide),
        mut_arg("no_pacing", telemetry::hide),
        mut_arg("connections", telemetry::hide)
    )]
    Check(check::Args),
    /// Show the effective settings and where each came from; watch the log configurations the cloud pushes.
    #[command(subcommand)]
    Config(config::Command),
}

/// Options every subcommand may read.
#[derive(Debug, Clone, Copy)]
struct Global {
    json: bool,
    /// `-v` given (how many times): long work shows its lines, not a bar.
    verbose: u8,
    /// `-q`: no progress display either.
    quiet: bool,
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_tracing(cli.verbose, cli.quiet);
    if !cli.quiet {
        warn_misspelt_variables();
    }
    let global = Global {
        json: cli.json,
        verbose: cli.verbose,
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(global, args),
        Command::Decode(args) => decode::run(global, args),
        Command::MakeLog(args) => make_log::run(global, args),
        Command::Tokens(cmd) => tokens::run(global, cmd),
        Command::Emulator(args) => emulator::run(global, args),
        Command::Query(args) => query::run(global, args),
        Command::Demo(args) => demo::run(global, args),
        Command::Upload(args) => upload::upload(global, args),
        Command::Register(args) => upload::register(global, args),
        Command::CoreDump(args) => upload::core_dump(global, args),
        Command::UploadElf(args) => upload_elf::run(global, args),
        Command::Metrics(args) => telemetry::metrics(global, args),
        Command::Events(args) => telemetry::events(global, args),
        Command::Heartbeat(args) => telemetry::heartbeat_command(global, args),
        Command::Logs(args) => logs::run(global, args),
        Command::Outbox(cmd) => outbox::run(global, cmd),
        Command::Agent(args) => agent::run(global, args),
        #[cfg(all(feature = "ble", target_os = "linux"))]
        Command::Ble(cmd) => ble::run(global, cmd),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        Command::Config(cmd) => config::run(global, cmd),
        Command::Check(args) => check::run(global, args),
    };
    exit::report(result, global.json)
}

/// A `ULOGGER_*` variable that nothing reads but that is a slip away from
/// one that is (`ULOGGER_CUSTOMERID`) is said once, on stderr: otherwise
/// the setting it was meant for silently keeps its default.
fn warn_misspelt_variables() {
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("ULOGGER_"))
        .collect();
    if names.is_empty() {
        return;
    }
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    for warning in environment::misspelt(&command, names) {
        eprintln!("warning: {warning}");
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    let default = match verbose {
        _ if quiet => "off",
        // A failed connection attempt is the command's error, reported
        // once by `exit::report`; retries of a long-running command show
        // with -v.
        0 => "warn,ulogger_cloud::transport::driver=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ULOGGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color())
        .init();
}

/// clap's report of bad arguments, or with `--json` the same one-object
/// error report as every other failure (`exit::report`).
fn usage_error(error: clap::Error) -> std::process::ExitCode {
    let json = std::env::args_os().any(|a| a == "--json");
    if !json || !error.use_stderr() {
        error.exit();
    }
    let text = error.to_string();
    let message = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    exit::report(
        Err(exit::Exit::new(
            exit::Failure::BadInput,
            anyhow::anyhow!("{message}"),
        )),
        true,
    )
}

/// <https://no-color.org>: any non-empty `NO_COLOR` turns colour off.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}
