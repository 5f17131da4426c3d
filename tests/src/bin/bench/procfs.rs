//! What Linux says about a running process: CPU time (nanoseconds, summed over its threads,
//! from `/proc/<pid>/task/<tid>/schedstat`), memory high-water mark (`VmHWM`), thread count.

use std::time::Duration;

/// On-CPU time of every live thread of `pid` (user + system), in nanoseconds.
///
/// Time spent blocked (waiting for a socket, i.e. for AWS) is not CPU time, so a difference of
/// two readings around an invocation is its CPU cost excluding every wait. Threads that exit
/// between two readings take their time with them: [`threads`] tells whether any could have.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

pub fn cpu(pid: u32) -> Option<Duration> {
    cpu_ns(pid).map(Duration::from_nanos)
}

/// User and system CPU time of `pid` in clock ticks (`/proc/<pid>/stat` fields 14 and 15):
/// coarse (10 ms), but it splits the time, summed over many invocations.
pub fn user_system_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// How many threads `pid` has now.
pub fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// A `kB` field of `/proc/<pid>/status`, in bytes (`VmHWM`: peak resident set size).
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

pub fn peak_rss(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmHWM")
}

/// `uname -r`, the CPU model, the number of CPUs and the load average: the machine the
/// numbers came from.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let memory = status_like("/proc/meminfo", "MemTotal").map_or(String::new(), |b| {
        format!(", {:.0} GiB RAM", b as f64 / (1024.0 * 1024.0 * 1024.0))
    });
    format!("{cpus} × {cpu}{memory}, Linux {kernel}")
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn status_like(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}
