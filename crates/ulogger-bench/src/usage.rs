//! CPU time, memory and context switches, as the kernel accounts them:
//! `getrusage` for this process, its reaped children and the calling
//! thread (microseconds); Linux `/proc` for other processes and for
//! this process's threads one by one.

use std::path::Path;
use std::time::Duration;

use nix::sys::resource::{getrusage, Usage as Rusage, UsageWho};

fn rusage_cpu(who: UsageWho) -> Duration {
    // getrusage fails only for an invalid `who`; these are all valid.
    let usage: Rusage = match getrusage(who) {
        Ok(usage) => usage,
        Err(e) => panic!("getrusage: {e}"),
    };
    timeval(usage.user_time()) + timeval(usage.system_time())
}

fn timeval(t: nix::sys::time::TimeVal) -> Duration {
    Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
}

/// User + system time of this process so far.
pub fn self_cpu() -> Duration {
    rusage_cpu(UsageWho::RUSAGE_SELF)
}

/// User + system time of the children reaped so far.
pub fn children_cpu() -> Duration {
    rusage_cpu(UsageWho::RUSAGE_CHILDREN)
}

/// User + system time of the calling thread so far.
pub fn thread_cpu() -> Duration {
    rusage_cpu(UsageWho::RUSAGE_THREAD)
}

/// User + system time of process `pid` (`self` for this one) from
/// `/proc/<pid>/stat`, in clock ticks (10 ms on Linux); none if it cannot
/// be read.
pub fn proc_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "(comm)": field 3 onwards; utime and stime are 14 and 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok());
    Some(Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

/// Context switches (voluntary and not) of each thread of process `pid`
/// so far, by `"<tid> <comm>"`: what woke it, thread by thread. Threads
/// that cannot be read (gone in between) are left out.
pub fn thread_switches(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut switches = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return switches;
    };
    for task in tasks.flatten() {
        let task = task.path();
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let count: u64 = status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        let tid = task
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        switches.insert(format!("{tid} {}", comm.trim()), count);
    }
    switches
}

/// The pid of this process's first child named `comm` (as in
/// `/proc/<pid>/comm`), if it has one.
pub fn child_named(comm: &str) -> Option<String> {
    let pids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    pids.into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
}

/// The resident set size of process `pid`, in KB (`VmRSS` of
/// `/proc/<pid>/status`). Panics where it cannot be read (Linux only).
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status (Linux only): {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// CPU time and context switches (voluntary and involuntary) of this
/// process's threads, from `/proc/self/task` (zero elsewhere). Threads
/// that ended in between are not counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadsUsage {
    /// Time on the CPU (the scheduler's statistics, in nanoseconds).
    pub cpu: Duration,
    /// Context switches.
    pub switches: u64,
    /// Of `switches`, those where a thread gave up the CPU itself (waits).
    pub voluntary: u64,
}

impl ThreadsUsage {
    /// The threads' usage so far, leaving out the threads whose name
    /// starts with `except` (say, a server running in the same process).
    pub fn now_except(except: &str) -> ThreadsUsage {
        let mut usage = ThreadsUsage::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return usage;
        };
        for task in tasks.flatten() {
            let task = task.path();
            let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
            if comm.starts_with(except) {
                continue;
            }
            if let Some(ns) = std::fs::read_to_string(task.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            {
                usage.cpu += Duration::from_nanos(ns);
            }
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            for line in status.lines() {
                if let Some(n) = line.strip_prefix("voluntary_ctxt_switches:") {
                    let n = n.trim().parse::<u64>().unwrap_or(0);
                    usage.switches += n;
                    usage.voluntary += n;
                } else if let Some(n) = line.strip_prefix("nonvoluntary_ctxt_switches:") {
                    usage.switches += n.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        usage
    }

    /// What was used between `before` and `self`.
    pub fn since(&self, before: &ThreadsUsage) -> ThreadsUsage {
        ThreadsUsage {
            cpu: self.cpu.saturating_sub(before.cpu),
            switches: self.switches.saturating_sub(before.switches),
            voluntary: self.voluntary.saturating_sub(before.voluntary),
        }
    }

    /// CPU microseconds per one of `count` operations.
    pub fn cpu_us_per(&self, count: usize) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / count as f64
    }

    /// Voluntary context switches per one of `count` operations.
    pub fn voluntary_per(&self, count: usize) -> f64 {
        self.voluntary as f64 / count as f64
    }

    /// Context switches per one of `count` operations.
    pub fn switches_per(&self, count: usize) -> f64 {
        self.switches as f64 / count as f64
    }
}

/// Write calls and bytes written so far (`syscw`, `wchar` of
/// `/proc/self/task/*/io`) by this process's threads named `comm`; none
/// where it cannot be read (Linux only).
pub fn thread_writes(comm: &str) -> Option<(u64, u64)> {
    let (mut calls, mut bytes) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?.path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if name.trim_end() != comm {
            continue;
        }
        let Ok(io) = std::fs::read_to_string(task.join("io")) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        calls += field("syscw:")?;
        bytes += field("wchar:")?;
    }
    Some((calls, bytes))
}

/// The type of the file system holding `path` (the longest mount point
/// that is a prefix of it), from `/proc/self/mounts`; Linux only.
pub fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_accounted() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(self_cpu() > Duration::ZERO);
        assert!(thread_cpu() > Duration::ZERO);
        assert!(proc_cpu("self").is_some());
        assert!(rss_kb(std::process::id()) > 0);
        assert!(ThreadsUsage::now_except("none-such").cpu > Duration::ZERO);
        assert!(filesystem_of(Path::new("/")).is_some());
    }
}
