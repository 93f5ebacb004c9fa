//! How benches report: the `SUITE` lines `scripts/bench-suite` collects,
//! and criterion's medians read back for them.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Prints one headline figure for the benchmark suite:
/// `SUITE <name> | <value> | <comparison>`.
pub fn suite(name: impl Display, value: impl Display, comparison: impl Display) {
    println!("SUITE {name} | {value} | {comparison}");
}

/// "met" or "MISSED", for a goal.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Where criterion keeps its results, found as criterion finds it:
/// `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`, else beside the
/// target directory the running bench is in (`target/<profile>/deps/`).
pub fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median (ns) criterion estimated for `group/id` in this run: none
/// when it was not measured since `since` (filtered out, or `--test`).
pub fn median_ns(group: &str, id: &str, since: SystemTime) -> Option<f64> {
    let path = criterion_home()?
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    estimates["median"]["point_estimate"].as_f64()
}
