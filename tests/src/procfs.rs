//! What a process holds, read from Linux `/proc`: open file descriptors and resident memory,
//! for the leak checks and load figures of the hardening tests; and the file-descriptor limit a
//! test with hundreds of connections needs (the daemon it starts inherits it).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Open file descriptors of `pid` (`/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's soft limit on open files to at least `want` (at most the hard limit),
/// returning the soft limit now in effect. Processes started afterwards inherit it.
pub fn raise_fd_limit(want: u64) -> u64 {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let current = current.unwrap_or(u64::MAX);
    if current >= want {
        return current;
    }
    let target = maximum.map_or(want, |m| m.min(want));
    let set = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum,
        },
    );
    if set.is_ok() { target } else { current }
}
