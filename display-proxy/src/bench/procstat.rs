//! CPU time of processes and threads, from /proc.

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

/// CPU seconds of one task from its schedstat (nanoseconds on the CPU), else its stat.
fn task_secs(dir: &Path) -> f64 {
    if let Ok(s) = std::fs::read_to_string(dir.join("schedstat"))
        && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
    {
        #[allow(clippy::cast_precision_loss)]
        return ns as f64 / 1e9;
    }
    stat_secs(&dir.join("stat")).unwrap_or(0.0)
}

/// CPU seconds of a whole process (the sum of its live threads, to the nanosecond).
pub fn process_secs(pid: u32) -> f64 {
    let tasks: Vec<_> =
        std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten().collect();
    if tasks.is_empty() {
        return stat_secs(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
    }
    tasks.iter().map(|t| task_secs(&t.path())).sum()
}

/// CPU seconds of a process and all its descendants that are alive.
pub fn tree_secs(pid: u32) -> f64 {
    let mut total = process_secs(pid);
    for child in children(pid) {
        total += tree_secs(child);
    }
    total
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

/// CPU seconds of the threads of `pid` whose name is `comm`.
pub fn threads_named_secs(pid: u32, comm: &str) -> f64 {
    let mut total = 0.0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if name.trim() == comm {
            total += task_secs(&e.path());
        }
    }
    total
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
        let own = process_secs(std::process::id());
        assert!(own > 0.0);
        // Read later, the tree (this process and its children) has at least as much.
        assert!(tree_secs(std::process::id()) >= own);
    }
}
