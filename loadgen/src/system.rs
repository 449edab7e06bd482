//! Facts about the machine and processes, read from `/proc` and `git`.
//!
//! CPU time comes from `/proc/PID/task/*/schedstat` (nanoseconds on CPU, as the scheduler
//! accounts it), not from tick-sampled `stat` fields, which are coarse on a 2-vCPU guest. A thread
//! that exits during the run takes its time with it, so a broker that starts and stops worker
//! threads is undercounted; the report says so beside the figure.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// Sum of on-CPU nanoseconds over the live threads of `pid`.
pub fn process_cpu_ns(pid: u32) -> std::io::Result<u64> {
    let mut total_ns = 0u64;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread can exit between listing and reading; its time is gone either way.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total_ns += parse_schedstat_ns(&text).unwrap_or(0);
    }
    Ok(total_ns)
}

/// The first field of a schedstat line: time spent on the CPU, in nanoseconds.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The CPUs each thread of `pid` may run on, deduplicated: usually one list for the whole
/// process, more when threads were pinned separately.
pub fn process_affinity(pid: u32) -> std::io::Result<Vec<String>> {
    let mut lists = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = fs::read_to_string(entry?.path().join("status")) else {
            continue;
        };
        if let Some(list) = status_field(&text, "Cpus_allowed_list:")
            && !lists.contains(&list)
        {
            lists.push(list);
        }
    }
    lists.sort();
    Ok(lists)
}

fn status_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(name).map(|value| value.trim().to_owned()))
}

pub fn process_command(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let parts: Vec<String> = raw
        .split(|&byte| byte == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    Some(parts.join(" "))
}

#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub cpu_model: String,
    /// Processors listed in /proc/cpuinfo: the machine's, whatever this process is pinned to.
    pub cpu_count_machine: usize,
    /// CPUs this process may run on (its affinity), e.g. 1 under `taskset -c 1`.
    pub cpu_count_available_to_loadgen: usize,
    pub kernel_release: String,
    pub hostname: String,
    pub memory_total_kib: Option<u64>,
}

impl MachineInfo {
    pub fn read() -> MachineInfo {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = status_field(&cpuinfo.replace('\t', ""), "model name:")
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_total_kib = fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
            status_field(&text, "MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        MachineInfo {
            cpu_model,
            cpu_count_machine: cpuinfo
                .lines()
                .filter(|line| line.starts_with("processor"))
                .count(),
            cpu_count_available_to_loadgen: std::thread::available_parallelism()
                .map_or(0, usize::from),
            kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
            hostname: read_trimmed("/proc/sys/kernel/hostname"),
            memory_total_kib,
        }
    }
}

fn read_trimmed(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages: the machine is shared, and figures taken under load
/// are not comparable with figures taken idle.
pub fn load_average() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text
        .split_whitespace()
        .map(|field| field.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

#[derive(Debug, Clone, Serialize)]
pub struct GitRevision {
    /// The commit the running binary was built from, and whether tracked files differed from it.
    pub binary_commit: &'static str,
    pub binary_dirty: &'static str,
    /// The work tree's commit when the report was written (may be newer than the binary).
    pub commit: Option<String>,
    /// Uncommitted changes in the tree the loadgen runs from.
    pub dirty: Option<bool>,
}

impl GitRevision {
    pub fn read() -> GitRevision {
        let run = |arguments: &[&str]| {
            let output = Command::new("git").args(arguments).output().ok()?;
            output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
        };
        GitRevision {
            binary_commit: env!("LOADGEN_BUILD_GIT_COMMIT"),
            binary_dirty: env!("LOADGEN_BUILD_GIT_DIRTY"),
            commit: run(&["rev-parse", "HEAD"]).map(|text| text.trim().to_owned()),
            dirty: run(&["status", "--porcelain", "--untracked-files=no"])
                .map(|text| !text.trim().is_empty()),
        }
    }
}

/// Quotes an argument for a POSIX shell only when it needs it, so the recorded command can be
/// pasted back.
pub fn shell_quote(argument: &str) -> String {
    let plain = !argument.is_empty()
        && argument
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=%@,+".contains(c));
    if plain {
        argument.to_owned()
    } else {
        format!("'{}'", argument.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_gives_the_on_cpu_nanoseconds() {
        assert_eq!(parse_schedstat_ns("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_an_affinity() {
        let pid = std::process::id();
        let spin_until = std::time::Instant::now() + std::time::Duration::from_millis(20);
        while std::time::Instant::now() < spin_until {
            std::hint::spin_loop();
        }
        assert!(process_cpu_ns(pid).unwrap() > 10_000_000);
        let affinity = process_affinity(pid).unwrap();
        assert!(!affinity.is_empty());
        assert!(
            affinity[0].chars().next().unwrap().is_ascii_digit(),
            "{affinity:?}"
        );
    }

    #[test]
    fn only_arguments_with_shell_syntax_are_quoted() {
        assert_eq!(shell_quote("--workload"), "--workload");
        assert_eq!(
            shell_quote("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
