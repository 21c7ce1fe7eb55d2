//! Operating-system facts the harness needs: a clock that every local process
//! shares (so the upstream's timestamps can be compared with the load
//! generator's clock), the open-file limit, and per-process CPU and memory
//! read from /proc.

use std::io;
use std::path::Path;

/// CLOCK_MONOTONIC in nanoseconds: one clock for all processes on the machine,
/// unaffected by wall-clock adjustments.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
/// Children started afterwards inherit it.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: `limit` is a valid rlimit; raising the soft limit up to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Makes `command`'s child die with the harness (see `die_with_parent`).
pub fn kill_with_harness(command: &mut tokio::process::Command) {
    // SAFETY: die_with_parent only calls prctl, which is async-signal-safe.
    unsafe {
        command.pre_exec(die_with_parent);
    }
}

/// Asks the kernel to kill this child when the harness dies, so no peer
/// outlives a crashed run. Call in `pre_exec`.
fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on the calling process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to every process of the process group led by `leader`
/// (a peer is started as the leader of its own group).
pub fn signal_group(leader: u32, signal: libc::c_int) {
    // SAFETY: kill only sends a signal; a stale group yields ESRCH, which is ignored.
    unsafe { libc::kill(-(leader as libc::pid_t), signal) };
}

/// Memory and CPU of a process and all its descendants (nginx: master and workers).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
    pub processes: usize,
    pub open_fds: usize,
}

impl Usage {
    /// CPU seconds used since `earlier`.
    pub fn cpu_since(&self, earlier: &Usage) -> f64 {
        (self.cpu_seconds - earlier.cpu_seconds).max(0.0)
    }
}

/// User plus system CPU seconds of this process (all its threads, not its
/// children): the load generator's own cost.
pub fn own_cpu_seconds() -> io::Result<f64> {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Sums VmRSS and utime+stime over `root` and its descendants.
pub fn tree_usage(root: u32) -> io::Result<Usage> {
    let mut pids = vec![root];
    pids.extend(descendants(root));
    let ticks_per_second = clock_ticks_per_second();
    let mut usage = Usage::default();
    for pid in pids {
        // A worker may exit between listing and reading: skip it, but not the root.
        let rss = match rss_bytes(pid) {
            Ok(rss) => rss,
            Err(err) if pid == root => return Err(err),
            Err(_) => continue,
        };
        let ticks = match cpu_ticks(pid) {
            Ok(ticks) => ticks,
            Err(err) if pid == root => return Err(err),
            Err(_) => continue,
        };
        usage.rss_bytes += rss;
        usage.cpu_seconds += ticks as f64 / ticks_per_second;
        usage.processes += 1;
        usage.open_fds += std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| dir.count())
            .unwrap_or(0);
    }
    Ok(usage)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// VmRSS from /proc/PID/status, in bytes.
fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in /proc status"))
}

/// utime + stime (fields 14 and 15 of /proc/PID/stat), in clock ticks.
fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields = stat_fields_after_name(&stat)?;
    // Fields after the name start at field 3 (state): utime is field 14, stime 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short /proc stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// The fields of /proc/PID/stat after "(comm)", which may itself hold spaces.
fn stat_fields_after_name(stat: &str) -> io::Result<Vec<&str>> {
    let end = stat
        .rfind(')')
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc stat"))?;
    Ok(stat[end + 1..].split_whitespace().collect())
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields_after_name(&stat).ok()?.get(1)?.parse().ok()
}

/// All processes below `root`, found by walking /proc parent links.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(Path::new("/proc")) else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && pid != root && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}
