//! Every environment variable `ulogger` reads: those clap takes for a
//! flag (`#[arg(env = ...)]`), found by walking the command tree so the
//! list cannot drift from the flags, and the few read directly, listed
//! here. The manual pages' ENVIRONMENT section is made from it, and a
//! `ULOGGER_*` variable that nothing reads but that is close to one that
//! is gets a did-you-mean warning.

use std::collections::{BTreeMap, BTreeSet};

use clap::Command;

/// A variable read outside clap.
pub struct Direct {
    pub name: &'static str,
    pub read_by: ReadBy,
    pub meaning: &'static str,
}

/// Which commands read a variable outside clap.
pub enum ReadBy {
    /// Every command.
    Every,
    /// These commands (`upload-elf`, `outbox status`) and their subcommands.
    Commands(&'static [&'static str]),
    /// Every command that takes one of these arguments (by id).
    Taking(&'static [&'static str]),
}

/// The variables read by code rather than through a flag's `env`. A unit
/// test checks that every variable the sources read by name is here.
pub const READ_DIRECTLY: &[Direct] = &[
    Direct {
        name: "ULOGGER_HOME",
        read_by: ReadBy::Taking(&["config", "store"]),
        meaning: "The folder of the default config file (config.toml) and session-token store (session_tokens.json) [default: ~/.ulogger].",
    },
    Direct {
        name: "ULOGGER_LOG",
        read_by: ReadBy::Every,
        meaning: "Which log lines reach standard error, as a tracing filter (warn, info, debug, ulogger_cloud=debug, off); it overrides -v and -q.",
    },
    Direct {
        name: "NO_COLOR",
        read_by: ReadBy::Every,
        meaning: "Any non-empty value turns colours off in log lines (https://no-color.org).",
    },
    Direct {
        name: "HOME",
        read_by: ReadBy::Taking(&["config", "store"]),
        meaning: "Where ~/.ulogger is, when ULOGGER_HOME is not set.",
    },
    Direct {
        name: "ULOGGER_SERIAL",
        read_by: ReadBy::Commands(&["metrics", "events", "heartbeat"]),
        meaning: "The device's serial when --serial is not given (not for --batch, whose entries name their devices).",
    },
    Direct {
        name: "ULOGGER_APPLICATION_ID",
        read_by: ReadBy::Commands(&["upload-elf"]),
        meaning: "The application id when neither --app-id nor ULOGGER_APP_ID gives one (the reference tool's name).",
    },
    Direct {
        name: "ULOGGER_CERT_DATA",
        read_by: ReadBy::Commands(&["upload-elf"]),
        meaning: "The client certificate as PEM text, for CI secrets; with ULOGGER_KEY_DATA, when --cert and --key are not given.",
    },
    Direct {
        name: "ULOGGER_KEY_DATA",
        read_by: ReadBy::Commands(&["upload-elf"]),
        meaning: "The client certificate's private key as PEM text; with ULOGGER_CERT_DATA.",
    },
    Direct {
        name: "NOTIFY_SOCKET",
        read_by: ReadBy::Commands(&["agent"]),
        meaning: "Set by systemd for a Type=notify service: the agent reports readiness, status, watchdog pings and stopping on it.",
    },
    Direct {
        name: "DBUS_SYSTEM_BUS_ADDRESS",
        read_by: ReadBy::Commands(&["check"]),
        meaning: "The system bus on which BlueZ is looked for with --ble [default: the system's].",
    },
];

/// One variable, and what reads it.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    /// The flags it stands for (`--broker`); empty for one read directly.
    pub flags: BTreeSet<String>,
    /// The commands that read it (`upload`, `outbox status`); empty when
    /// every command does.
    pub commands: BTreeSet<String>,
    /// What it sets: the first line of its flag's help.
    pub meaning: String,
}

/// Every variable that `command` (a built command, see
/// [`Command::build`]) and its visible subcommands read, by name.
/// `path` is the command's own path below the program (empty for
/// `ulogger` itself, `outbox status` for `ulogger outbox status`).
pub fn variables(command: &Command, path: &str) -> BTreeMap<String, Variable> {
    let mut found = BTreeMap::new();
    let mut seen = Seen::default();
    walk(command, path, &mut found, &mut seen);
    for direct in READ_DIRECTLY {
        let commands: BTreeSet<String> = match direct.read_by {
            ReadBy::Every => BTreeSet::new(),
            ReadBy::Commands(commands) => {
                let read = commands.iter().any(|c| {
                    seen.paths
                        .iter()
                        .any(|p| p == c || p.starts_with(&format!("{c} ")))
                });
                if !read {
                    continue;
                }
                commands.iter().map(|c| (*c).to_owned()).collect()
            }
            ReadBy::Taking(ids) => {
                if !ids.iter().any(|id| seen.args.contains(*id)) {
                    continue;
                }
                BTreeSet::new()
            }
        };
        found
            .entry(direct.name.to_owned())
            .or_insert_with(|| Variable {
                name: direct.name.to_owned(),
                flags: BTreeSet::new(),
                commands,
                meaning: direct.meaning.to_owned(),
            });
    }
    found
}

/// The command paths and argument ids a walk went through.
#[derive(Default)]
struct Seen {
    paths: BTreeSet<String>,
    args: BTreeSet<String>,
}

fn walk(command: &Command, path: &str, found: &mut BTreeMap<String, Variable>, seen: &mut Seen) {
    seen.paths.insert(path.to_owned());
    for arg in command.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        seen.args.insert(arg.get_id().to_string());
        if arg.is_hide_env_set() {
            continue;
        }
        let Some(name) = arg.get_env().and_then(|n| n.to_str()) else {
            continue;
        };
        let variable = found.entry(name.to_owned()).or_insert_with(|| Variable {
            name: name.to_owned(),
            flags: BTreeSet::new(),
            commands: BTreeSet::new(),
            meaning: arg
                .get_help()
                .map(|h| first_line(&h.to_string()))
                .unwrap_or_default(),
        });
        if let Some(long) = arg.get_long() {
            variable.flags.insert(format!("--{long}"));
        }
        if !path.is_empty() {
            variable.commands.insert(path.to_owned());
        }
    }
    for sub in command.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let sub_path = if path.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{path} {}", sub.get_name())
        };
        walk(sub, &sub_path, found, seen);
    }
}

/// A help text's first line, joined as clap shows it.
fn first_line(help: &str) -> String {
    help.lines().next().unwrap_or_default().trim().to_owned()
}

/// The valid name nearest to `name`, if it is near enough to be a slip
/// of the keyboard (at most a third of its letters wrong, or two).
pub fn nearest<'a>(name: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(2);
    valid
        .into_iter()
        .map(|candidate| (strsim::damerau_levenshtein(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| candidate)
}

/// Warnings for `ULOGGER_*` variables in `environment` that nothing
/// reads but that look like a misspelt one, e.g.
/// `ULOGGER_CUSTOMERID is set but ulogger reads no such variable; did you mean ULOGGER_CUSTOMER_ID?`.
/// Others are left alone: they may belong to a wrapper or a test.
pub fn misspelt(command: &Command, environment: impl IntoIterator<Item = String>) -> Vec<String> {
    let known = variables(command, "");
    let mut warnings = Vec::new();
    for name in environment {
        let Some(rest) = name.strip_prefix("ULOGGER_") else {
            continue;
        };
        if known.contains_key(&name) {
            continue;
        }
        let candidates = known.keys().filter_map(|k| k.strip_prefix("ULOGGER_"));
        if let Some(near) = nearest(rest, candidates) {
            warnings.push(format!(
                "{name} is set but ulogger reads no such variable; did you mean ULOGGER_{near}?"
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn built() -> Command {
        let mut command = crate::Cli::command();
        command.build();
        command
    }

    #[test]
    fn flags_and_direct_reads_are_both_found() {
        let all = variables(&built(), "");
        let broker = &all["ULOGGER_BROKER"];
        assert!(broker.flags.contains("--broker"), "{broker:?}");
        assert!(broker.commands.contains("upload"), "{broker:?}");
        assert!(all.contains_key("ULOGGER_HOME"));
        assert!(all.contains_key("ULOGGER_CERT_DATA"));
    }

    #[test]
    fn a_subcommand_gets_only_its_own() {
        let root = built();
        let inspect = root.find_subcommand("inspect").expect("inspect");
        let mine = variables(inspect, "inspect");
        assert!(!mine.contains_key("ULOGGER_BROKER"), "{mine:?}");
        assert!(!mine.contains_key("ULOGGER_CERT_DATA"), "{mine:?}");
        assert!(mine.contains_key("ULOGGER_LOG"), "{mine:?}");
        assert!(!mine.contains_key("ULOGGER_HOME"), "{mine:?}");
    }

    #[test]
    fn a_near_miss_is_named_and_a_stranger_left_alone() {
        let warnings = misspelt(
            &built(),
            [
                "ULOGGER_CUSTOMERID".to_owned(),
                "ULOGGER_BROKER".to_owned(),
                "ULOGGER_SOMETHING_ELSE_ENTIRELY".to_owned(),
                "PATH".to_owned(),
            ],
        );
        assert_eq!(
            warnings,
            ["ULOGGER_CUSTOMERID is set but ulogger reads no such variable; did you mean ULOGGER_CUSTOMER_ID?"]
        );
    }

    #[test]
    fn nearest_takes_slips_not_strangers() {
        let keys = ["app_id", "customer_id", "timeout", "token_timeout"];
        assert_eq!(nearest("app_idd", keys), Some("app_id"));
        assert_eq!(nearest("customer-id", keys), Some("customer_id"));
        assert_eq!(nearest("timout", keys), Some("timeout"));
        assert_eq!(nearest("colour", keys), None);
    }

    /// Every variable the sources read by name is in `READ_DIRECTLY` (or
    /// is a flag's), so the manual page's list is whole.
    #[test]
    fn every_direct_read_is_listed() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        // A flag's variable read again by hand is listed through its flag.
        let from_flags = variables(&built(), "");
        let mut missing = Vec::new();
        let mut stack = vec![src];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source");
                for opener in ["env::var(\"", "env::var_os(\"", "from_env(\""] {
                    for piece in text.split(opener).skip(1) {
                        let name = piece.split('"').next().unwrap_or_default();
                        let listed = READ_DIRECTLY.iter().any(|d| d.name == name)
                            || from_flags.contains_key(name);
                        if !listed && !missing.contains(&name.to_owned()) {
                            missing.push(name.to_owned());
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "read but not in READ_DIRECTLY: {missing:?}"
        );
    }
}
