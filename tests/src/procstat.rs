//! CPU time and resident memory of processes and threads, from /proc.

use std::path::Path;

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { f64::from(u32::try_from(t).unwrap_or(100)) } else { 100.0 }
}

/// utime + stime of a /proc/.../stat file, in seconds.
fn stat_secs(path: &Path) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    // The command name is in parentheses and may hold spaces: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// What a set of tasks has used: CPU seconds, and how many times they were put on a CPU
/// (each wake-up is one). On a virtualised host a wake-up can cost more than the work it
/// does, so the second figure explains the first.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    pub secs: f64,
    pub runs: u64,
}

impl std::ops::Add for Usage {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self { secs: self.secs + o.secs, runs: self.runs + o.runs }
    }
}

impl std::ops::Sub for Usage {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self { secs: self.secs - o.secs, runs: self.runs.saturating_sub(o.runs) }
    }
}

/// One task's usage from its schedstat (nanoseconds on the CPU, wait, times run), else the
/// CPU seconds of its stat.
fn task_usage(dir: &Path) -> Usage {
    if let Ok(s) = std::fs::read_to_string(dir.join("schedstat")) {
        let f: Vec<u64> = s.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        if let [ns, _wait, runs] = f[..] {
            #[allow(clippy::cast_precision_loss)]
            return Usage { secs: ns as f64 / 1e9, runs };
        }
    }
    Usage { secs: stat_secs(&dir.join("stat")).unwrap_or(0.0), runs: 0 }
}

/// Usage of a whole process (the sum of its live threads).
pub fn process_usage(pid: u32) -> Usage {
    let tasks: Vec<_> =
        std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().collect();
    if tasks.is_empty() {
        let secs = stat_secs(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
        return Usage { secs, runs: 0 };
    }
    tasks.iter().map(|t| task_usage(&t.path())).fold(Usage::default(), |a, b| a + b)
}

/// CPU seconds of a whole process (the sum of its live threads, to the nanosecond).
pub fn process_secs(pid: u32) -> f64 {
    process_usage(pid).secs
}

/// Usage of a process and all its descendants that are alive.
pub fn tree_usage(pid: u32) -> Usage {
    children(pid).into_iter().fold(process_usage(pid), |total, child| total + tree_usage(child))
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(s) = std::fs::read_to_string(e.path().join("stat"))
            && let Some(close) = s.rfind(')')
            && let Some(ppid) = s[close + 2..].split_whitespace().nth(1)
            && ppid.parse::<u32>().ok() == Some(pid)
        {
            out.push(p);
        }
    }
    out
}

/// Usage of the threads of `pid` whose name is `comm`.
pub fn threads_named_usage(pid: u32, comm: &str) -> Usage {
    let mut total = Usage::default();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if name.trim() == comm {
            total = total + task_usage(&e.path());
        }
    }
    total
}

/// What one wake-up costs on this host: CPU microseconds a thread is charged per wake from
/// a `period` sleep (the cadence of the proxy's refresh nudges), over `wakes` wake-ups.
pub fn wake_cost_us(period: std::time::Duration, wakes: u32) -> f64 {
    let own = || task_usage(Path::new("/proc/thread-self"));
    let before = own();
    for _ in 0..wakes {
        std::thread::sleep(period);
    }
    let used = own() - before;
    used.secs * 1e6 / f64::from(wakes.max(1))
}

/// Processes whose command line contains `needle`.
pub fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_some_cpu() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let own = process_usage(std::process::id());
        assert!(own.secs > 0.0);
        assert!(own.runs > 0, "schedstat counts the times a task ran");
        // Read later, the tree (this process and its children) has at least as much.
        let tree = tree_usage(std::process::id());
        assert!(tree.secs >= own.secs && tree.runs >= own.runs);
    }

    #[test]
    fn a_sleeping_thread_is_charged_for_its_wake_ups() {
        let before = task_usage(Path::new("/proc/thread-self"));
        let us = wake_cost_us(std::time::Duration::from_millis(1), 20);
        let after = task_usage(Path::new("/proc/thread-self"));
        assert!(us > 0.0, "a wake-up costs something");
        assert!(
            after.runs >= before.runs + 20,
            "each sleep ends in a wake-up: {before:?} -> {after:?}"
        );
    }
}

/// A process's resident memory now (`VmRSS`), in KiB; None once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    v.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// A process's proportional share of memory (`Pss` of `/proc/PID/smaps_rollup`: pages shared
/// with other processes count by their share), in KiB; None once it is gone.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let v = s.lines().find_map(|l| l.strip_prefix("Pss:"))?;
    v.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The memory of a process's descendants (not the process itself), summed by their
/// proportional shares (PSS), in KiB: a browser's processes under the script that drives it,
/// whose shared memory a sum of resident sizes would count in each.
pub fn descendants_pss_kib(pid: u32) -> u64 {
    descendants(pid).into_iter().map(|c| pss_kib(c).unwrap_or(0)).sum()
}

/// A process's descendants that are alive (children, their children, ...).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut next = children(pid);
    while let Some(p) = next.pop() {
        next.extend(children(p));
        out.push(p);
    }
    out
}

/// The most of each of some memory figures (KiB) while something ran, sampled every 20 ms from
/// a thread of its own (a peak between samples can be missed; a buffer that stays is not).
#[derive(Debug)]
pub struct RssPeaks {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl RssPeaks {
    /// The resident memory of each of `pids`.
    pub fn start(pids: &[u32]) -> Self {
        let pids = pids.to_vec();
        Self::sampling(move || pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect())
    }

    /// Whatever `measure` returns, figure by figure.
    pub fn sampling(measure: impl Fn() -> Vec<u64> + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peaks: Vec<u64> = Vec::new();
            loop {
                let now = measure();
                peaks.resize(now.len().max(peaks.len()), 0);
                for (peak, v) in peaks.iter_mut().zip(now) {
                    *peak = (*peak).max(v);
                }
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return peaks;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Self { stop, thread: Some(thread) }
    }

    /// Stops sampling: each figure's peak, in the order measured.
    pub fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}
